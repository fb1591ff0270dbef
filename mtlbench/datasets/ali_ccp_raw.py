"""Ali-CCP as Tianchi ships it (the raw layout), read by dataset ``ali_ccp`` when its folder holds the raw files.

**Tianchi's layout** (https://tianchi.aliyun.com/dataset/408; Ma et al., ESMM, SIGIR 2018), per split
``train`` and ``test``, CSV without a header line:

- ``sample_skeleton_{split}.csv``: ``sample_id,click,conversion,common_feature_index,feature_num,feature_list``,
  one impression per line (the item / ad side of the features);
- ``common_features_{split}.csv``: ``common_feature_index,feature_num,feature_list``, the features shared by
  the impressions of one request (the user side), joined to the skeleton rows by ``common_feature_index``;
- ``feature_list``: entries joined by ``\\x01``, each ``field_id \\x02 feature_id \\x03 value`` (field ids such
  as ``101`` or ``109_14``; feature ids are integers; the value is a float: 1.0 for one-hot fields, a log
  count for the behaviour fields and the crosses);
- the downloads ``sample_train.tar.gz`` / ``sample_test.tar.gz`` each hold their split's two CSVs.

``dataset.path`` is a folder holding the four CSVs, or the two archives (read as streams, never extracted to
disk), or ``train/`` and ``test/`` subfolders holding each split's CSVs. A folder with any of these is read
in this layout (both splits are required); any other path keeps the processed-CSV reader of ``ali_ccp.py``.

**What we build** (our choices, not Tianchi's):

- Columns are streamed with pyarrow's CSV reader, block by block; each block's ``feature_list`` is split into
  entries in numpy over the block's bytes (never a Python loop over lines). The skeleton rows are joined to
  their common-features row; a field may come from either file (the skeleton's entry wins when both have it).
- Single-valued fields are categorical features named by their field id: ``101`` and ``121``-``129`` role
  user, ``205``/``206``/``207``/``210``/``216`` role item, the crosses ``508``/``509``/``702``/``853``, the
  scenario ``301`` and any other field id found role context. A field listed several times in one row
  (``210`` and ``853`` can be) keeps its first entry. Ids follow the sorted order of the raw feature ids over
  all rows of both splits (one vocabulary, as in the processed reader); a row without the field, and (with
  ``min_count``) a rare id, get one shared extra id, the last.
- ``109_14``, ``110_14``, ``127_14``, ``150_14`` (the user's behaviour: categories, shops, brands, intentions)
  are **sequence** features (role user): their ids, most frequent first (larger entry value first, ties by
  smaller feature id), truncated / padded with ``PAD`` (-1) to ``max_len`` (default 20: four sequences cost
  ``4 * max_len * 8`` bytes per row in the cache, ids and weights; raise it when memory allows). The entry
  values (Tianchi's log counts) are kept as the float32 weights column ``<name>:weights`` (0 at padding),
  served in batches as ``seqw:<name>``.
- Scenario: field ``301``, which has three values in Ali-CCP. By default (``scenario_values: null``) the three
  distinct raw ids met in the files are the scenarios, numbered 0 / 1 / 2 in ascending raw-id order and reported
  as B1 / B2 / B3 (``scenario_labels``; the SFPNet paper does not say which id is which B, this order is ours);
  a fourth distinct value fails naming the file, line and value. ``scenario_values: [a, b, c]`` pins the ids
  (public material quotes only one of them, 9351665, so we do not guess the others). A skeleton row without
  field 301 (in neither file) fails naming its file and line.
- Tasks as in the processed reader: ``ctr`` = click; ``cvr`` = conversion on clicked rows only (NaN
  elsewhere); ``ctcvr`` = click and conversion. A skeleton row with conversion = 1 and click = 0 (a
  conversion needs a click) is **dropped**; the count is logged and recorded in the schema's ``stats``
  (``dropped_conversion_without_click``), which ``mtlbench-data describe`` and ``prepare`` print.
- Split: the official test file is the test split; ``valid_fraction`` of the kept training rows (the first
  ``round(valid_fraction * n)`` of a permutation seeded with ``split_seed``; at least one) is the validation
  split, the rest trains. The analysis column ``split_part`` holds 0 / 1 / 2 and the schema's ``auto_split``
  makes ``split.method: auto`` resolve to ``column:split_part``.
- ``max_rows`` limits the skeleton rows read per split (common features are read whole); ``feature_num`` and
  ``sample_id`` are not read.

Errors are one line naming the file (``archive:member`` inside an archive), the line and the value: a
skeleton row whose ``common_feature_index`` has no common-features row (or a repeated common-features key),
a malformed entry (missing ``\\x02`` / ``\\x03``, a feature id that is not an integer, a value that is not a
finite number), a label outside {0, 1}, an unknown field-301 value. Line numbers count physical lines from 1.
"""

from __future__ import annotations

import math
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mtlbench.data.schema import PAD, DatasetSchema, Feature, Role, weights_column
from mtlbench.datasets.csv_reading import POOL, release_memory
from mtlbench.datasets.funnel import funnel_labels, funnel_roles
from mtlbench.datasets.progress import ProgressBar
from mtlbench.datasets.vocabulary import Categories, encode
from mtlbench.errors import ConfigError, DataError
from mtlbench.log import get_logger

log = get_logger(__name__)

