"""Categorical columns: ids as the values stream by, then the final vocabulary in sorted order.

A column is read as :class:`Categories` (per row the id of its published text, ids in order of first
appearance, built block by block by :class:`CategoryBuilder`); :func:`encode` re-indexes it to ``[0, vocab)``
in sorted order of the published values (numerically when every value is a number), with one vocabulary
over all rows of all files given. :func:`decode_values` and :func:`map_categories` work on the few distinct
texts of a column rather than on its rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlbench.data import spill
from mtlbench.errors import ConfigError


class Categories:
    """A categorical column as read: per row the id of its published text (-1 = empty cell).

    ``texts[i]`` is the text of id ``i`` and ``counts[i]`` its number of rows; ids are in order of first
    appearance. Texts that are equal as numbers ("7", "07") share one id. :func:`encode` turns this into
    the final vocabulary, in sorted order.
    """

    def __init__(self, ids: np.ndarray, texts: pa.Array, counts: np.ndarray) -> None:
        self.ids, self.texts, self.counts = ids, texts, counts

    def __len__(self) -> int:
        return len(self.ids)

    def to_pylist(self) -> list[Any]:
        """The text of every row (for small side tables only)."""
        texts = self.texts.to_pylist() + [None]
        return [texts[i] for i in self.ids]

    @classmethod
    def of(cls, values: np.ndarray | pa.Array | pa.ChunkedArray) -> Categories:
        """From computed values (numpy or arrow): one id per distinct value."""
        if isinstance(values, np.ndarray) and values.dtype.kind in "iub":
            uniq, inv = np.unique(values, return_inverse=True)
            inv = inv.reshape(-1).astype(np.int32)
            return cls(inv, pa.array(uniq).cast(pa.string()), np.bincount(inv, minlength=len(uniq)))
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        enc = pc.dictionary_encode(arr.cast(pa.string()))
        ids = dictionary_indices(enc).copy()
        return cls(ids, enc.dictionary, np.bincount(ids[ids >= 0], minlength=len(enc.dictionary)))


class CategoryBuilder:
    """Assigns ids to one column's texts block by block, writing them into a preallocated array.

    A block's distinct texts (its dictionary) are matched against the values seen so far: as numbers with
    a sorted index while every value is a number (int, then float), else as text with an arrow hash lookup.
    """

    def __init__(self, capacity: int) -> None:
        self.ids = spill.empty(capacity, np.int32)
        self.mode = "int"
        self.sorted_keys: np.ndarray = np.empty(0, dtype=np.int64)
        self.sorted_ids = np.empty(0, dtype=np.int32)
        self.new_texts: list[pa.Array] = []
        self.vocab: pa.Array | None = None
        self.counts = np.zeros(0, dtype=np.int64)
        self.size = 0

    def add(self, chunk: pa.DictionaryArray, offset: int) -> None:
        """Ids of one parsed block, written from row ``offset`` on."""
        local = self._ids_of(chunk.dictionary.cast(pa.string()))
        idx = dictionary_indices(chunk)
        self.ids[offset : offset + len(idx)] = np.append(local, -1).astype(np.int32)[idx]
        if len(self.counts) < self.size:
            grow = np.zeros(max(self.size, 2 * len(self.counts)), np.int64)
            self.counts = np.concatenate([self.counts, grow])
        np.add.at(self.counts, local, np.bincount(idx[idx >= 0], minlength=len(local)))

    def _numeric(self, d: pa.Array) -> np.ndarray | None:
        for mode, typ in (("int", pa.int64()), ("float", pa.float64())):
            if mode == "int" and self.mode != "int":
                continue
            try:
                keys = pc.cast(d, typ).to_numpy(zero_copy_only=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            if mode == "float" and self.mode == "int":
                self.sorted_keys, self.mode = self.sorted_keys.astype(np.float64), "float"
            return keys
        self.mode = "text"
        self.vocab = self.all_texts()
        return None

    def _ids_of(self, d: pa.Array) -> np.ndarray:
        keys = self._numeric(d) if self.mode != "text" else None
        if keys is None:
            return self._ids_of_text(d)
        n = len(self.sorted_keys)
        pos = np.searchsorted(self.sorted_keys, keys)
        found = pos < n
        found[found] = self.sorted_keys[pos[found]] == keys[found]
        out = np.empty(len(keys), dtype=np.int32)
        out[found] = self.sorted_ids[pos[found]]
        if not found.all():
            new = np.flatnonzero(~found)
            uniq, first, inv = np.unique(keys[new], return_index=True, return_inverse=True)
            out[new] = self.size + inv.reshape(-1)
            where = np.searchsorted(self.sorted_keys, uniq)
            self.sorted_keys = np.insert(self.sorted_keys, where, uniq)
            self.sorted_ids = np.insert(
                self.sorted_ids, where, np.arange(self.size, self.size + len(uniq), dtype=np.int32)
            )
            self.new_texts.append(d.take(pa.array(new[first])))
            self.size += len(uniq)
        return out

    def _ids_of_text(self, d: pa.Array) -> np.ndarray:
        if self.vocab is None:
            self.vocab = self.all_texts()
        out = pc.index_in(d, value_set=self.vocab).fill_null(-1).to_numpy(zero_copy_only=False)
        out = out.astype(np.int32)
        new = np.flatnonzero(out < 0)
        if len(new):  # a block's dictionary has distinct texts: each new one gets the next id
            out[new] = self.size + np.arange(len(new), dtype=np.int32)
            texts = d.take(pa.array(new))
            self.new_texts.append(texts)
            self.vocab = pa.concat_arrays([self.vocab, texts])
            self.size += len(new)
        return out

    def all_texts(self) -> pa.Array:
        """The distinct texts seen so far, in id order."""
        return pa.concat_arrays(self.new_texts) if self.new_texts else pa.array([], pa.string())

    def finish(self, n: int) -> Categories:
        """The column of the first ``n`` rows."""
        return Categories(self.ids[:n], self.all_texts(), self.counts[: self.size].copy())


@dataclass
class Encoded:
    """Ids in ``[0, size)`` of a categorical column; ``values[i]`` is the published value of id ``i``.

    When some rows are empty (or, with ``min_count``, hold a rare value) they share one extra id, the
    last one, whose value is ``None``.
    """

    ids: np.ndarray
    values: list[Any]
    size: int

    @property
    def other(self) -> int | None:
        """The shared id of empty (and rare) values, if any row has one."""
        return self.size - 1 if self.values and self.values[-1] is None else None


def _sort_keys(values: pa.Array) -> np.ndarray:
    """Sort keys of distinct texts: numbers when every text is one, else the texts."""
    for target in (pa.int64(), pa.float64()):
        try:
            return pc.cast(values, target).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return np.asarray(values.to_pylist(), dtype=object)


def encode(parts: Sequence[Any], min_count: int = 1, strip: bool = False) -> Encoded:
    """Re-index one categorical column, over all ``parts`` (files) together, to ids in ``[0, size)``.

    Ids follow the sorted order of the distinct values (numerically when every value is a number) over
    every row of every part: the vocabulary is built over the whole data, all files together. Values seen
    fewer than ``min_count`` times and empty cells share one extra, last id. ``strip`` trims surrounding
    blanks first (" Private" == "Private"). ``parts`` are :class:`Categories` from :func:`read_csv` (whose
    id arrays are reused for the output: they are consumed) or numpy / arrow values.
    """
    if min_count < 1:
        raise ConfigError(f"min_count must be >= 1, got {min_count}")
    cols = [p if isinstance(p, Categories) else Categories.of(p) for p in parts]
    texts = pa.concat_arrays([c.texts.cast(pa.string()) for c in cols]) if cols else pa.array([], pa.string())
    counts = np.concatenate([c.counts for c in cols]) if cols else np.zeros(0, np.int64)
    if strip:
        texts = pc.utf8_trim_whitespace(texts)
    valid = pc.and_(pc.is_valid(texts), pc.not_equal(texts, "")).fill_null(False)
    valid = np.asarray(valid.to_numpy(zero_copy_only=False), dtype=bool)
    entry = np.zeros(len(texts), dtype=np.int64)
    values: list[Any] = []
    n_keep = 0
    if valid.any():
        keys = _sort_keys(texts.filter(pa.array(valid)))
        uniq, inverse = np.unique(keys, return_inverse=True)
        inverse = inverse.reshape(-1)
        per_value = np.bincount(inverse, weights=counts[valid], minlength=len(uniq))
        keep = per_value >= min_count
        n_keep = int(keep.sum())
        entry[valid] = np.where(keep, np.cumsum(keep) - 1, -1)[inverse]
        values = [v.item() if hasattr(v, "item") else v for v in uniq[keep]]
    entry[~valid] = -1
    other_used = bool((counts[entry < 0] > 0).any()) or any((c.ids < 0).any() for c in cols)
    entry[entry < 0] = n_keep
    start = 0
    for c in cols:
        if not c.ids.flags.writeable:
            c.ids = c.ids.copy()
        lookup = np.append(entry[start : start + len(c.texts)], n_keep).astype(np.int32)
        start += len(c.texts)
        for s in range(0, len(c.ids), 1 << 20):  # in place, a slice at a time: -1 (empty) -> the extra id
            c.ids[s : s + (1 << 20)] = lookup[c.ids[s : s + (1 << 20)]]
    if len(cols) == 1:
        ids = cols[0].ids  # no copy of a single part
    else:
        ids = spill.concatenate([c.ids for c in cols]) if cols else np.zeros(0, np.int32)
    if other_used:
        values.append(None)
    return Encoded(ids, values, max(1, n_keep + int(other_used)))


def dictionary_indices(chunk: pa.DictionaryArray) -> np.ndarray:
    """A dictionary block's indices as int32 numpy, -1 for empty cells (zero-copy when there are none)."""
    idx = chunk.indices
    if chunk.null_count:
        idx = idx.fill_null(-1)
    return idx.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)


def decode_values(col: Categories, strip: bool = True) -> tuple[np.ndarray, list[Any]]:
    """(per-row index into the list of distinct published texts, that list); -1 = empty cell.

    For columns whose few texts map to labels or groups (e.g. census "50000+."): map the texts in Python,
    then gather per row with numpy.
    """
    texts = [t.strip() if (strip and isinstance(t, str)) else t for t in col.texts.to_pylist()]
    return col.ids, texts


def map_categories(col: Categories, fn: Any) -> Categories:
    """Apply ``fn`` (text -> text or None) to the distinct texts of a categorical column, not to every row.

    E.g. the first tag of a "12,65" tag list. :func:`encode` merges texts that map to the same value.
    """
    return Categories(col.ids, pa.array([fn(t) for t in col.texts.to_pylist()], pa.string()), col.counts)
