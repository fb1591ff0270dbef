"""Reading published dataset files: streaming, columnar CSV with checks that name the file, column and line.

Every real dataset reads its files through :func:`read_csv`. pyarrow's streaming CSV reader parses the file
block by block (multi-threaded; never a Python loop over rows) under a progress bar on stderr, and each
block is converted at once into preallocated numpy outputs (sized by a fast line count) and dropped: memory
holds the final columns plus one block, never the whole parsed table. Categorical columns are parsed as
dictionary blocks; their values get ids in order of first appearance as the blocks stream by
(:class:`Categories`), and :func:`encode` re-indexes them to ``[0, vocab)`` in sorted order of the published
values (numerically when every value is a number), with one vocabulary over all rows of all files given.

Before parsing, the first line is checked: an empty file, a missing or misspelt column, a duplicated header
name or a file separated by another delimiter than the format's each end in one
:class:`~mtlbench.errors.DataError` line that names the file, the column and the line. Conversion errors (a
word in a number column, a header line repeated inside the data) are located by a second, columnar pass over
the one column that failed, so the message can name the first offending line. Line numbers count physical
lines with the header as line 1; blank lines are skipped by the parser and not counted, and quoted fields
with embedded newlines (none of the supported formats has them) would shift them.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mtlbench.errors import ConfigError, DataError

Kind = Literal["cat", "int", "float", "label"]
#: arrow type each kind is parsed to: categories stay strings until re-indexed; labels may be empty (NaN)
ARROW_TYPES: dict[str, pa.DataType] = {
    "cat": pa.dictionary(pa.int32(), pa.string()),
    "int": pa.int64(),
    "float": pa.float32(),
    "label": pa.float32(),
}
#: cell texts read as "missing" (null): empty cells and the usual spellings of NaN / NA
NULL_VALUES = ["", "NA", "N/A", "n/a", "NaN", "nan", "NULL", "null"]
BLOCK_SIZE = 8 << 20  # bytes per parsed block
DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe", "::": "'::'", " ": "space"}
PROGRESS_ENV = "MTLBENCH_PROGRESS"
#: arrow's pool for the parsed blocks; they are transient, and released after each file (release_memory)
POOL = pa.default_memory_pool()
_progress_override: bool | None = None


@dataclass(frozen=True)
class Layout:
    """How a publisher lays out one file.

    ``names`` is the published column order of a file without a header line (``None``: the first line
    is the header). ``delimiter`` may be several characters (MovieLens 1M's ``::``).
    """

    delimiter: str = ","
    names: tuple[str, ...] | None = None
    encoding: str = "utf8"

    @property
    def header(self) -> bool:
        return self.names is None


# -- paths ------------------------------------------------------------------------------------------------
def require_path(path: Any, dataset: str, hint: str) -> Path:
    """The dataset's ``path`` setting as a Path; a ConfigError that says what to pass when it is unset."""
    if path is None or str(path).strip() in ("", "???"):
        raise ConfigError(f"dataset {dataset!r} reads the files as published: set dataset.path=<{hint}>")
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise DataError(f"{p}: file not found (dataset {dataset!r} expects {hint})")
    return p


def find_files(path: Path, patterns: Sequence[str], dataset: str, hint: str,
               required: bool = True) -> list[Path]:
    """Files of ``path`` (a file, or a folder searched recursively) matching any glob in ``patterns``."""
    if path.is_file():
        return [path]
    found: list[Path] = []
    for pattern in patterns:
        found += [f for f in sorted(path.rglob(pattern)) if f.is_file() and f not in found]
    if required and not found:
        raise DataError(f"{path}: no file matching {' or '.join(patterns)} "
                        f"(dataset {dataset!r} expects {hint})")
    return found


def check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def first_line(path: Path, encoding: str = "utf8") -> str:
    """The file's first line (decompressed, decoded, without BOM and line break)."""
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rb") as f:
            raw = f.readline(1 << 20)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the file ({e})") from None
    codec = "utf-8-sig" if encoding.replace("-", "").lower() == "utf8" else encoding
    line = raw.decode(codec, errors="replace").rstrip("\r\n")
    if not line.strip():
        raise DataError(f"{path}: line 1 is empty (an empty file or a blank first line)")
    return line


def split_line(line: str, delimiter: str) -> list[str]:
    if len(delimiter) > 1:
        return line.split(delimiter)
    return next(csv.reader([line], delimiter=delimiter))


def _delim(d: str) -> str:
    return DELIMITER_NAMES.get(d, repr(d))


def _other_delimiter(line: str, delimiter: str, fits: Any) -> str | None:
    """Another common delimiter under which the line fits the format (``fits(fields) -> bool``)."""
    for other in DELIMITER_NAMES:
        if other != delimiter and other != " " and other in line and fits(split_line(line, other)):
            return other
    return None


def check_header(path: Path, line: str, layout: Layout, wanted: Sequence[str]) -> list[str]:
    """Check the first line against the format; return the file's column names in file order."""
    d = layout.delimiter
    fields = [f.strip() for f in split_line(line, d)]
    if not layout.header:
        names = list(layout.names or ())
        if len(fields) != len(names):
            other = _other_delimiter(line, d, lambda fs: len(fs) == len(names))
            if other:
                raise DataError(f"{path}: line 1: the file is {_delim(other)}-separated, but this format is "
                                f"{_delim(d)}-separated (column {names[0]!r} onwards cannot be read)")
            raise DataError(f"{path}: line 1 has {len(fields)} {_delim(d)}-separated fields, this format has "
                            f"{len(names)} ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})")
        return names
    seen: set[str] = set()
    for f in fields:
        if f in seen:
            raise DataError(f"{path}: line 1 (header): column {f!r} appears twice (duplicated header)")
        seen.add(f)
    missing = [c for c in wanted if c not in seen]
    if missing:
        other = _other_delimiter(line, d, lambda fs: missing[0] in [f.strip() for f in fs])
        if other:
            raise DataError(f"{path}: line 1: column {missing[0]!r} not found because the file is "
                            f"{_delim(other)}-separated; this format is {_delim(d)}-separated")
        close = difflib.get_close_matches(missing[0], fields, n=1, cutoff=0.6)
        hint = f" (the header has {close[0]!r}: misspelt?)" if close else ""
        shown = ", ".join(fields[:10]) + (", ..." if len(fields) > 10 else "")
        raise DataError(f"{path}: line 1 (header): missing column {missing[0]!r}{hint}; "
                        f"the header is: {shown}")
    return fields


# -- progress ---------------------------------------------------------------------------------------------
def set_progress(enabled: bool | None) -> None:
    """Force the progress bars on or off (``None``: on when stderr is a terminal or $MTLBENCH_PROGRESS=1)."""
    global _progress_override
    _progress_override = enabled


def progress_enabled() -> bool:
    if _progress_override is not None:
        return _progress_override
    env = os.environ.get(PROGRESS_ENV)
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


class _Bar:
    """A byte-count progress bar (tqdm) that costs nothing when disabled."""

    def __init__(self, total: int, desc: str) -> None:
        self.bar = None
        if progress_enabled():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                            leave=False, file=sys.stderr, dynamic_ncols=True)

    def to(self, pos: int) -> None:
        if self.bar is not None and pos > self.bar.n:
            self.bar.update(pos - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- columns, built while the file streams ------------------------------------------------------------------
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
        ids = _indices(enc).copy()
        return cls(ids, enc.dictionary, np.bincount(ids[ids >= 0], minlength=len(enc.dictionary)))


class _CategoryBuilder:
    """Assigns ids to one column's texts block by block, writing them into a preallocated array.

    A block's distinct texts (its dictionary) are matched against the values seen so far: as numbers with
    a sorted index while every value is a number (int, then float), else as text with an arrow hash lookup.
    """

    def __init__(self, capacity: int) -> None:
        self.ids = np.empty(capacity, dtype=np.int32)
        self.mode = "int"
        self.sorted_keys: np.ndarray = np.empty(0, dtype=np.int64)
        self.sorted_ids = np.empty(0, dtype=np.int32)
        self.new_texts: list[pa.Array] = []
        self.vocab: pa.Array | None = None
        self.counts = np.zeros(0, dtype=np.int64)
        self.size = 0

    def add(self, chunk: pa.DictionaryArray, offset: int) -> None:
        local = self._ids_of(chunk.dictionary.cast(pa.string()))
        idx = _indices(chunk)
        self.ids[offset:offset + len(idx)] = np.append(local, -1).astype(np.int32)[idx]
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
            self.sorted_ids = np.insert(self.sorted_ids, where,
                                        np.arange(self.size, self.size + len(uniq), dtype=np.int32))
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
        return pa.concat_arrays(self.new_texts) if self.new_texts else pa.array([], pa.string())

    def finish(self, n: int) -> Categories:
        return Categories(self.ids[:n], self.all_texts(), self.counts[:self.size].copy())


class _NumberSink:
    """Float or int values block by block into a preallocated array; nulls -> NaN (float) or a mask (int)."""

    def __init__(self, capacity: int, dtype: Any) -> None:
        self.values = np.empty(capacity, dtype=dtype)
        self.nulls: np.ndarray | None = None

    def add(self, chunk: pa.Array, offset: int) -> None:
        if chunk.null_count and self.values.dtype.kind != "f":
            if self.nulls is None:
                self.nulls = np.zeros(len(self.values), dtype=bool)
            self.nulls[offset:offset + len(chunk)] = chunk.is_null().to_numpy(zero_copy_only=False)
            chunk = chunk.fill_null(0)
        self.values[offset:offset + len(chunk)] = chunk.to_numpy(zero_copy_only=False)

    def finish(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.values[:n], (self.nulls[:n] if self.nulls is not None else None)


class RawFile:
    """The columns read from one file, and the conversions that name the file and line of a bad value.

    Number columns are numpy arrays (float32 with NaN for empty cells; int64), categorical ones
    :class:`Categories`.
    """

    def __init__(self, path: Path, columns: dict[str, Any], first_line: int,
                 nulls: dict[str, np.ndarray] | None = None) -> None:
        self.path = path
        self.columns = columns
        self.first_line = first_line  # line number of data row 0
        self.nulls = nulls or {}
        self.num_rows = len(next(iter(columns.values()))) if columns else 0

    def at(self, row: int) -> str:
        return f"{self.path}: line {self.first_line + int(row)}"

    def __getitem__(self, name: str) -> Any:
        return self.columns[name]

    def pop(self, name: str) -> Any:
        """Hand a column over and forget it (its memory goes with the caller's reference)."""
        return self.columns.pop(name)

    def label(self, name: str, allow_missing: bool = False) -> np.ndarray:
        """A 0/1 label column as float32 (NaN = missing); other values fail with file, column and line."""
        y = self.pop(name)
        ok = (y == 0) | (y == 1)
        if allow_missing:
            ok |= np.isnan(y)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            if np.isnan(y[row]):
                raise DataError(f"{self.at(row)}: label column {name!r} is empty/NaN; this dataset's labels "
                                "must be 0 or 1")
            raise DataError(f"{self.at(row)}: label column {name!r} has value {_fmt(y[row])}; labels must be "
                            "0 or 1")
        return y

    def numeric(self, name: str, fill: float = 0.0) -> np.ndarray:
        """A numeric feature as float32; empty cells become ``fill``; infinities fail with the line."""
        x = self.pop(name)
        bad = np.isinf(x)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{self.at(row)}: column {name!r} has value {_fmt(x[row])}, "
                            "expected a finite number")
        missing = np.isnan(x)
        if missing.any():
            x[missing] = fill
        return x

    def integer(self, name: str, allow_missing: bool = False, fill: int = -1) -> np.ndarray:
        """An integer column (ids, times) as int64; an empty cell fails with the line (or is ``fill``)."""
        x = self.pop(name)
        nulls = self.nulls.get(name)
        if nulls is not None and nulls.any():
            if not allow_missing:
                row = int(np.flatnonzero(nulls)[0])
                raise DataError(f"{self.at(row)}: column {name!r} is empty; it must hold an integer")
            x[nulls] = fill
        return x


def _fmt(v: float) -> str:
    return repr(int(v)) if float(v).is_integer() else repr(float(v))


@contextmanager
def _stream(path: Path, layout: Layout) -> Iterator[tuple[Any, Any, int]]:
    """(arrow input stream, raw file whose position drives the progress bar, raw size in bytes)."""
    size = path.stat().st_size
    if len(layout.delimiter) > 1:  # pyarrow parses single-character delimiters: substitute one
        yield pa.BufferReader(_substituted(path, layout)), None, size
        return
    raw = pa.OSFile(str(path), "rb")
    try:
        stream = pa.CompressedInputStream(raw, "gzip") if _is_gzip(path) else raw
        yield stream, raw, size
    finally:
        raw.close()


def _substituted(path: Path, layout: Layout) -> bytes:
    with (gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")) as f:
        return f.read().replace(layout.delimiter.encode(), b"\x1f")


def count_lines(path: Path, layout: Layout) -> int:
    """Physical lines of the file (an upper bound of its rows), in one fast pass without parsing."""
    if len(layout.delimiter) > 1:
        data = _substituted(path, layout)
        return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    n, last = 0, b"\n"
    with (gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")) as f:
        while block := f.read(16 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (0 if last == b"\n" else 1)


def _options(layout: Layout, columns: Mapping[str, str], use_threads: bool = True,
             invalid_row_handler: Any = None) -> tuple[Any, Any, Any]:
    read = pacsv.ReadOptions(column_names=list(layout.names) if layout.names else None,
                             block_size=BLOCK_SIZE, encoding=layout.encoding, use_threads=use_threads)
    delim = "\x1f" if len(layout.delimiter) > 1 else layout.delimiter
    parse = pacsv.ParseOptions(delimiter=delim, invalid_row_handler=invalid_row_handler)
    convert = pacsv.ConvertOptions(include_columns=list(columns),
                                   column_types={c: ARROW_TYPES[k] for c, k in columns.items()},
                                   null_values=NULL_VALUES, strings_can_be_null=True,
                                   quoted_strings_can_be_null=True)
    return read, parse, convert


def read_csv(path: str | os.PathLike, columns: Mapping[str, Kind], layout: Layout = Layout(),
             max_rows: int | None = None, desc: str | None = None) -> RawFile:
    """Read the named ``columns`` of one published CSV file (gzip allowed), streaming and columnar.

    ``columns`` maps a column name (as in the header, or in ``layout.names``) to its kind: ``cat``
    (a category, see :class:`Categories`), ``int``, ``float`` or ``label`` (float, 0/1/empty, checked by
    :meth:`RawFile.label`). ``max_rows`` stops after that many data rows.

    Each parsed block is converted at once into preallocated output arrays (sized by a quick line count)
    and dropped, so memory holds the outputs plus one block, never the whole parsed table.
    """
    path = Path(path).expanduser()
    check_file(path)
    line = first_line(path, layout.encoding)
    names = check_header(path, line, layout, list(columns))
    start_line = 2 if layout.header else 1
    capacity = max(0, count_lines(path, layout) - (start_line - 1))
    if max_rows is not None:
        capacity = min(capacity, int(max_rows))
    sinks = {c: _CategoryBuilder(capacity) if k == "cat" else
             _NumberSink(capacity, np.int64 if k == "int" else np.float32) for c, k in columns.items()}
    cats = [c for c, k in columns.items() if k == "cat"] if layout.header else []
    n = 0
    with _stream(path, layout) as (stream, raw, size):
        bar = _Bar(size, desc or f"reading {path.name}")
        try:
            for batch in pacsv.open_csv(stream, *_options(layout, columns), memory_pool=POOL):
                if n + batch.num_rows > capacity:
                    batch = batch.slice(0, capacity - n)
                if cats:
                    _check_repeated_header(batch, cats, path, start_line + n)
                for name, arr in zip(batch.schema.names, batch.columns):
                    sinks[name].add(arr, n)
                n += batch.num_rows
                if raw is not None:
                    bar.to(raw.tell())
                if n >= capacity:
                    break
        except pa.ArrowInvalid as e:
            bar.close()
            raise _explain(path, layout, columns, names, start_line, e) from None
        bar.close()
    if n == 0:
        raise DataError(f"{path}: the file has no data rows" + (" after the header (line 1)" if layout.header
                                                                   else ""))
    out, nulls = {}, {}
    for c, sink in sinks.items():
        if isinstance(sink, _CategoryBuilder):
            out[c] = sink.finish(n)
        else:
            out[c], mask = sink.finish(n)
            if mask is not None:
                nulls[c] = mask
    release_memory()
    return RawFile(path, out, start_line, nulls)


def _check_repeated_header(batch: pa.RecordBatch, cats: list[str], path: Path, line0: int) -> None:
    """A header line repeated inside the data of text columns (no conversion error would catch it)."""
    first = batch.column(batch.schema.get_field_index(cats[0]))
    pos = pc.index(first.dictionary, cats[0]).as_py()
    if pos < 0:
        return
    for row in np.flatnonzero(_indices(first) == pos)[:100]:
        if all(batch.column(batch.schema.get_field_index(c))[int(row)].as_py() == c for c in cats[1:]):
            raise DataError(f"{path}: line {line0 + int(row)}: the header line appears again inside the "
                            f"data (column {cats[0]!r} has value {cats[0]!r}; duplicated header, e.g. "
                            "concatenated files?)")


def _explain(path: Path, layout: Layout, columns: Mapping[str, str], names: list[str], start_line: int,
             error: pa.ArrowInvalid) -> DataError:
    """Turn a pyarrow parse/conversion error into one line naming the file, column and first bad line."""
    msg = str(error).strip().splitlines()[0]
    m = re.search(r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to (\w+): "
                  r"invalid value '(.*)'$", msg)
    if m:
        idx, target, value = int(m.group(1)), m.group(3), m.group(4)
        name = names[idx] if idx < len(names) else f"#{idx}"
        # pyarrow names the physical line only sometimes; otherwise find it in a pass over that column
        row = int(m.group(2)) - start_line if m.group(2) else _find_value(path, layout, name, value)
        where = f"{path}: line {start_line + row}" if row >= 0 else str(path)
        what = "an integer" if "int" in target else "a number"
        if value.strip() == name:
            return DataError(f"{where}: the header line appears again inside the data (column {name!r} has "
                             f"value {value!r}; duplicated header, e.g. concatenated files?)")
        hint = "; this format has no header line, remove it" if not layout.header and row == 0 else ""
        return DataError(f"{where}: column {name!r} has {value!r}, expected {what}{hint}")
    if "CSV parse error" in msg:
        bad: list[Any] = []

        def handler(row: Any) -> str:
            bad.append(row)
            return "error"

        try:
            with _stream(path, layout) as (stream, _, _):
                for _ in pacsv.open_csv(stream, *_options(layout, {names[0]: "cat"}, False, handler)):
                    pass
        except pa.ArrowInvalid:
            pass
        if bad:
            row = bad[0]
            line = row.number if row.number is not None else "?"
            text = row.text if len(row.text) <= 60 else row.text[:57] + "..."
            return DataError(f"{path}: line {line}: {row.actual_columns} fields where the format has "
                             f"{row.expected_columns} (column {names[-1]!r} is the last): {text!r}")
    return DataError(f"{path}: cannot be read as {_delim(layout.delimiter)}-separated text: {msg}")


def _find_value(path: Path, layout: Layout, column: str, value: str) -> int:
    """Data row of the first cell of ``column`` whose text is ``value`` (-1 if none), in one columnar pass."""
    offset = 0
    with _stream(path, layout) as (stream, _, _):
        read, parse, _ = _options(layout, {column: "cat"})
        convert = pacsv.ConvertOptions(include_columns=[column], column_types={column: pa.string()},
                                       strings_can_be_null=False)
        for batch in pacsv.open_csv(stream, read, parse, convert):
            equal = pc.equal(batch.column(0), value).fill_null(False)
            hits = np.flatnonzero(equal.to_numpy(zero_copy_only=False))
            if len(hits):
                return offset + int(hits[0])
            offset += batch.num_rows
    return -1


# -- re-indexing ----------------------------------------------------------------------------------------
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
        lookup = np.append(entry[start:start + len(c.texts)], n_keep).astype(np.int32)
        start += len(c.texts)
        for s in range(0, len(c.ids), 1 << 20):  # in place, a slice at a time: -1 (empty) -> the extra id
            c.ids[s:s + (1 << 20)] = lookup[c.ids[s:s + (1 << 20)]]
    ids = concat([c.ids for c in cols]) if cols else np.zeros(0, np.int32)
    if other_used:
        values.append(None)
    return Encoded(ids, values, max(1, n_keep + int(other_used)))


def _indices(chunk: pa.DictionaryArray) -> np.ndarray:
    """A dictionary block's indices as int32 numpy, -1 for empty cells (zero-copy when there are none)."""
    idx = chunk.indices
    if chunk.null_count:
        idx = idx.fill_null(-1)
    return idx.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)


def release_memory() -> None:
    """Hand memory freed by arrow back to the OS, so numpy (another allocator) can use it."""
    pa.default_memory_pool().release_unused()
    POOL.release_unused()


def concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """np.concatenate without the copy when there is one array."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def decode_values(col: Categories, strip: bool = True) -> tuple[np.ndarray, list[Any]]:
    """(per-row index into the list of distinct published texts, that list); -1 = empty cell.

    For columns whose few texts map to labels or groups (e.g. census "50000+."): map the texts in Python,
    then gather per row with numpy.
    """
    texts = [t.strip() if (strip and isinstance(t, str)) else t for t in col.texts.to_pylist()]
    return col.ids, texts


def check_known_values(raw: RawFile, column: str, known: Any, expected: str) -> None:
    """One-line DataError (file, line, value) for the first row whose text in ``column`` fails ``known``.

    For a scenario field whose values the publisher documents: an unknown value is an error, not a new
    scenario. ``known`` is called once per distinct text (not per row); an empty cell always fails.
    """
    ids, texts = decode_values(raw[column])
    bad = (ids < 0) | np.isin(ids, [i for i, t in enumerate(texts) if t is None or not known(t)])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = texts[ids[row]] if ids[row] >= 0 else ""
        raise DataError(f"{raw.at(row)}: column {column!r} has {value!r}; expected {expected}")


def map_categories(col: Categories, fn: Any) -> Categories:
    """Apply ``fn`` (text -> text or None) to the distinct texts of a categorical column, not to every row.

    E.g. the first tag of a "12,65" tag list. :func:`encode` merges texts that map to the same value.
    """
    return Categories(col.ids, pa.array([fn(t) for t in col.texts.to_pylist()], pa.string()), col.counts)


def join_rows(keys: np.ndarray, table_keys: np.ndarray, log: RawFile, column: str,
              table: RawFile) -> np.ndarray:
    """Row of a side table (users, items) holding each log key; unknown keys fail naming the log line."""
    order = np.argsort(table_keys, kind="stable")
    sorted_keys = table_keys[order]
    dup = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if len(dup):
        value = sorted_keys[dup[0]]
        row = int(np.flatnonzero(table_keys == value)[1])
        raise DataError(f"{table.at(row)}: column {column!r} repeats id {int(value)}; ids must be unique")
    if len(table_keys) == 0:
        raise DataError(f"{table.path}: the table has no rows")
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    found = sorted_keys[pos] == keys
    if not found.all():
        row = int(np.flatnonzero(~found)[0])
        raise DataError(f"{log.at(row)}: column {column!r} has id {int(keys[row])}, which {table.path.name} "
                        "does not list")
    return order[pos]


# -- small numeric helpers ----------------------------------------------------------------------------------
def standardize(x: np.ndarray, log: bool = False) -> np.ndarray:
    """z-score (over all rows) of ``x``, of ``log1p(max(x, 0))`` when ``log``; float32, 0 for a constant."""
    v = np.log1p(np.maximum(x, 0.0, dtype=np.float64)) if log else x.astype(np.float64)
    std = v.std()
    return ((v - v.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def recent_items(user: np.ndarray, item: np.ndarray, length: int) -> np.ndarray:
    """[N, length] the user's previous items, most recent first, PAD (-1) where there are fewer.

    Rows must be in time order; "previous" means earlier rows of the same user (the current row excluded).
    """
    n = len(user)
    order = np.argsort(user, kind="stable")  # each user's rows, in time order
    u = user[order]
    start = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    pos = np.arange(n) - np.repeat(start, np.diff(np.r_[start, n]))
    lag = np.arange(1, length + 1)
    prev = np.arange(n)[:, None] - lag
    hist = np.where(pos[:, None] >= lag, item[order][np.maximum(prev, 0)], -1)
    out = np.empty_like(hist)
    out[order] = hist
    return out.astype(np.int64)


def time_order(*keys: np.ndarray) -> np.ndarray:
    """Stable row order by the given keys, most significant first (e.g. time, then user)."""
    return np.lexsort(tuple(reversed(keys)))