SPLITS = ("train", "test")
SKELETON_COLUMNS = ("sample_id", "click", "conversion", "common_feature_index", "feature_num", "feature_list")
COMMON_COLUMNS = ("common_feature_index", "feature_num", "feature_list")
USER_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129")
ITEM_FIELDS = ("205", "206", "207", "210", "216")
CONTEXT_FIELDS = ("508", "509", "702", "853", "301")
SEQUENCE_FIELDS = ("109_14", "110_14", "127_14", "150_14")
SCENARIO_FIELD = "301"
#: field 301 has three values in Ali-CCP (the three scenarios of the ESMM release)
NUM_SCENARIOS = 3
DEFAULT_MAX_LEN = 20
DROPPED = "dropped_conversion_without_click"
#: bytes per parsed CSV block: small blocks keep the temporary arrays small (about 2x faster than 8 MB blocks
#: here); a file with a longer line is read again with blocks 8x larger, as often as needed
RAW_BLOCK_SIZE = 1 << 20


# -- finding the files ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawCsv:
    """One raw CSV: a file, or the member ``member`` of the .tar.gz archive ``path``."""

    path: Path
    member: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    @contextmanager
    def open(self) -> Iterator[tuple[Any, Any]]:
        """(binary stream of the CSV, the file on disk whose position drives the progress bar)."""
        if self.member is None:
            with pa.OSFile(str(self.path), "rb") as f:
                yield f, f
            return
        with _archive(self.path) as (tar, raw):
            for m in tar:
                if m.name == self.member:
                    yield tar.extractfile(m), raw
                    return
        raise DataError(f"{self.path}: the archive has no member {self.member!r}")


@dataclass(frozen=True)
class RawSplit:
    """The two CSVs of one split: files on disk, or the members of one archive (``archive``)."""

    split: str
    skeleton: RawCsv | None = None
    common: RawCsv | None = None
    archive: Path | None = None

    def csvs(self) -> tuple[RawCsv, RawCsv]:
        """(skeleton, common features) of a split read from two CSVs rather than from an archive."""
        if self.skeleton is None or self.common is None:
            raise ValueError(f"raw Ali-CCP split {self.split!r} has neither both CSVs nor an archive")
        return self.skeleton, self.common


def _names(split: str) -> tuple[str, str]:
    return f"sample_skeleton_{split}.csv", f"common_features_{split}.csv"


def find_raw(path: Path) -> dict[str, RawSplit] | None:
    """The raw files of each split under the folder ``path``; None when ``path`` is not in the raw layout."""
    if not path.is_dir():
        return None
    found: dict[str, RawSplit] = {}
    for split in SPLITS:
        for folder in (path, path / split):
            files = [folder / n for n in _names(split)]
            present = [f for f in files if f.is_file()]
            if present:
                if len(present) == 1:
                    other = files[1] if present[0] == files[0] else files[0]
                    raise DataError(
                        f"{other}: file not found (it goes with {present[0].name}: raw Ali-CCP reads "
                        "the skeleton and the common features of a split together)"
                    )
                found[split] = RawSplit(split, RawCsv(files[0]), RawCsv(files[1]))
                break
        else:
            archive = path / f"sample_{split}.tar.gz"
            if archive.is_file():
                found[split] = RawSplit(split, archive=archive)
    if not found:
        return None
    for split in SPLITS:
        if split not in found:
            skeleton, common = _names(split)
            raise DataError(
                f"{path}: raw Ali-CCP needs the {split} split too: {skeleton} and {common}, or "
                f"sample_{split}.tar.gz, or a {split}/ folder with the two CSVs"
            )
    return found


@contextmanager
def _archive(path: Path) -> Iterator[tuple[tarfile.TarFile, BinaryIO]]:
    """A .tar.gz opened as a stream (members in archive order, nothing extracted to disk)."""
    with open(path, "rb") as raw:
        try:
            with tarfile.open(fileobj=raw, mode="r|gz", bufsize=1 << 20) as tar:
                yield tar, raw
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: cannot read the archive ({e})") from None


# -- one block of feature lists -> entries ------------------------------------------------------------------
class FieldCodes:
    """Codes (int16) of the field ids seen so far, shared by every file of one build.

    A field id of up to 8 bytes is looked up by its bytes packed into one integer (a sorted array and
    ``searchsorted``: no Python per entry); longer ones by their text.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._code: dict[str, int] = {}
        self._keys = np.zeros(0, dtype=np.uint64)
        self._key_codes = np.zeros(0, dtype=np.int16)

    def code(self, name: str) -> int:
        if name not in self._code:
            self._code[name] = len(self.names)
            self.names.append(name)
        return self._code[name]

    def of_keys(self, keys: np.ndarray) -> np.ndarray:
        """Codes of packed field ids (the id's bytes in the top bytes of a little-endian word)."""
        pos = np.searchsorted(self._keys, keys).clip(0, max(len(self._keys) - 1, 0))
        if not len(self._keys) or not (self._keys[pos] == keys).all():
            new = np.setdiff1d(keys, self._keys)
            codes = [self.code(int(k).to_bytes(8, "little").lstrip(b"\0").decode("utf-8", "replace")) for k in new]
            self._keys = np.concatenate([self._keys, new])
            self._key_codes = np.concatenate([self._key_codes, np.array(codes, dtype=np.int16)])
            order = np.argsort(self._keys)
            self._keys, self._key_codes = self._keys[order], self._key_codes[order]
            pos = np.searchsorted(self._keys, keys)
        return self._key_codes[pos]

    def of_texts(self, texts: pa.Array) -> np.ndarray:
        enc = pc.dictionary_encode(texts)
        lut = np.array([self.code(t) for t in enc.dictionary.to_pylist()], dtype=np.int16)
        return lut[enc.indices.to_numpy(zero_copy_only=False)]


@dataclass
class Entries:
    """The entries of one block of ``feature_list`` cells, in row order."""

    row: np.ndarray  # int64: the block row of each entry
    field: np.ndarray  # int16: the field's code in the build's FieldCodes
    fid: np.ndarray  # int64 feature ids (>= 0)
    value: np.ndarray  # float64 values


_PAD = 16  # zero bytes before (and after) a block's bytes, so every 16-byte window ending in it is readable
_ZEROS = np.uint64(0x3030303030303030)  # eight '0' characters
#: _TOP[k]: the top k bytes of a little-endian word (the last k bytes before a window's end)
_TOP = np.array([0] + [((1 << 8 * k) - 1) << (64 - 8 * k) for k in range(1, 9)], dtype=np.uint64)
_FILL = _ZEROS & ~_TOP  # '0' in the other bytes


def _words(padded: np.ndarray) -> np.ndarray:
    """Every 8-byte window of ``padded`` as one uint64 (an unaligned view, no copy): ``w[i] = padded[i:i+8]``."""
    return np.ndarray(shape=(len(padded) - 7,), dtype=np.uint64, buffer=padded, strides=(1,))


def _slots(w: np.ndarray, ends: np.ndarray, lens: np.ndarray, width: int) -> pa.StringArray:
    """The ``width`` (8 or 16) bytes before each padded end as fixed-width strings, the bytes before each
    number (``lens`` long) turned into '0': ``"2.3979"`` -> ``"002.3979"`` (leading zeros parse the same)."""
    k = width // 8
    out = np.empty((len(ends), k), dtype=np.uint64)
    for j in range(k):  # lens are 1..16: the last word holds min(lens, 8) bytes, the one before the rest
        n = np.minimum(lens, 8) if j == 0 else np.maximum(lens - 8, 0)
        out[:, k - 1 - j] = (w[ends - 8 * (j + 1)] & _TOP[n]) | _FILL[n]
    offsets = np.arange(0, width * len(ends) + 1, width, dtype=np.int32)
    return pa.StringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(out))


def _substrings(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.StringArray:
    """The byte ranges ``data[starts[i]:ends[i]]`` as one arrow string array (one gather, no Python loop)."""
    lens = ends - starts
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    idx = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - starts, lens)
    return pa.StringArray.from_buffers(len(lens), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data[idx]))


def _numbers(
    data: np.ndarray, w: np.ndarray, starts: np.ndarray, ends: np.ndarray, typ: pa.DataType
) -> np.ndarray | None:
    """The numbers written in the byte ranges (arrow's parser); None when one of them is not a number."""
    lens = ends - starts
    if not len(lens):
        return np.zeros(0, dtype=typ.to_pandas_dtype())
    longest = int(lens.max())
    if int(lens.min()) > 0 and longest <= 16:  # fixed-width, zero-padded: no gather of the bytes
        try:
            return pc.cast(_slots(w, ends + _PAD, lens, 8 if longest <= 8 else 16), typ).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # e.g. a sign or a space: the exact texts decide
    try:
        return pc.cast(_substrings(data, starts, ends), typ).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def split_entries(col: pa.Array, codes: FieldCodes) -> Entries | int:
    """Split a block of ``feature_list`` cells into entries, vectorised over the block's bytes.

    Returns the entries, or the block row of the first cell that is not a list of ``field \\x02 id \\x03
    value`` entries joined by ``\\x01`` with an integer id >= 0 and a finite value (an empty cell has none).
    """
    n = len(col)
    _, off_buf, data_buf = col.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int32, count=n + 1, offset=col.offset * 4).astype(np.int64)
    o = offsets - offsets[0]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8, count=int(o[-1]), offset=int(offsets[0]))
        if data_buf is not None and o[-1] > 0
        else np.zeros(0, dtype=np.uint8)
    )
    pos = np.flatnonzero((data - np.uint8(1)) < 3)  # \x01, \x02, \x03 (uint8 wraps \x00 to 255)
    sep = data[pos]
    first = np.searchsorted(pos, o)  # each row's first separator; first[n] = len(pos)
    cnt = np.diff(first)
    nonempty = np.diff(o) > 0
    bad = nonempty & (cnt == 0)
    has = np.flatnonzero(cnt > 0)  # a row's separators run \x02 \x03 \x01 \x02 \x03 ... \x02 \x03
    bad[has] |= (sep[first[has]] != 2) | (sep[first[has + 1] - 1] != 3)
    step = sep[1:] != (sep[:-1] % 3) + 1
    if step.any():
        row_start = np.zeros(len(pos), dtype=bool)
        row_start[first[has]] = True
        step &= ~row_start[1:]
        bad[np.searchsorted(o, pos[1:][step], "right") - 1] = True
    if bad.any():  # the first bad row of the block: rows before it may still fail in another way
        r = int(np.flatnonzero(bad)[0])
        earlier = split_entries(col.slice(0, r), codes) if r else None
        return earlier if isinstance(earlier, int) else r
    ne = np.flatnonzero(nonempty)
    starts = np.insert(pos + 1, first[ne], o[ne])  # every row's first segment starts at the row
    ends = np.insert(pos, first[ne + 1], o[ne + 1])  # and its last one ends with it
    row = np.repeat(np.arange(n, dtype=np.int64), np.where(nonempty, (cnt + 1) // 3, 0))
    padded = np.zeros(len(data) + 2 * _PAD, dtype=np.uint8)
    padded[_PAD : _PAD + len(data)] = data
    w = _words(padded)
    fid = _numbers(data, w, starts[1::3], ends[1::3], pa.int64())
    value = _numbers(data, w, starts[2::3], ends[2::3], pa.float64())
    if fid is None or value is None:
        return -1  # not located here: the caller finds the row
    flen = ends[0::3] - starts[0::3]
    ok = (fid >= 0) & np.isfinite(value) & (flen > 0)
    if not ok.all():
        return int(row[np.flatnonzero(~ok)[0]])
    if not len(flen) or flen.max() <= 8:
        field = codes.of_keys(w[ends[0::3] + _PAD - 8] & _TOP[flen])
    else:
        field = codes.of_texts(_substrings(data, starts[0::3], ends[0::3]))
    return Entries(row, field, fid, value)


def _float_or_none(text: str | None) -> float | None:
    try:
        v = float(text or "")
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def entry_problem(cell: str) -> str | None:
    """What is wrong with a ``feature_list`` cell (its first bad entry), None if nothing (for error messages)."""
    if not cell:
        return None
    for entry in cell.split("\x01"):
        field, sep, rest = entry.partition("\x02")
        if not sep or "\x03" in field:
            return f"entry {entry!r} has no '\\x02' after a field id"
        if not field:
            return f"entry {entry!r} has an empty field id"
        fid, sep, value = rest.partition("\x03")
        if not sep:
            return f"entry {entry!r} has no '\\x03' between feature id and value"
        if "\x02" in fid or "\x02" in value or "\x03" in value:
            return f"entry {entry!r} has a separator too many"
        if not (fid.isascii() and fid.isdigit()) or len(fid) > 18:
            return f"entry {entry!r}: feature id {fid!r} is not a non-negative integer"
        if _float_or_none(value) is None or not value.isascii() or value.strip() != value or "_" in value:
            return f"entry {entry!r}: value {value!r} is not a finite number"
    return None


# -- the scenario ids -----------------------------------------------------------------------------------------
class ScenarioIds:
    """Raw field-301 ids -> scenarios 0 .. n-1.

    ``values`` given (``dataset.scenario_values``): exactly those ids, scenario i = ``values[i]``. ``None``: the first
    ``NUM_SCENARIOS`` distinct ids met (over both splits) are the scenarios and a further distinct id is an
    error, so the documented "three scenarios" is checked without assuming which raw ids they have (public
    material quotes only one of them, 9351665). Shared by every file of a dataset build.
    """

    def __init__(self, values: tuple[int, ...] | None) -> None:
        self.fixed = values is not None
        self.known: list[int] = [int(v) for v in values] if values is not None else []  # scenario i = known[i]

    def check(self, fid: np.ndarray, line_of: Any, file: str) -> None:
        """Raise naming the file, line and value of the first id that is not (or can no longer be) a scenario."""
        for v in np.unique(fid).tolist():
            if v not in self.known and not self.fixed and len(self.known) < NUM_SCENARIOS:
                self.known = sorted([*self.known, int(v)])  # discovered: ascending raw-id order
            if v not in self.known:
                i = int(np.flatnonzero(fid == v)[0])
                what = (
                    f"not one of dataset.scenario_values {self.known}"
                    if self.fixed
                    else f"a {len(self.known) + 1}th distinct value; Ali-CCP's field {SCENARIO_FIELD} has "
                    f"{NUM_SCENARIOS} ({self.known} so far)"
                )
                raise DataError(f"{file}: line {line_of(i)}: field {SCENARIO_FIELD} has value {v}, {what}")

    def index(self, raw: np.ndarray) -> np.ndarray:
        """Scenario of each raw id (-1 stays -1)."""
        keys = np.asarray(self.known, dtype=np.int64)
        sorter = np.argsort(keys)
        pos = np.searchsorted(keys[sorter], raw).clip(0, len(keys) - 1)
        return np.where(raw >= 0, sorter[pos], -1).astype(np.int8)


# -- one file: blocks -> per-row raw ids --------------------------------------------------------------------
class Side:
    """What one raw CSV contributes per row: raw feature ids per field (-1: the row lacks the field), the
    behaviour sequences (raw ids, PAD-padded, with their values), the scenario (0/1/2, -1 absent)."""

    def __init__(self, name: str, max_len: int, scenario_ids: ScenarioIds, codes: FieldCodes) -> None:
        self.name = name
        self.codes = codes
        self.max_len = max_len
        self.scenario_ids = scenario_ids
        self.rows = 0
        self.singles: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.seqs: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        self.scen: list[tuple[int, np.ndarray]] = []

    def add(self, e: Entries, n: int) -> None:
        """The entries of the block of rows ``self.rows .. self.rows + n``."""
        order = np.argsort(e.field, kind="stable")  # entries grouped by field, each group in row order (radix)
        bounds = np.r_[0, np.cumsum(np.bincount(e.field, minlength=len(self.codes.names)))]
        for c in np.flatnonzero(np.diff(bounds)):
            name = self.codes.names[c]
            idx = order[bounds[c] : bounds[c + 1]]
            rows, fid = e.row[idx], e.fid[idx]
            if name in SEQUENCE_FIELDS:
                self._sequence(name, n, rows, fid, e.value[idx])
                continue
            first = np.r_[True, rows[1:] != rows[:-1]]
            rows, fid = rows[first], fid[first]
            if name == SCENARIO_FIELD:
                self._scenario(n, rows, fid)
                continue
            dense = np.full(n, -1, dtype=np.int32 if fid.max() < 2**31 else np.int64)
            dense[rows] = fid
            self.singles.setdefault(name, []).append((self.rows, dense))
        self.rows += n

    def _scenario(self, n: int, rows: np.ndarray, fid: np.ndarray) -> None:
        self.scenario_ids.check(fid, lambda i: self.rows + int(rows[i]) + 1, self.name)
        dense = np.full(n, -1, dtype=np.int64)  # raw ids: mapped to scenarios once every file is read
        dense[rows] = fid
        self.scen.append((self.rows, dense))

    def _sequence(self, name: str, n: int, rows: np.ndarray, fid: np.ndarray, value: np.ndarray) -> None:
        order = np.lexsort((fid, -value, rows))  # per row: larger value first, ties by smaller id
        rows, fid, value = rows[order], fid[order], value[order]
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
        keep = rank < self.max_len
        ids = np.full((n, self.max_len), PAD, dtype=np.int32 if fid.max() < 2**31 else np.int64)
        weights = np.zeros((n, self.max_len), dtype=np.float32)
        ids[rows[keep], rank[keep]] = fid[keep]
        weights[rows[keep], rank[keep]] = value[keep]
        self.seqs.setdefault(name, []).append((self.rows, ids, weights))

    # -- assembled columns (each hands its blocks over once) --
    def single(self, name: str) -> np.ndarray | None:
        blocks = self.singles.pop(name, None)
        if blocks is None:
            return None
        out = np.full(self.rows, -1, dtype=np.result_type(*[b for _, b in blocks]))
        for start, b in blocks:
            out[start : start + len(b)] = b
        return out

    def scenario(self) -> np.ndarray | None:
        if not self.scen:
            return None
        out = np.full(self.rows, -1, dtype=np.int64)
        for start, b in self.scen:
            out[start : start + len(b)] = b
        return out

    def sequence(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        blocks = self.seqs.pop(name, None)
        if blocks is None:
            return None
        ids = np.full((self.rows, self.max_len), PAD, dtype=np.result_type(*[b for _, b, _ in blocks]))
        weights = np.zeros((self.rows, self.max_len), dtype=np.float32)
        for start, b, w in blocks:
            ids[start : start + len(b)] = b
            weights[start : start + len(b)] = w
        return ids, weights


class Skeleton(Side):
    """A skeleton file: also the labels and each row's ``common_feature_index`` (per block: ids + dictionary)."""

    def __init__(self, name: str, max_len: int, scenario_ids: ScenarioIds, codes: FieldCodes) -> None:
        super().__init__(name, max_len, scenario_ids, codes)
        self.click: list[np.ndarray] = []
        self.conversion: list[np.ndarray] = []
        self.keys: list[tuple[int, np.ndarray, pa.Array]] = []


class Common(Side):
    """A common-features file: also its keys, one per row."""

    def __init__(self, name: str, max_len: int, scenario_ids: ScenarioIds, codes: FieldCodes) -> None:
        super().__init__(name, max_len, scenario_ids, codes)
        self.key_chunks: list[pa.Array] = []


def _label(col: pa.DictionaryArray, column: str, name: str, row0: int) -> np.ndarray:
    """A 0/1 label block as int8; another value fails naming the line."""
    texts = col.dictionary.to_pylist()
    label: dict[float | None, int] = {0.0: 0, 1.0: 1}  # anything else (None: not a number) is -1
    lut = np.array([label.get(_float_or_none(t), -1) for t in texts] + [-1], dtype=np.int8)
    idx = col.indices.fill_null(len(texts)).to_numpy(zero_copy_only=False)
    out = lut[idx]
    if (out < 0).any():
        r = int(np.flatnonzero(out < 0)[0])
        text = texts[idx[r]] if idx[r] < len(texts) else ""
        raise DataError(f"{name}: line {row0 + r + 1}: column {column!r} has value {text!r}; labels must be 0 or 1")
    return out


def _options(
    columns: tuple[str, ...],
    kinds: dict[str, pa.DataType],
    block_size: int,
    use_threads: bool = True,
    handler: Any = None,
) -> tuple[Any, Any, Any]:
    read = pacsv.ReadOptions(column_names=list(columns), block_size=block_size, use_threads=use_threads)
    parse = pacsv.ParseOptions(delimiter=",", quote_char=False, invalid_row_handler=handler)
    convert = pacsv.ConvertOptions(
        include_columns=list(kinds), column_types=kinds, strings_can_be_null=False, quoted_strings_can_be_null=False
    )
    return read, parse, convert


def _kinds(side: Side) -> tuple[tuple[str, ...], dict[str, pa.DataType]]:
    if isinstance(side, Skeleton):
        cat = pa.dictionary(pa.int32(), pa.string())
        return SKELETON_COLUMNS, {
            "click": cat,
            "conversion": cat,
            "common_feature_index": cat,
            "feature_list": pa.string(),
        }
    return COMMON_COLUMNS, {"common_feature_index": pa.string(), "feature_list": pa.string()}


class _LongLine(Exception):
    """A line longer than the CSV block: read the file again with larger blocks."""


def read_csv_side(csv: RawCsv, stream: Any, raw: Any, make: Any, max_rows: int | None = None) -> Side:
    """Stream one raw CSV into a new side (``make()``); again with larger blocks if a line needs them."""
    block = RAW_BLOCK_SIZE
    try:
        side = make()
        read_side(csv, stream, raw, side, max_rows, block)
        return side
    except _LongLine:
        pass
    while True:
        block *= 8
        if block > 1 << 31:
            raise DataError(f"{csv.name}: a line is longer than 2 GiB")
        side = make()
        with csv.open() as (stream, raw):
            try:
                read_side(csv, stream, raw, side, max_rows, block)
                return side
            except _LongLine:
                continue


def read_side(csv: RawCsv, stream: Any, raw: Any, side: Side, max_rows: int | None, block: int) -> None:
    """Stream one raw CSV into ``side``, block by block."""
    columns, kinds = _kinds(side)
    size = csv.path.stat().st_size
    bar = ProgressBar(size, f"reading {csv.member or csv.path.name}")
    try:
        for batch in pacsv.open_csv(stream, *_options(columns, kinds, block), memory_pool=POOL):
            if max_rows is not None and side.rows + batch.num_rows > max_rows:
                batch = batch.slice(0, max_rows - side.rows)
            _add_batch(batch, side)
            bar.to(raw.tell())
            if max_rows is not None and side.rows >= max_rows:
                break
    except pa.ArrowInvalid as e:
        if "straddl" in str(e):  # "straddling object straddles two block boundaries"
            raise _LongLine() from None
        raise _parse_error(csv, columns, kinds, block, e) from None
    finally:
        bar.close()
    release_memory()
    if side.rows == 0:
        raise DataError(f"{csv.name}: the file has no data rows")


def _add_batch(batch: pa.RecordBatch, side: Side) -> None:
    n, row0 = batch.num_rows, side.rows
    if isinstance(side, Skeleton):
        side.click.append(_label(batch.column("click"), "click", side.name, row0))
        side.conversion.append(_label(batch.column("conversion"), "conversion", side.name, row0))
        keys = batch.column("common_feature_index")
        side.keys.append((row0, keys.indices.to_numpy(zero_copy_only=False).astype(np.int32), keys.dictionary))
    else:
        assert isinstance(side, Common), type(side)  # a side is made as a Skeleton or a Common
        side.key_chunks.append(batch.column("common_feature_index"))
    cells = batch.column("feature_list")
    entries = split_entries(cells, side.codes)
    if isinstance(entries, int):  # a bad row (or -1: somewhere in the block): the first one the message explains
        stop = entries + 1 if entries >= 0 else n
        problems = ((r, entry_problem(cell)) for r, cell in enumerate(cells.slice(0, stop).to_pylist()))
        r, problem = next(
            ((r, p) for r, p in problems if p is not None),
            (max(entries, 0), f"cannot read {cells[max(entries, 0)].as_py()[:80]!r}"),
        )
        raise DataError(
            f"{side.name}: line {row0 + r + 1}: malformed feature_list: {problem} (entries are "
            "field_id\\x02feature_id\\x03value joined by \\x01)"
        )
    side.add(entries, n)


def _parse_error(csv: RawCsv, columns: tuple[str, ...], kinds: dict, block: int, error: pa.ArrowInvalid) -> DataError:
    """A CSV parse error (e.g. a wrong number of fields) as one line naming the file and line."""
    msg = str(error).strip().splitlines()[0]
    bad: list[Any] = []

    def handler(row: Any) -> str:
        bad.append(row)
        return "error"

    try:
        with csv.open() as (stream, _):
            for _ in pacsv.open_csv(stream, *_options(columns, kinds, block, False, handler)):
                pass
    except (pa.ArrowInvalid, DataError):
        pass
    if bad:
        row = bad[0]
        text = row.text if len(row.text) <= 60 else row.text[:57] + "..."
        return DataError(
            f"{csv.name}: line {row.number if row.number is not None else '?'}: {row.actual_columns} "
            f"comma-separated fields where the format has {row.expected_columns} "
            f"({', '.join(columns)}): {text!r}"
        )
    return DataError(f"{csv.name}: cannot be read as raw Ali-CCP ({', '.join(columns)}): {msg}")


def read_split(
    raw: RawSplit, max_len: int, scenario_ids: ScenarioIds, max_rows: int | None, codes: FieldCodes
) -> tuple[Skeleton, Common]:
    """Both files of one split (an archive's members in archive order, in one pass)."""
    skeleton_name, common_name = _names(raw.split)
    if raw.archive is None:
        skeleton_csv, common_csv = raw.csvs()
        with common_csv.open() as (stream, f):
            common = read_csv_side(common_csv, stream, f, lambda: Common(common_csv.name, max_len, scenario_ids, codes))
        with skeleton_csv.open() as (stream, f):
            skeleton = read_csv_side(
                skeleton_csv, stream, f, lambda: Skeleton(skeleton_csv.name, max_len, scenario_ids, codes), max_rows
            )
        return skeleton, common  # type: ignore[return-value]
    sides: dict[str, Side] = {}
    with _archive(raw.archive) as (tar, f):
        for member in tar:
            base = PurePosixPath(member.name).name
            if member.isfile() and base in (skeleton_name, common_name) and base not in sides:
                csv = RawCsv(raw.archive, member.name)
                kind = Skeleton if base == skeleton_name else Common
                sides[base] = read_csv_side(
                    csv,
                    tar.extractfile(member),
                    f,
                    lambda k=kind, c=csv: k(c.name, max_len, scenario_ids, codes),
                    max_rows if kind is Skeleton else None,
                )
    for base in (skeleton_name, common_name):
        if base not in sides:
            raise DataError(f"{raw.archive}: the archive has no {base}")
    return sides[skeleton_name], sides[common_name]  # type: ignore[return-value]


def join_rows(skeleton: Skeleton, common: Common) -> np.ndarray:
    """Row of ``common`` holding each skeleton row's ``common_feature_index`` (one hash lookup per split)."""
    keys = pa.concat_arrays(common.key_chunks) if common.key_chunks else pa.array([], pa.string())
    common.key_chunks = []
    enc = pc.dictionary_encode(keys)
    if len(enc.dictionary) < len(keys):
        idx = enc.indices.to_numpy(zero_copy_only=False)
        _, first = np.unique(idx, return_index=True)
        dup = int(np.setdiff1d(np.arange(len(idx)), first)[0])
        line0 = int(first[idx[dup]]) + 1
        raise DataError(
            f"{common.name}: line {dup + 1}: common_feature_index {keys[dup].as_py()!r} appears "
            f"again (first on line {line0}); keys must be unique"
        )
    dictionaries = [d for _, _, d in skeleton.keys]
    found = pc.index_in(pa.concat_arrays(dictionaries), value_set=keys).fill_null(-1)
    found = found.to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.empty(skeleton.rows, dtype=np.int64)
    offset = 0
    for row0, idx, d in skeleton.keys:
        rows = found[offset : offset + len(d)][idx]
        offset += len(d)
        if (rows < 0).any():
            r = int(np.flatnonzero(rows < 0)[0])
            raise DataError(
                f"{skeleton.name}: line {row0 + r + 1}: common_feature_index {d[idx[r]].as_py()!r} has "
                f"no row in {common.name}"
            )
        out[row0 : row0 + len(idx)] = rows
    skeleton.keys = []
    return out


# -- both splits -> columns ---------------------------------------------------------------------------------
def _texts(keys: np.ndarray) -> pa.Array:
    """Raw feature ids as the texts :func:`encode` sorts (numerically); -1 (absent) is an empty cell."""
    return pa.array(keys.astype(np.int64), mask=keys < 0).cast(pa.string())


def encode_single(
    skel: np.ndarray | None,
    common: np.ndarray | None,
    rows: np.ndarray,
    keep: np.ndarray | None,
    common_weight: np.ndarray,
    min_count: int,
) -> tuple[np.ndarray, int]:
    """Final ids (kept skeleton rows) and vocabulary of one single-valued field; the skeleton's entry wins."""
    if skel is None:  # the usual user-side field: encode the common rows, weighted by their skeleton rows
        if common is None:
            raise ValueError("encode_single: the field has no column in the skeleton nor in the common features")
        keys, inv = np.unique(common, return_inverse=True)
        counts = np.bincount(inv.reshape(-1), weights=common_weight, minlength=len(keys)).astype(np.int64)
        enc = encode([Categories(inv.reshape(-1).astype(np.int32), _texts(keys), counts)], min_count)
        return enc.ids[rows], enc.size
    merged = skel if keep is None else skel[keep]
    if common is not None:
        merged = np.where(merged >= 0, merged, common[rows])
    keys, inv = np.unique(merged, return_inverse=True)
    inv = inv.reshape(-1).astype(np.int32)
    enc = encode([Categories(inv, _texts(keys), np.bincount(inv, minlength=len(keys)))], min_count)
    return enc.ids, enc.size


def encode_sequence(ids: np.ndarray, row_weight: np.ndarray | None, min_count: int) -> tuple[np.ndarray, int]:
    """Ids ``[R, L]`` (raw, PAD-padded) -> ids in sorted order of the raw ids; rare ids share the last id.

    ``row_weight`` counts how many dataset rows each of the ``R`` rows stands for (common-features rows).
    """
    valid = ids != PAD
    keys, inv = np.unique(ids[valid], return_inverse=True)
    inv = inv.reshape(-1)
    weight = None if row_weight is None else np.broadcast_to(row_weight[:, None], ids.shape)[valid]
    counts = np.bincount(inv, weights=weight, minlength=len(keys))
    keep = counts >= min_count
    n_keep = int(keep.sum())
    mapping = np.where(keep, np.cumsum(keep) - 1, n_keep).astype(np.int32)
    out = np.full(ids.shape, PAD, dtype=np.int32)
    out[valid] = mapping[inv]
    other = bool(((~keep) & (counts > 0)).any())
    return out, max(1, n_keep + int(other))


def _order(fields: set[str]) -> list[str]:
    known = USER_FIELDS + ITEM_FIELDS + CONTEXT_FIELDS
    return [f for f in known if f in fields] + sorted(f for f in fields if f not in known)


def _role(name: str) -> Role:
    if name in USER_FIELDS or name in SEQUENCE_FIELDS:
        return "user"
    return "item" if name in ITEM_FIELDS else "context"


def build_raw(
    layout: dict[str, RawSplit], settings: dict[str, Any], tasks: list[str]
) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
    """Read both splits, join, encode; the ``ali_ccp`` schema and columns of the raw layout."""

    s = settings
    max_len, min_count = int(s["max_len"]), int(s["min_count"])
    given = s["scenario_values"]
    scenario_ids = ScenarioIds(None if given is None else tuple(int(v) for v in given))
    codes = FieldCodes()
    parts = [read_split(layout[split], max_len, scenario_ids, s["max_rows"], codes) for split in SPLITS]
    skeletons, commons = [p[0] for p in parts], [p[1] for p in parts]
    rows_of = np.array([k.rows for k in skeletons])
    starts = np.r_[0, np.cumsum(rows_of)]
    common_starts = np.r_[0, np.cumsum([c.rows for c in commons])]
    crow = np.concatenate([join_rows(k, c) + common_starts[i] for i, (k, c) in enumerate(parts)])

    def where(row: int) -> str:  # a dataset row (before dropping) as file: line
        i = int(np.searchsorted(starts, row, "right") - 1)
        return f"{skeletons[i].name}: line {row - starts[i] + 1}"

    click = np.concatenate([np.concatenate(k.click) for k in skeletons])
    conversion = np.concatenate([np.concatenate(k.conversion) for k in skeletons])
    for k in skeletons:
        k.click, k.conversion = [], []
    orphan = (conversion == 1) & (click == 0)
    dropped = int(orphan.sum())
    keep = ~orphan if dropped else None
    if dropped:
        log.warning(
            "ali_ccp: dropped %d skeleton row(s) with conversion=1 and click=0 (first: %s)",
            dropped,
            where(int(np.flatnonzero(orphan)[0])),
        )
    official = np.repeat(np.array([0, 2], dtype=np.int8), rows_of)
    rows = crow if keep is None else crow[keep]
    del crow
    common_weight = np.bincount(rows, minlength=int(common_starts[-1])).astype(np.float64)

    def kept(a: np.ndarray) -> np.ndarray:
        return a if keep is None else a[keep]

    def stacked(sides: Sequence[Side], get: Any) -> np.ndarray | None:
        got = [get(x) for x in sides]
        if all(g is None for g in got):
            return None
        dtype = np.result_type(*[g for g in got if g is not None])
        return np.concatenate([g if g is not None else np.full(x.rows, -1, dtype=dtype) for g, x in zip(got, sides)])

    out: dict[str, np.ndarray] = {}
    features: list[Feature] = []
    # the scenario: the skeleton row's field 301 where it has one, else its common-features row's
    scen_k, scen_c = stacked(skeletons, Side.scenario), stacked(commons, Side.scenario)
    if scen_k is None and scen_c is None:
        raise DataError(f"{skeletons[0].name}: no field {SCENARIO_FIELD} (the scenario) in the raw files")
    scen = kept(scen_k) if scen_k is not None else np.full(len(rows), -1, dtype=np.int64)
    if scen_c is not None:
        scen = np.where(scen >= 0, scen, scen_c[rows])
    if (scen < 0).any():
        r = int(np.flatnonzero(scen < 0)[0])
        raise DataError(
            f"{where(r if keep is None else int(np.flatnonzero(keep)[r]))}: the row has no field "
            f"{SCENARIO_FIELD} (the scenario), neither in the skeleton nor in its common features"
        )
    del scen_k, scen_c
    scen = scenario_ids.index(scen)
    values = scenario_ids.known

    fields = set().union(*[x.singles for x in skeletons + commons]) - {SCENARIO_FIELD}
    for name in _order(fields | {SCENARIO_FIELD}):
        if name == SCENARIO_FIELD:
            out[name] = scen.astype(np.int32)
            features.append(Feature(name, "categorical", len(values), "context"))
            continue
        skel = stacked(skeletons, lambda x, n=name: x.single(n))
        common = stacked(commons, lambda x, n=name: x.single(n))
        out[name], size = encode_single(skel, common, rows, keep, common_weight, min_count)
        del skel, common
        release_memory()
        features.append(Feature(name, "categorical", size, _role(name)))
    seq_fields = set().union(*[x.seqs for x in skeletons + commons])
    for name in [f for f in SEQUENCE_FIELDS if f in seq_fields]:
        got_k = [x.sequence(name) for x in skeletons]
        got_c = [x.sequence(name) for x in commons]
        ids_c: np.ndarray | None = None
        weights_c: np.ndarray | None = None
        if any(g is not None for g in got_c):
            ids_c = np.concatenate(
                [g[0] if g else np.full((x.rows, max_len), PAD, np.int64) for g, x in zip(got_c, commons)]
            )
            weights_c = np.concatenate(
                [g[1] if g else np.zeros((x.rows, max_len), np.float32) for g, x in zip(got_c, commons)]
            )
        del got_c
        if all(g is None for g in got_k):  # the usual case: the user's sequences live in common features
            # a field of seq_fields that no skeleton has: some common-features file has it
            assert ids_c is not None and weights_c is not None
            mapped, size = encode_sequence(ids_c, common_weight, min_count)
            out[name], out[weights_column(name)] = mapped[rows], weights_c[rows]
        else:
            ids_k = kept(
                np.concatenate(
                    [g[0] if g else np.full((x.rows, max_len), PAD, np.int64) for g, x in zip(got_k, skeletons)]
                )
            )
            weights_k = kept(
                np.concatenate(
                    [g[1] if g else np.zeros((x.rows, max_len), np.float32) for g, x in zip(got_k, skeletons)]
                )
            )
            if ids_c is not None and weights_c is not None:  # set together
                own = (ids_k != PAD).any(axis=1)
                ids_k = np.where(own[:, None], ids_k, ids_c[rows])
                weights_k = np.where(own[:, None], weights_k, weights_c[rows])
            out[name], size = encode_sequence(ids_k, None, min_count)
            out[weights_column(name)] = weights_k
        del ids_c, weights_c, got_k
        release_memory()
        features.append(Feature(name, "sequence", size, "user", max_len=max_len, weights=True))

    click_f, conversion_f = kept(click).astype(np.float32), kept(conversion).astype(np.float32)
    out.update(funnel_labels(tasks, click_f, conversion_f, None, "conversion", "ignore"))
    part = kept(official)
    train = np.flatnonzero(part == 0)
    n_valid = max(1, round(float(s["valid_fraction"]) * len(train))) if len(train) > 1 else 0
    part[train[np.random.default_rng(int(s["split_seed"])).permutation(len(train))[:n_valid]]] = 1
    out["split_part"] = part
    names = [f.name for f in features]
    for field in (s["scenario_field"], s["user_field"], s["item_field"]):
        if field is not None and field not in names:
            raise ConfigError(f"ali_ccp: field {field!r} is not a feature of the raw files (fields: {names})")
    schema = DatasetSchema(
        name="ali_ccp",
        features=features,
        tasks=list(tasks),
        user_field=s["user_field"],
        item_field=s["item_field"],
        scenario_field=s["scenario_field"],
        analysis_fields=["split_part"],
        conditional_tasks={"cvr": "ctr"} if "cvr" in tasks else {},
        task_roles=funnel_roles(tasks),
        auto_split="column:split_part",
        scenario_labels=[f"B{i + 1}" for i in range(len(values))] if s["scenario_field"] == SCENARIO_FIELD else [],
        stats={"skeleton_rows": int(len(click)), DROPPED: dropped},
    )
    schema.validate(out, source=str(layout["train"].archive or layout["train"].csvs()[0].path.parent))
    return schema, out
