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

- Each file is read in blocks of whole lines (``RAW_BLOCK_SIZE`` bytes, more when a line is longer), parsed on
  a pool of threads in numpy over the block's bytes (never a Python loop over lines): one pass finds the
  separators, every entry is checked (a field id, the digits of a feature id, a decimal value) and the numbers
  are read eight digits at a time from 64-bit words. A block holding anything else (another number format,
  ``\\r\\n`` line ends, long keys, ...) is read by pyarrow's CSV reader instead, which decides what is valid and
  names the line of an error: both ways accept the same files and give the same columns. The skeleton rows are
  joined to their common-features row; a field may come from either file (the skeleton's entry wins when both
  have it). Besides its output columns a build holds the common-features rows (one per request), the
  vocabularies and about 45 bytes per skeleton row (raw ids, key, labels) until every file is read, since ids
  follow the sorted order of all raw ids; the output columns are then filled block by block. While a cache
  entry is built, the output columns are the regions of the entry's Arrow file itself
  (:func:`mtlbench.data.cache.entry_columns`: each column is written once) and those per-row bytes are
  disk-backed (:mod:`mtlbench.data.spill`), so anonymous memory holds the blocks in flight, the
  common-features rows and the vocabularies, whatever the number of skeleton rows. While a build runs, malloc
  keeps the memory numpy frees for the next block (:func:`reused_heap`: no page faults on fresh memory).
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

import ctypes
import math
import mmap
import tarfile
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mtlbench.data import spill
from mtlbench.data.cache import entry_columns
from mtlbench.data.schema import PAD, DatasetSchema, Feature, Role, weights_column
from mtlbench.datasets.csv_reading import POOL, release_memory
from mtlbench.datasets.funnel import funnel_labels, funnel_roles
from mtlbench.datasets.progress import ProgressBar
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
#: bytes read and parsed at a time (whole lines: more when a line is longer); a block's temporary arrays take
#: about 30 times its size (1-4 MB blocks parse equally fast here; 16 MB ones use more memory for nothing)
RAW_BLOCK_SIZE = 4 << 20
#: raw-id ranges up to this many ids are counted and re-indexed through a dense table (else sorted keys)
DENSE_IDS = 1 << 23
#: a skeleton's parsed blocks are merged up to this many rows (fewer Python steps per row afterwards)
MERGE_ROWS = 1 << 16
#: output columns of this many bytes or more are allocated populated (see _allocate)
POPULATE_BYTES = 1 << 20
#: rows validated at a time (``DatasetSchema.validate``'s temporaries are a few bytes per id)
VALIDATE_ROWS = 1 << 20
#: common-features rows whose sequences are counted or encoded at a time (temporaries ~50 bytes per id)
SEQUENCE_ROWS = 1 << 16

T = TypeVar("T")


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


# -- exact lookups of 64-bit keys ---------------------------------------------------------------------------
_MULTIPLIERS = tuple(
    np.uint64(m)
    for m in (
        0x9E3779B97F4A7C15,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0xD6E8FEB86659FD93,
        0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53,
        0x94D049BB133111EB,
        0xBF58476D1CE4E5B9,
    )
)


def _distinct(x: np.ndarray) -> np.ndarray:
    """The distinct values of ``x``, sorted (one sort: faster than ``np.unique``'s general path)."""
    s = np.sort(x)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


class KeyIndex:
    """Position of each uint64 key in a sorted array of distinct keys, or its ``values`` entry (-1 when absent).

    A few distinct keys (field ids, entry values) are looked up through a multiplicative hash into a table
    without collisions: five vectorised steps per key where a binary search costs ~30 ns. More keys (or no
    such table found) go through ``np.searchsorted``.
    """

    def __init__(self, keys: np.ndarray, values: np.ndarray | None = None, max_bits: int = 18) -> None:
        self.keys = keys
        self.values = np.arange(len(keys)) if values is None else values.astype(np.int64)
        self._shift: np.uint64 | None = None
        n = len(keys)
        bits = max(4, (2 * n * n).bit_length())  # ~80% of multipliers give no collision at this size
        if not n or bits > max_bits:
            return
        for mult in _MULTIPLIERS:
            slot = (keys * mult) >> np.uint64(64 - bits)
            if len(_distinct(slot)) == n:
                self._mult, self._shift = mult, np.uint64(64 - bits)
                self._value = np.full(1 << bits, -1, dtype=np.int64)
                self._value[slot] = self.values
                self._key = np.zeros(1 << bits, dtype=np.uint64)
                self._key[slot] = keys
                return

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._shift is not None:
            slot = (x * self._mult) >> self._shift
            return np.where(self._key[slot] == x, self._value[slot], -1)
        if not len(self.keys):
            return np.full(len(x), -1, dtype=np.int64)
        pos = np.searchsorted(self.keys, x).clip(0, len(self.keys) - 1)
        return np.where(self.keys[pos] == x, self.values[pos], -1)


class GrowingKeys:
    """The uint64 keys met so far (up to ``limit``), shared by the parsing threads.

    :meth:`index` adds the new keys of ``x`` and gives each one's position in the sorted known keys; the
    positions of one call come from one :class:`KeyIndex`, which it returns too.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._index = KeyIndex(np.zeros(0, dtype=np.uint64))
        self._lock = threading.Lock()

    def index(self, x: np.ndarray) -> tuple[np.ndarray, KeyIndex]:
        index = self._index
        pos = index(x)
        if len(pos) and pos.min() < 0:
            with self._lock:
                index = self._index
                new = x[index(x) < 0]
                if len(new):
                    index = KeyIndex(_distinct(np.concatenate([index.keys, new])))
                    if len(index.keys) <= self.limit:  # else this call alone uses it
                        self._index = index
            pos = index(x)
        return pos, index


_SIGN = np.uint64(1 << 63)


def _sortable(value: np.ndarray) -> np.ndarray:
    """float64 -> uint64 in the same order (-0.0 as 0.0)."""
    bits = (value + 0.0).view(np.uint64)
    return np.where(bits >= _SIGN, ~bits, bits | _SIGN)


def _unsortable(key: np.ndarray) -> np.ndarray:
    return np.where(key >= _SIGN, key & ~_SIGN, ~key).view(np.float64)


class FieldCodes:
    """Codes of the field ids seen so far, shared by every file and parsing thread of one build.

    A field id of up to 8 bytes is looked up by its bytes packed into one integer (:class:`KeyIndex`: no
    Python per entry); longer ones by their text. ``slot[code]`` is the field's place in ``SEQUENCE_FIELDS``
    (-1: a single-valued field); it is replaced, never changed in place, so a reader's copy stays valid.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.slot = np.zeros(0, dtype=np.int8)
        self._code: dict[str, int] = {}
        self._lock = threading.RLock()
        self._packed = KeyIndex(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))

    def code(self, name: str) -> int:
        with self._lock:
            if name not in self._code:
                self._code[name] = len(self.names)
                self.names.append(name)
                slot = SEQUENCE_FIELDS.index(name) if name in SEQUENCE_FIELDS else -1
                self.slot = np.append(self.slot, np.int8(slot))
            return self._code[name]

    def of_keys(self, keys: np.ndarray) -> np.ndarray:
        """Codes of packed field ids (the id's bytes in the top bytes of a little-endian word)."""
        codes = self._packed(keys)
        if len(codes) and codes.min() < 0:
            with self._lock:
                index = self._packed
                new = _distinct(keys[index(keys) < 0])
                if len(new):
                    names = [int(k).to_bytes(8, "little").lstrip(b"\0").decode("utf-8", "replace") for k in new]
                    added = np.array([self.code(name) for name in names], dtype=np.int64)
                    every = np.concatenate([index.keys, new])
                    order = np.argsort(every)
                    self._packed = index = KeyIndex(every[order], np.concatenate([index.values, added])[order])
            codes = index(keys)
        return codes

    def of_texts(self, texts: pa.Array) -> np.ndarray:
        enc = pc.dictionary_encode(texts)
        lut = np.array([self.code(t) for t in enc.dictionary.to_pylist()], dtype=np.int16)
        return lut[enc.indices.to_numpy(zero_copy_only=False)]


@dataclass
class Parsed:
    """One block of one raw CSV: per row the raw id of each single-valued field present in the block (-1:
    the row lacks it), the behaviour sequences (raw ids PAD-padded, float32 weights), the keys and labels."""

    rows: int
    singles: dict[str, np.ndarray]
    seqs: dict[str, tuple[np.ndarray, np.ndarray]]
    keys: pa.Array | None  # common_feature_index: one per row, or (skeleton) one per run of equal keys
    key_of_row: np.ndarray | None = None  # skeleton: each row's index into ``keys``
    click: np.ndarray | None = None  # skeleton: int8 labels
    conversion: np.ndarray | None = None
    crow: np.ndarray | None = None  # skeleton, once joined: each row's common-features row
    kept: np.ndarray | None = None  # skeleton, once joined: the rows kept (not a conversion without click)
    scenario: np.ndarray | None = None  # skeleton, once joined: each row's scenario (int8, -1: dropped row)

    def stowed(self) -> Parsed:
        """The block with its per-row arrays on disk while a cache entry is built (:func:`mtlbench.data.spill.stow`):
        a build holds every skeleton row until all files are read, and this keeps that off anonymous memory."""
        singles = {f: spill.stow(v) for f, v in self.singles.items()}
        seqs = {f: (spill.stow(i), spill.stow(w)) for f, (i, w) in self.seqs.items()}
        rows = [None if a is None else spill.stow(a) for a in (self.key_of_row, self.click, self.conversion)]
        return Parsed(self.rows, singles, seqs, self.keys, *rows)

    def head(self, n: int) -> Parsed:
        """The first ``n`` rows (fields without an entry there are left out)."""
        singles = {f: v[:n] for f, v in self.singles.items() if (v[:n] >= 0).any()}
        seqs = {f: (i[:n], w[:n]) for f, (i, w) in self.seqs.items() if (i[:n] != PAD).any()}
        keys = self.keys if self.key_of_row is not None or self.keys is None else self.keys.slice(0, n)
        cut = [None if a is None else a[:n] for a in (self.key_of_row, self.click, self.conversion)]
        return Parsed(n, singles, seqs, keys, *cut)


def _narrow(ids: np.ndarray) -> np.ndarray:
    """Raw ids (>= -1) as int32 when they fit: half the memory of the rows held until every file is read (on disk
    while a cache entry is built, :mod:`mtlbench.data.spill`)."""
    if ids.dtype == np.int32 or (len(ids) and int(ids.max()) >= 2**31):
        return ids
    out = spill.empty(ids.shape, np.int32)
    out[...] = ids
    return out


# -- one block of lines -> per-row raw ids, vectorised over its bytes ------------------------------------------
_PAD = 16  # zero bytes before (and after) a block's bytes, so every 16-byte window ending in it is readable
_ZEROS = np.uint64(0x3030303030303030)  # eight '0' characters
#: _TOP[k]: the top k bytes of a little-endian word (the last k bytes before a window's end)
_TOP = np.array([0] + [((1 << 8 * k) - 1) << (64 - 8 * k) for k in range(1, 9)], dtype=np.uint64)
_FILL = _ZEROS & ~_TOP  # '0' in the other bytes
_HIGH = np.uint64(0x8080808080808080)  # the top bit of every byte
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_TEN_UP = np.uint64(0x7676767676767676)  # added to digit values, sets a byte's top bit from 10 up
_DOT = np.uint64(0x1E1E1E1E1E1E1E1E)  # '.' XOR '0' in every byte
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)
#: _BIT_OF[(b * _DE_BRUIJN) >> 58] = k for b = 2**k
_BIT_OF = np.zeros(64, dtype=np.int64)
_BIT_OF[((np.uint64(1) << np.arange(64, dtype=np.uint64)) * _DE_BRUIJN) >> np.uint64(58)] = np.arange(64)
_POW10 = np.array([10**k for k in range(17)], dtype=np.uint64)
_POW10F = np.array([float(10**k) for k in range(17)])
_NL, _COMMA, _STX, _DOT_CHAR = 10, 44, 2, 46
#: bytes below '-' are the separators (\x01 \x02 \x03 \n ,); any other one sends a block to pyarrow
_SEPARATOR_BELOW = 0x2D
#: separator pairs (first | second << 8) of well-formed lines: ",," ",\x02" ",\n" "\n," "\x02\x03" "\x03\x01"
#: "\x03\n" "\x01\x02"
_NEXT = np.zeros(1 << 16, dtype=bool)
for _a, _b in ((44, 44), (44, 2), (44, 10), (10, 44), (2, 3), (3, 1), (3, 10), (1, 2)):
    _NEXT[_a | _b << 8] = True


def _words(padded: np.ndarray) -> np.ndarray:
    """Every 8-byte window of ``padded`` as one uint64 (an unaligned view, no copy): ``w[i] = padded[i:i+8]``."""
    return np.ndarray(shape=(len(padded) - 7,), dtype=np.uint64, buffer=padded, strides=(1,))


def _pairs(code: np.ndarray) -> np.ndarray:
    """``code[i] | code[i + 1] << 8`` for every i (an unaligned uint16 view of the uint8 array, no copy)."""
    return np.ndarray(shape=(len(code) - 1,), dtype=np.uint16, buffer=code, strides=(1,))


def _window(w: np.ndarray, ends: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The ``lens`` (0..8) bytes before each padded end as digit values (byte XOR '0'), 0 in the other bytes,
    the first byte in the lowest: ``"2.3979"`` -> 0, 0, 2, 0x1e, 3, 9, 7, 9."""
    return (w[ends] ^ _ZEROS) & _TOP[lens]


def _not_digits(x: np.ndarray) -> np.ndarray:
    """Non-zero where a byte of ``x`` (digit values) is not 0..9."""
    return ((x + _TEN_UP) | x) & _HIGH


def _zero_bytes(x: np.ndarray) -> np.ndarray:
    """0x80 in each zero byte of ``x``, 0 elsewhere (exact: no carry between bytes)."""
    return ~(((x & _LOW7) + _LOW7) | x | _LOW7)


def _eight_digits(x: np.ndarray) -> np.ndarray:
    """The number written by the eight digit values of each word, most significant in the lowest byte (SWAR,
    as fast_float's ``parse_eight_digits_unrolled``)."""
    x = x * np.uint64(10) + (x >> np.uint64(8))
    mask = np.uint64(0x000000FF000000FF)
    x = (x & mask) * np.uint64(0x000F424000000064) + ((x >> np.uint64(16)) & mask) * np.uint64(0x0000271000000001)
    return (x >> np.uint64(32)) & np.uint64(0xFFFFFFFF)


def _number(lo: np.ndarray, hi: np.ndarray | None) -> np.ndarray:
    """The integer written by up to 16 digit values: ``hi`` the first 8 (None: none), ``lo`` the last 8."""
    n = _eight_digits(lo)
    return n if hi is None else _eight_digits(hi) * np.uint64(10**8) + n


def _dot_places(dots: np.ndarray) -> np.ndarray:
    """Digits after the '.' of each window holding one (0x80 in its byte, see _zero_bytes): 7 - its byte."""
    return 7 - (_BIT_OF[(dots * _DE_BRUIJN) >> np.uint64(58)] >> 3)


@dataclass
class _Digits:
    """The feature ids or the values of a block's entries as digit-value windows (see :func:`_window`)."""

    lo: np.ndarray
    hi: np.ndarray | None  # None: every one fits in ``lo``
    dots: np.ndarray | None = None  # values: 0x80 in the byte of the '.' (read as a 0) in ``lo``, else 0
    hi_dots: np.ndarray | None = None  # ... in ``hi``

    def integers(self, at: np.ndarray) -> np.ndarray:
        return _number(self.lo[at], None if self.hi is None else self.hi[at]).astype(np.int64)

    def decimals(self, at: np.ndarray) -> np.ndarray:
        """The values at ``at``: m / 10**places with m exact (< 2**53): IEEE division rounds it correctly,
        so the float64 is the one pyarrow's (correctly rounded) parser gives."""
        assert self.dots is not None
        n = _number(self.lo[at], None if self.hi is None else self.hi[at])  # the '.' read as a 0
        dots = self.dots[at]
        places = np.where(dots != 0, _dot_places(dots), 0)
        if self.hi_dots is not None:
            hi_dots = self.hi_dots[at]
            places = np.where(hi_dots != 0, _dot_places(hi_dots) + 8, places)
            dots = dots | hi_dots
        p = _POW10[places]
        m = np.where(dots != 0, n // (p * np.uint64(10)) * p + n % p, n)
        return m.astype(np.float64) / _POW10F[places]


def _ids_of(w: np.ndarray, ends: np.ndarray, lens: np.ndarray) -> _Digits | None:
    """Feature ids (1..16 digits) ending at ``ends``; None when one has another character."""
    lo = _window(w, ends + (_PAD - 8), np.minimum(lens, 8))
    bad = _not_digits(lo)
    hi = None
    if len(lens) and lens.max() > 8:
        hi = _window(w, ends + (_PAD - 16), np.maximum(lens - 8, 0))
        bad |= _not_digits(hi)
    return None if bad.any() else _Digits(lo, hi)


def _values_of(body: np.ndarray, w: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> _Digits | None:
    """Values ``body[starts:ends]`` (1..15 characters: digits, at most one '.', neither first nor last); None
    for another form."""
    lens = ends - starts
    if len(lens) and ((body[starts] == _DOT_CHAR).any() or (body[ends - 1] == _DOT_CHAR).any()):
        return None
    lo = _window(w, ends + (_PAD - 8), np.minimum(lens, 8))
    dots = _zero_bytes(lo ^ _DOT)  # 0x80 at a '.'
    bad = dots & (dots - np.uint64(1))  # two of them
    lo ^= (dots >> np.uint64(7)) * np.uint64(0x1E)  # the '.' read as a 0
    bad |= _not_digits(lo)
    hi = hi_dots = None
    if len(lens) and lens.max() > 8:
        hi = _window(w, ends + (_PAD - 16), np.maximum(lens - 8, 0))
        hi_dots = _zero_bytes(hi ^ _DOT)
        bad |= (hi_dots & (hi_dots - np.uint64(1))) | np.where(dots != 0, hi_dots, np.uint64(0))
        hi ^= (hi_dots >> np.uint64(7)) * np.uint64(0x1E)
        bad |= _not_digits(hi)
    return None if bad.any() else _Digits(lo, hi, dots, hi_dots)


def _substrings(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.StringArray:
    """The byte ranges ``data[starts[i]:ends[i]]`` as one arrow string array (one gather, no Python loop)."""
    lens = ends - starts
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    idx = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - starts, lens)
    return pa.StringArray.from_buffers(len(lens), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data[idx]))


def fast_block(buf: np.ndarray, skeleton: bool, codes: FieldCodes, ranks: GrowingKeys, max_len: int) -> Parsed | None:
    """Parse a block of whole lines (``buf``: the bytes with _PAD zero bytes on each side) in numpy.

    Takes the usual form only: no empty line, the format's number of columns, labels ``0`` / ``1``, keys of up
    to 16 ASCII characters, entries ``field \\x02 id \\x03 value`` with a field id of 1-8 ASCII characters, an id
    of 1-16 digits and a value of 1-15 digits with at most one '.' inside. None for anything else: pyarrow's
    reader then decides (:func:`arrow_block`), so this path never accepts what that one would reject.
    """
    commas = 5 if skeleton else 2
    body = buf[_PAD : len(buf) - _PAD]
    pos = np.flatnonzero(body < _SEPARATOR_BELOW)  # every separator: one pass over the bytes
    code = body[pos]
    if len(code) <= commas or code[0] != _COMMA or code[-1] != _NL or not _NEXT[_pairs(code)].all():
        return None
    if body.max() > 0x7F:
        return None  # not ASCII: pyarrow checks the UTF-8 of keys and field ids
    nl = np.flatnonzero(code == _NL)
    first = np.empty_like(nl)  # each line's first separator
    first[0] = 0
    first[1:] = nl[:-1] + 1
    count = nl - first
    if count.min() < commas or (code[first + commas - 1] != _COMMA).any() or (code[first + commas] == _COMMA).any():
        return None  # the commas come first in a line (_NEXT): exactly ``commas`` of them
    n = len(nl)
    w = _words(buf)
    comma = pos[first]
    click = conversion = key_of_row = None
    if skeleton:  # sample_id,click,conversion,common_feature_index,...
        second, third, fourth = pos[first + 1], pos[first + 2], pos[first + 3]
        if (second - comma != 2).any() or (third - second != 2).any():
            return None
        click, conversion = body[comma + 1] - np.uint8(48), body[second + 1] - np.uint8(48)
        if click.max() > 1 or conversion.max() > 1:
            return None
        click, conversion = click.view(np.int8), conversion.view(np.int8)
        starts, ends = third + 1, fourth
    else:  # common_feature_index,...
        starts = np.empty_like(comma)
        starts[0] = 0
        starts[1:] = pos[nl[:-1]] + 1
        ends = comma
    klen = ends - starts
    if klen.max() > 16:
        return None
    if skeleton:  # one key per run of equal keys (the impressions of one request come together)
        lo = w[ends + (_PAD - 8)] & _TOP[np.minimum(klen, 8)]
        hi = w[ends + (_PAD - 16)] & _TOP[np.maximum(klen - 8, 0)]
        new = np.ones(n, dtype=bool)
        new[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1]) | (klen[1:] != klen[:-1])
        runs = np.flatnonzero(new)
        keys = _substrings(body, starts[runs], ends[runs])
        key_of_row = np.cumsum(new, dtype=np.int32) - 1
    else:
        keys = _substrings(body, starts, ends)
    # -- entries: the separators around each \x02
    at = np.flatnonzero(code == _STX)
    row = np.repeat(np.arange(n, dtype=np.int64), (count - commas + 1) // 3)  # a line: commas, then 3 per entry
    before, stx, etx, after = pos[at - 1], pos[at], pos[at + 1], pos[at + 2]
    flen, ilen, vlen = stx - before - 1, etx - stx - 1, after - etx - 1
    if len(at) and (
        min(flen.min(), ilen.min(), vlen.min()) < 1 or flen.max() > 8 or ilen.max() > 16 or vlen.max() > 15
    ):
        return None
    fkey = w[stx + (_PAD - 8)] & _TOP[flen]
    ids = _ids_of(w, etx, ilen)
    values = _ValueReader.of(body, w, etx + 1, after)
    if ids is None or values is None:
        return None
    singles, seqs = group_entries(n, row, codes.of_keys(fkey), codes, ids.integers, values.decimals, ranks, max_len)
    return Parsed(n, singles, seqs, keys, key_of_row, click, conversion)


@dataclass
class _ValueReader:
    """The values of a block's entries, checked: one-character ones (a skeleton's ``1``) byte by byte, the
    others as digit windows (:func:`_values_of`), so a skeleton, which reads none of its values, reads no window
    for most of them."""

    digit: np.ndarray  # the one-character values' digit (0-9), 0 for the others
    longer: np.ndarray  # the place of each value among the longer ones (-1: one character)
    windows: _Digits | None  # the longer ones

    @classmethod
    def of(cls, body: np.ndarray, w: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> _ValueReader | None:
        """The values ``body[starts:ends]`` (the form of :func:`_values_of`), None for another form."""
        one = ends - starts == 1
        digit = np.where(one, body[starts] - np.uint8(48), np.uint8(0))
        if digit.max(initial=0) > 9:
            return None  # a one-character value that is not a digit (a '.', ...)
        at = np.flatnonzero(~one)
        windows = _values_of(body, w, starts[at], ends[at]) if len(at) else None
        if len(at) and windows is None:
            return None
        longer = np.full(len(starts), -1, dtype=np.int64)
        longer[at] = np.arange(len(at))
        return cls(digit, longer, windows)

    def decimals(self, at: np.ndarray) -> np.ndarray:
        """The values at ``at`` (float64, exactly as :meth:`_Digits.decimals` reads them)."""
        longer = self.longer[at]
        some = longer >= 0
        if self.windows is not None and some.all():  # (a common-features file's behaviour values)
            return self.windows.decimals(longer)
        out = self.digit[at].astype(np.float64)
        if some.any():
            assert self.windows is not None
            out[some] = self.windows.decimals(longer[some])
        return out


# -- entries -> per-row raw ids ---------------------------------------------------------------------------------
def group_entries(
    n: int,
    row: np.ndarray,
    field: np.ndarray,
    codes: FieldCodes,
    ids_at: Callable[[np.ndarray], np.ndarray],
    values_at: Callable[[np.ndarray], np.ndarray],
    ranks: GrowingKeys,
    max_len: int,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The entries of a block of ``n`` rows (in row order: ``row``, field code ``field``) as per-row columns.

    A single-valued field keeps its first entry per row; a behaviour field its ``max_len`` largest values.
    ``ids_at`` / ``values_at`` give the feature ids / values of the entries at some positions: only those
    are read.
    """
    slot_of = codes.slot  # (a copy that other threads do not change)
    slot = slot_of[field]
    single = slot < 0
    table = _first_entries(row, field, single, n, len(slot_of))
    present = np.flatnonzero(np.bincount(field, minlength=len(slot_of)))
    single_codes = present[slot_of[present] < 0]
    singles: dict[str, np.ndarray] = {}
    if len(single_codes):
        firsts = table[single_codes]
        has = firsts >= 0
        raw = np.full(firsts.shape, -1, dtype=np.int64)
        raw[has] = ids_at(firsts[has])
        singles = {codes.names[c]: _narrow(col) for c, col in zip(single_codes.tolist(), raw)}
    seqs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    at = np.flatnonzero(~single)
    if len(at):
        seqs = _top_sequences(slot[at], row[at], ids_at(at), values_at(at), n, max_len, ranks)
    return singles, seqs


def _first_entries(row: np.ndarray, field: np.ndarray, single: np.ndarray, n: int, n_codes: int) -> np.ndarray:
    """``[n_codes, n]``: the position of the first entry of each (field, row) among the ``single`` ones, -1
    where the row has none.

    The first entry of each run of equal (row, field) is written to its cell; a cell written twice (the field
    listed again further on in its row) is settled by sorting (cell, position) keys.
    """
    m = len(row)
    start = np.ones(m, dtype=bool)
    if m > 1:
        start[1:] = (field[1:] != field[:-1]) | (row[1:] != row[:-1])
    start &= single
    first = np.flatnonzero(start)
    cell = field[first].astype(np.int64) * n + row[first]
    table = np.full(n_codes * n, -1, dtype=np.int64)
    table[cell] = first
    if not (table[cell] == first).all():
        if len(first) < 1 << 24 and n_codes * n < 1 << 40:
            key = np.sort(cell.astype(np.uint64) << np.uint64(24) | np.arange(len(first), dtype=np.uint64))
            cell, at = (key >> np.uint64(24)).astype(np.int64), (key & np.uint64(0xFFFFFF)).astype(np.int64)
            lead = np.r_[True, cell[1:] != cell[:-1]]
            table[cell[lead]] = first[at[lead]]
        else:
            cells, at = np.unique(cell, return_index=True)
            table[cells] = first[at]
    return table.reshape(n_codes, n)


def _top_sequences(
    slot: np.ndarray, row: np.ndarray, fid: np.ndarray, value: np.ndarray, n: int, max_len: int, ranks: GrowingKeys
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per behaviour field and row: the ids of its entries, larger value first (ties: smaller id first), the
    first ``max_len`` of them, PAD-padded, and their values as float32 weights.

    One sort of 64-bit keys (field and row, rank of the value, id) when they fit, else a lexsort.
    """
    group = slot.astype(np.int64) * n + row
    fmin = int(fid.min())
    bits_g, bits_f = int(group.max()).bit_length(), int(fid.max() - fmin).bit_length()
    packed = not np.signbit(value).any()  # (a -0.0 keeps its sign through the lexsort)
    if packed:
        pos, index = ranks.index(_sortable(value))
        known = len(index.keys)
        bits_v = max(known - 1, 0).bit_length()
        packed = bits_g + bits_v + bits_f <= 64
    if packed:
        below = np.uint64(bits_v + bits_f)
        key = group.astype(np.uint64) << below
        key |= (known - 1 - pos).astype(np.uint64) << np.uint64(bits_f)  # larger values first
        key |= (fid - fmin).astype(np.uint64)
        key.sort(kind="stable")  # equal keys are equal entries; timsort takes the rows' order: ~2x quicksort
        group = (key >> below).astype(np.int64)
        rank = ((key >> np.uint64(bits_f)) & np.uint64((1 << bits_v) - 1)).astype(np.int64)
        weight = _unsortable(index.keys)[known - 1 - rank].astype(np.float32)
        fid = (key & np.uint64((1 << bits_f) - 1)).astype(np.int64) + fmin
    else:
        order = np.lexsort((fid, -value, group))
        group, fid, weight = group[order], fid[order], value[order].astype(np.float32)
    m = len(group)
    lead = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    place = np.arange(m) - np.repeat(lead, np.diff(np.r_[lead, m]))
    keep = place < max_len
    group, place = group[keep], place[keep]
    ids = np.full((len(SEQUENCE_FIELDS) * n, max_len), PAD, dtype=np.int64)
    weights = np.zeros((len(SEQUENCE_FIELDS) * n, max_len), dtype=np.float32)
    ids[group, place] = fid[keep]
    weights[group, place] = weight[keep]
    present = np.flatnonzero(np.bincount(slot, minlength=len(SEQUENCE_FIELDS)))
    return {SEQUENCE_FIELDS[k]: (ids[k * n : (k + 1) * n], weights[k * n : (k + 1) * n]) for k in present.tolist()}


# -- any other block: pyarrow's CSV reader, the entries split by the general (slower) code ------------------
@dataclass
class Entries:
    """The entries of one block of ``feature_list`` cells, in row order."""

    row: np.ndarray  # int64: the block row of each entry
    field: np.ndarray  # the field's code in the build's FieldCodes
    fid: np.ndarray  # int64 feature ids (>= 0)
    value: np.ndarray  # float64 values


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


def _kinds(skeleton: bool) -> tuple[tuple[str, ...], dict[str, pa.DataType]]:
    if skeleton:
        cat = pa.dictionary(pa.int32(), pa.string())
        return SKELETON_COLUMNS, {
            "click": cat,
            "conversion": cat,
            "common_feature_index": pa.string(),
            "feature_list": pa.string(),
        }
    return COMMON_COLUMNS, {"common_feature_index": pa.string(), "feature_list": pa.string()}


def arrow_block(body: np.ndarray, side: Side) -> list[Parsed]:
    """A block :func:`fast_block` does not take, read by pyarrow's CSV reader (one CSV block: no line
    straddles two); its errors name the file and line."""
    columns, kinds = _kinds(side.skeleton)
    try:
        table = pacsv.read_csv(pa.py_buffer(body), *_options(columns, kinds, len(body) + 1, False), memory_pool=POOL)
    except pa.ArrowInvalid as e:
        raise _parse_error(side, body, columns, kinds, e) from None
    out = []
    row0 = side.rows
    for batch in table.to_batches():
        out.append(_arrow_batch(batch, side, row0))
        row0 += batch.num_rows
    return out


def _arrow_batch(batch: pa.RecordBatch, side: Side, row0: int) -> Parsed:
    n = batch.num_rows
    click = conversion = key_of_row = None
    if side.skeleton:
        click = _label(batch.column("click"), "click", side.name, row0)
        conversion = _label(batch.column("conversion"), "conversion", side.name, row0)
        key_of_row = np.arange(n, dtype=np.int32)
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
    e = entries
    singles, seqs = group_entries(
        n, e.row, e.field, side.codes, lambda at: e.fid[at], lambda at: e.value[at], side.ranks, side.max_len
    )
    return Parsed(n, singles, seqs, batch.column("common_feature_index"), key_of_row, click, conversion)


def _parse_error(
    side: Side, body: np.ndarray, columns: tuple[str, ...], kinds: dict, error: pa.ArrowInvalid
) -> DataError:
    """A CSV parse error (e.g. a wrong number of fields) as one line naming the file and line."""
    msg = str(error).strip().splitlines()[0]
    bad: list[Any] = []

    def handler(row: Any) -> str:
        bad.append(row)
        return "error"

    try:
        pacsv.read_csv(pa.py_buffer(body), *_options(columns, kinds, len(body) + 1, False, handler))
    except (pa.ArrowInvalid, DataError):
        pass
    if bad:
        row = bad[0]
        text = row.text if len(row.text) <= 60 else row.text[:57] + "..."
        line = side.lines + row.number if row.number is not None else "?"
        return DataError(
            f"{side.name}: line {line}: {row.actual_columns} comma-separated fields where the format has "
            f"{row.expected_columns} ({', '.join(columns)}): {text!r}"
        )
    return DataError(f"{side.name}: cannot be read as raw Ali-CCP ({', '.join(columns)}): {msg}")


# -- one file: blocks -> parsed blocks ------------------------------------------------------------------------
@dataclass
class Context:
    """What the files of one build share: the field codes, the entry values met, the scenario ids, the
    sequences' length and the threads parsing blocks (no pool: this one)."""

    max_len: int
    scenario_ids: ScenarioIds
    pool: ThreadPoolExecutor | None = None
    threads: int = 1
    codes: FieldCodes = field(default_factory=FieldCodes)
    ranks: GrowingKeys = field(default_factory=lambda: GrowingKeys(1 << 16))

    @property
    def ahead(self) -> int:
        """Blocks parsed ahead of the one handed over (bounds the memory: ~30x the block size each)."""
        return 2 * self.threads + 1


class Side:
    """The parsed blocks of one raw CSV (a skeleton or a common-features file); the blocks of a skeleton are
    merged into blocks of at least ``MERGE_ROWS`` rows (fewer, larger steps once every file is read)."""

    def __init__(self, name: str, skeleton: bool, ctx: Context) -> None:
        self.name = name
        self.skeleton = skeleton
        self.codes, self.ranks, self.max_len, self.scenario_ids = ctx.codes, ctx.ranks, ctx.max_len, ctx.scenario_ids
        self.blocks: list[Parsed] = []
        self.pending: list[Parsed] = []  # skeleton blocks not merged yet
        self.rows = 0  # data rows so far
        self.lines = 0  # physical lines so far (rows and empty lines)

    def add(self, p: Parsed) -> None:
        scenario = p.singles.get(SCENARIO_FIELD)
        if scenario is not None:  # checked in file order: a 4th distinct value names its line
            at = np.flatnonzero(scenario >= 0)
            self.scenario_ids.check(scenario[at], lambda i: self.rows + int(at[i]) + 1, self.name)
        self.rows += p.rows
        if not self.skeleton:
            self.blocks.append(p.stowed())
            return
        self.pending.append(p)
        if sum(b.rows for b in self.pending) >= MERGE_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.blocks.append(_concat(self.pending, self.max_len).stowed())
            self.pending = []


def _concat(blocks: list[Parsed], max_len: int) -> Parsed:
    """The blocks (of one file, before joining) as one."""
    if len(blocks) == 1:
        return blocks[0]
    singles = {}
    for f in {f for b in blocks for f in b.singles}:
        parts = [b.singles.get(f) for b in blocks]
        filled = [np.full(b.rows, -1) if p is None else p for p, b in zip(parts, blocks)]
        singles[f] = _narrow(spill.concatenate(filled))
    seqs = {}
    for f in {f for b in blocks for f in b.seqs}:
        got = [b.seqs.get(f) for b in blocks]
        ids = [np.full((b.rows, max_len), PAD) if g is None else g[0] for g, b in zip(got, blocks)]
        weights = [np.zeros((b.rows, max_len), np.float32) if g is None else g[1] for g, b in zip(got, blocks)]
        seqs[f] = (_narrow(spill.concatenate(ids)), spill.concatenate(weights))
    keys = pa.concat_arrays([b.keys for b in blocks])
    key_of_row = click = conversion = None
    if blocks[0].key_of_row is not None:  # a skeleton's: indices into the keys, labels
        indices, start = [], 0
        for b in blocks:
            assert b.keys is not None and b.key_of_row is not None
            indices.append(b.key_of_row + start)
            start += len(b.keys)
        key_of_row = np.concatenate(indices).astype(np.int32)
        click = np.concatenate([b.click for b in blocks if b.click is not None])
        conversion = np.concatenate([b.conversion for b in blocks if b.conversion is not None])
    return Parsed(sum(b.rows for b in blocks), singles, seqs, keys, key_of_row, click, conversion)


def _blocks(stream: Any, size: int) -> Iterator[np.ndarray]:
    """The stream's bytes in blocks of whole lines (about ``size`` bytes, more when a line is longer; the last
    line gets its '\\n'), read straight into arrays with _PAD zero bytes before and after the block."""
    carry = np.zeros(0, dtype=np.uint8)  # the start of a line that the last read cut
    while True:
        buf = np.empty(2 * _PAD + len(carry) + max(size, len(carry)) + 1, dtype=np.uint8)
        buf[:_PAD] = 0
        end = _PAD + len(carry)
        buf[_PAD:end] = carry
        got = stream.readinto(buf.data[end : len(buf) - _PAD - 1])
        if got:
            cut = _after_last_line(buf, end, end + got)
            carry = buf[max(cut, _PAD) : end + got].copy()
            if cut < 0:
                continue
            end = cut
        elif len(carry):
            buf[end] = _NL
            end, carry = end + 1, carry[:0]
        else:
            return
        buf[end : end + _PAD] = 0
        yield buf[: end + _PAD]


def _after_last_line(buf: np.ndarray, start: int, end: int) -> int:
    """The position after the last '\\n' of ``buf[start:end]`` (-1: none), looking from the end."""
    step = 1 << 16
    while end > start:
        low = max(start, end - step)
        found = np.flatnonzero(buf[low:end] == _NL)
        if len(found):
            return low + int(found[-1]) + 1
        end, step = low, step * 4
    return -1


def _in_order(pool: ThreadPoolExecutor | None, fn: Callable[[T], Any], items: Iterable[T], ahead: int) -> Iterator[Any]:
    """``(item, fn(item))`` for each item in order, ``fn`` running on ``pool`` up to ``ahead`` items ahead."""
    if pool is None:
        for item in items:
            yield item, fn(item)
        return
    pending: deque[tuple[T, Future]] = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > ahead:
                item, done = pending.popleft()
                yield item, done.result()
        while pending:
            item, done = pending.popleft()
            yield item, done.result()
    finally:
        for _, left in pending:
            left.cancel()


def read_side(csv: RawCsv, stream: Any, raw: Any, side: Side, ctx: Context, max_rows: int | None = None) -> Side:
    """Stream one raw CSV into ``side``: blocks parsed on the context's threads, handed over in file order."""
    bar = ProgressBar(csv.path.stat().st_size, f"reading {csv.member or csv.path.name}")

    def parse(buf: np.ndarray) -> Parsed | None:
        return fast_block(buf, side.skeleton, ctx.codes, ctx.ranks, ctx.max_len)

    try:
        for buf, fast in _in_order(ctx.pool, parse, _blocks(stream, RAW_BLOCK_SIZE), ctx.ahead):
            body = buf[_PAD : len(buf) - _PAD]
            for p in [fast] if fast is not None else arrow_block(body, side):
                if max_rows is not None and side.rows + p.rows > max_rows:
                    p = p.head(max_rows - side.rows)
                side.add(p)
            side.lines += fast.rows if fast is not None else int(np.count_nonzero(body == _NL))
            bar.to(raw.tell())
            if max_rows is not None and side.rows >= max_rows:
                break
    finally:
        bar.close()
    side.flush()
    release_memory()
    if side.rows == 0:
        raise DataError(f"{csv.name}: the file has no data rows")
    return side


@dataclass
class CommonTable:
    """A common-features file as columns, one row per line (request): the raw ids of each single-valued
    field (-1: absent), the behaviour sequences, the keys."""

    name: str
    rows: int
    keys: pa.Array
    singles: dict[str, np.ndarray]
    seqs: dict[str, tuple[np.ndarray, np.ndarray]]

    @classmethod
    def of(cls, side: Side) -> CommonTable:
        """The columns of the side's blocks (handed over)."""
        blocks, side.blocks = side.blocks, []
        p = _concat(blocks, side.max_len)
        singles = {f: _narrow(v) for f, v in p.singles.items()}
        seqs = {f: (_narrow(i), w) for f, (i, w) in p.seqs.items()}
        return cls(side.name, side.rows, p.keys, singles, seqs)


def read_split(raw: RawSplit, ctx: Context, max_rows: int | None) -> tuple[Side, CommonTable]:
    """Both files of one split (an archive's members in archive order, in one pass)."""
    skeleton_name, common_name = _names(raw.split)
    if raw.archive is None:
        skeleton_csv, common_csv = raw.csvs()
        with common_csv.open() as (stream, f):
            common = read_side(common_csv, stream, f, Side(common_csv.name, False, ctx), ctx)
        with skeleton_csv.open() as (stream, f):
            skeleton = read_side(skeleton_csv, stream, f, Side(skeleton_csv.name, True, ctx), ctx, max_rows)
        return skeleton, CommonTable.of(common)
    sides: dict[str, Side] = {}
    with _archive(raw.archive) as (tar, f):
        for member in tar:
            base = PurePosixPath(member.name).name
            if member.isfile() and base in (skeleton_name, common_name) and base not in sides:
                csv = RawCsv(raw.archive, member.name)
                is_skeleton = base == skeleton_name
                sides[base] = read_side(
                    csv,
                    tar.extractfile(member),
                    f,
                    Side(csv.name, is_skeleton, ctx),
                    ctx,
                    max_rows if is_skeleton else None,
                )
    for base in (skeleton_name, common_name):
        if base not in sides:
            raise DataError(f"{raw.archive}: the archive has no {base}")
    return sides[skeleton_name], CommonTable.of(sides[common_name])


def join_rows(skeleton: Side, common: CommonTable) -> None:
    """Set each skeleton block's ``crow``: the common row of each of its rows' ``common_feature_index`` (one
    hash lookup for the split, of each run of equal keys)."""
    keys = common.keys
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
    runs = [b.keys for b in skeleton.blocks]
    found = pc.index_in(pa.concat_arrays(runs), value_set=keys).fill_null(-1).to_numpy(zero_copy_only=False)
    offset = row0 = 0
    for b in skeleton.blocks:
        assert b.keys is not None and b.key_of_row is not None  # a skeleton block, not joined yet
        rows = found[offset : offset + len(b.keys)][b.key_of_row]
        offset += len(b.keys)
        if (rows < 0).any():
            r = int(np.flatnonzero(rows < 0)[0])
            raise DataError(
                f"{skeleton.name}: line {row0 + r + 1}: common_feature_index {b.keys[b.key_of_row[r]].as_py()!r} has "
                f"no row in {common.name}"
            )
        b.crow, b.keys, b.key_of_row = spill.stow(rows.astype(np.int32)), None, None
        row0 += b.rows


# -- vocabularies -------------------------------------------------------------------------------------------------
def _counted(ids: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    if weights is None:
        keys, counts = np.unique(ids, return_counts=True)
        return keys, counts.astype(np.int64)
    keys, inverse = np.unique(ids, return_inverse=True)
    return keys, np.bincount(inverse.reshape(-1), weights=weights, minlength=len(keys)).astype(np.int64)


class IdCounts:
    """How many kept rows carry each raw id of one field (ids within ``DENSE_IDS`` of each other: a dense
    array updated in place, else (ids, counts) pairs merged now and then), and how many carry none."""

    def __init__(self) -> None:
        self.base = 0
        self.counts = np.zeros(0, dtype=np.int64)  # of the raw ids base, base + 1, ...
        self.sparse: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.absent = 0

    def add(self, ids: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Count each of ``ids`` (< 0: the row has none) once, or ``weights`` times."""
        none = ids < 0
        if none.any():
            self.absent += int(none.sum()) if weights is None else int(weights[none].sum())
            ids, weights = ids[~none], None if weights is None else weights[~none]
        if weights is not None:
            ids, weights = ids[weights > 0], weights[weights > 0]
        if not len(ids):
            return
        if self.sparse is None:
            lo, hi = int(ids.min()), int(ids.max())
            if len(self.counts):
                lo, hi = min(lo, self.base), max(hi, self.base + len(self.counts) - 1)
            if hi - lo < DENSE_IDS:
                if not len(self.counts) or lo < self.base or hi >= self.base + len(self.counts):
                    grown = np.zeros(min(DENSE_IDS, (hi - lo + 1) * 5 // 4 + 64), dtype=np.int64)
                    grown[self.base - lo : self.base - lo + len(self.counts)] = self.counts
                    self.base, self.counts = lo, grown
                np.add.at(self.counts, ids - self.base, 1 if weights is None else weights)
                return
            self.sparse = [self.items()]
            self.counts = np.zeros(0, dtype=np.int64)
        self.sparse.append(_counted(ids, weights))
        if sum(len(k) for k, _ in self.sparse) > 1 << 22:
            self.sparse = [self.items()]

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """The raw ids met (sorted) and their counts."""
        if self.sparse is None:
            nonzero = np.flatnonzero(self.counts)
            return nonzero + self.base, self.counts[nonzero]
        return _counted(np.concatenate([k for k, _ in self.sparse]), np.concatenate([c for _, c in self.sparse]))

    def vocab(self, min_count: int, absent_counts: bool = True) -> Vocab:
        """Ids in the sorted order of the raw ids met ``min_count`` times or more; rarer ones and (when
        ``absent_counts``) the rows without one share an extra id, the last, when some kept row has it."""
        keys, counts = self.items()
        keep = counts >= min_count
        other = bool((~keep).any()) or (absent_counts and self.absent > 0)
        return Vocab(keys[keep], max(1, int(keep.sum()) + int(other)))


class Vocab:
    """Raw id -> id (int32) of one field: its place among ``keys``; any other raw id (rare, or -1: absent)
    gets ``other`` (= len(keys)). A table over the range of the keys when it is small enough, else a search."""

    def __init__(self, keys: np.ndarray, size: int) -> None:
        self.keys, self.size, self.other = keys, size, len(keys)
        self.table: np.ndarray | None = None
        if len(keys) and int(keys[-1]) - int(keys[0]) < DENSE_IDS:
            self.base = int(keys[0]) - 1  # table[0] and table[-1]: below and above the keys
            self.table = np.full(int(keys[-1]) - self.base + 2, self.other, dtype=np.int32)
            self.table[keys - self.base] = np.arange(len(keys), dtype=np.int32)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.table is not None:
            return self.table[np.clip(raw.astype(np.int64) - self.base, 0, len(self.table) - 1)]
        if not len(self.keys):
            return np.full(raw.shape, self.other, dtype=np.int32)
        pos = np.searchsorted(self.keys, raw).clip(0, len(self.keys) - 1)
        return np.where(self.keys[pos] == raw, pos, self.other).astype(np.int32)

    def sequences(self, ids: np.ndarray) -> np.ndarray:
        """Ids of PAD-padded sequences (PAD stays), ``SEQUENCE_ROWS`` rows at a time into :func:`spill.empty`
        (the common-features rows' sequences: bounded temporaries, the result on disk while an entry is built)."""
        out = spill.empty(ids.shape, np.int32)
        for s in range(0, len(ids), SEQUENCE_ROWS):
            part = ids[s : s + SEQUENCE_ROWS]
            out[s : s + SEQUENCE_ROWS] = np.where(part != PAD, self(part), PAD)
        return out


def _field_counts(
    name: str, skeletons: list[Side], commons: list[CommonTable], references: list[np.ndarray], sequence: bool
) -> IdCounts:
    """The counts of one field over the kept rows: a row's own entries, else its common-features row's.

    The common rows' ids are counted once each, weighted by how many kept rows take them (``references``:
    rows per common row, when no skeleton row of the split has the field), not row by row.
    """
    counts = IdCounts()
    for skeleton, common, refs in zip(skeletons, commons, references):
        theirs = common.seqs[name][0] if sequence and name in common.seqs else common.singles.get(name)
        if sequence and name not in common.seqs:
            theirs = None
        own_any = any(name in (b.seqs if sequence else b.singles) for b in skeleton.blocks)
        weight = np.zeros(common.rows, dtype=np.int64) if own_any and theirs is not None else refs
        for b in skeleton.blocks if own_any else []:
            assert b.kept is not None and b.crow is not None
            take = b.kept
            if sequence and name in b.seqs:
                ids = b.seqs[name][0]
                own = (ids != PAD).any(axis=1)
                counts.add(ids[own & b.kept].reshape(-1))  # PAD as absent: no sequence needs an absent id
                take = b.kept & ~own
            elif not sequence and name in b.singles:
                ids = b.singles[name]
                own = ids >= 0
                counts.add(ids[own & b.kept])
                take = b.kept & ~own
            if theirs is not None:
                np.add.at(weight, b.crow[take], 1)
            else:
                counts.absent += int(take.sum())
        if theirs is None:
            counts.absent += 0 if own_any else int(refs.sum())
        elif sequence:  # SEQUENCE_ROWS common rows at a time: bounded temporaries
            for s in range(0, len(theirs), SEQUENCE_ROWS):
                rows = slice(s, s + SEQUENCE_ROWS)
                counts.add(theirs[rows].reshape(-1), np.repeat(weight[rows], theirs.shape[1]))
        else:
            counts.add(theirs, weight)
    return counts


# -- both splits -> columns ---------------------------------------------------------------------------------
#: glibc's M_TRIM_THRESHOLD and M_MMAP_THRESHOLD (mallopt's parameter numbers)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: while a build runs: arrays up to this size come from the heap, and freed heap memory up to this much is kept
HEAP_MMAP_THRESHOLD, HEAP_TRIM_THRESHOLD = 256 << 20, 1 << 30
#: afterwards: the largest values glibc's own (dynamic) thresholds reach, 32 MiB and twice that
AFTER_MMAP_THRESHOLD, AFTER_TRIM_THRESHOLD = 32 << 20, 64 << 20


@contextmanager
def reused_heap() -> Iterator[None]:
    """Within the block, malloc reuses the memory numpy frees instead of handing it back to the OS (glibc's
    ``mallopt``; elsewhere nothing changes).

    Why: a block's temporaries are arrays of a few MB (about 30 times the block's bytes in all); with glibc's
    thresholds they are often new maps (or heap memory trimmed and given back), faulted in page by page, and a
    page fault costs microseconds on a virtual machine: parsing 4 MB skeleton blocks in one thread took 57 ms
    of CPU a block (9,000 page faults) against 32 ms with the memory reused; a whole 2M-line build faults
    150,000 pages instead of 250,000-700,000 (system time 4-5 s instead of 6-8 s). The memory kept is what the
    blocks in flight need at once. Afterwards the thresholds are fixed at the largest values glibc's own reach
    (mallopt ends their adjustment) and the free heap memory is handed back (``malloc_trim``).
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, AFTER_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, AFTER_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def _glibc() -> Any:
    """The C library when it is glibc (``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # (no process-wide handle on Windows)
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "malloc_trim") else None


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
    max_len = int(s["max_len"])
    given = s["scenario_values"]
    scenario_ids = ScenarioIds(None if given is None else tuple(int(v) for v in given))
    threads = pa.cpu_count()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="ali_ccp") if threads > 1 else None
    try:
        with reused_heap():  # numpy's temporaries reuse freed memory: no page faults (see reused_heap)
            ctx = Context(max_len, scenario_ids, pool, threads)
            parts = [read_split(layout[split], ctx, s["max_rows"]) for split in SPLITS]
            for skeleton, common in parts:
                join_rows(skeleton, common)
            return _assemble(
                parts,
                scenario_ids,
                settings,
                tasks,
                ctx,
                str(layout["train"].archive or layout["train"].csvs()[0].path.parent),
            )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _assemble(
    parts: list[tuple[Side, CommonTable]],
    scenario_ids: ScenarioIds,
    s: dict[str, Any],
    tasks: list[str],
    ctx: Context,
    source: str,
) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
    """The schema and columns of the joined splits: dropped rows, scenarios, vocabularies, then every column
    filled block by block (on the context's threads) and validated in slices (when building a cache entry, the
    columns are its data file, :func:`~mtlbench.data.cache.entry_columns`, and the cache validates them)."""
    skeletons, commons = [p[0] for p in parts], [p[1] for p in parts]
    starts = np.r_[0, np.cumsum([k.rows for k in skeletons])]

    def where(row: int) -> str:  # a dataset row (before dropping) as file: line
        i = int(np.searchsorted(starts, row, "right") - 1)
        return f"{skeletons[i].name}: line {row - starts[i] + 1}"

    kept = _drop_orphans(skeletons, where)
    _scenarios(skeletons, commons, scenario_ids, starts, where)
    vocabs, seq_vocabs = _vocabularies(skeletons, commons, int(s["min_count"]))
    values = scenario_ids.known
    features = [
        Feature(f, "categorical", len(values), "context")
        if f == SCENARIO_FIELD
        else Feature(f, "categorical", vocabs[f].size, _role(f))
        for f in _order(set(vocabs) | {SCENARIO_FIELD})
    ]
    features += [
        Feature(f, "sequence", v.size, "user", max_len=ctx.max_len, weights=True) for f, v in seq_vocabs.items()
    ]
    names = [f.name for f in features]
    for f in (s["scenario_field"], s["user_field"], s["item_field"]):
        if f is not None and f not in names:
            raise ConfigError(f"ali_ccp: field {f!r} is not a feature of the raw files (fields: {names})")
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
        stats={"skeleton_rows": int(starts[-1]), DROPPED: int(starts[-1]) - sum(kept)},
    )
    n, n_train = sum(kept), kept[0]
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {
        f: ((n,), np.int32) for f in _order(set(vocabs) | {SCENARIO_FIELD})
    }
    for f in seq_vocabs:
        shapes[f], shapes[weights_column(f)] = ((n, ctx.max_len), np.int32), ((n, ctx.max_len), np.float32)
    shapes.update({t: ((n,), np.float32) for t in tasks})
    shapes["split_part"] = ((n,), np.int8)
    out = entry_columns(shapes)  # while a cache entry is built: regions of its data file (written once)
    in_entry = out is not None  # then prepare_entry validates the columns: checked once, not here too
    if out is None:  # allocated on the threads: mapping fresh memory in is the slow part of filling the columns
        out = dict(_in_order(ctx.pool, lambda f: _allocate(*shapes[f]), list(shapes), len(shapes)))
    part = out["split_part"]
    part[:n_train] = 0
    part[n_train:] = 2  # the official test file's rows; train, valid:
    n_valid = max(1, round(float(s["valid_fraction"]) * n_train)) if n_train > 1 else 0
    part[np.random.default_rng(int(s["split_seed"])).permutation(n_train)[:n_valid]] = 1
    _fill(out, parts, vocabs, seq_vocabs, tasks, ctx)

    def check(a: int) -> None:  # a slice of rows: bounded temporaries
        z = min(n, a + VALIDATE_ROWS)
        schema.validate(
            {k: v[a:z] for k, v in out.items()}, source=source if z - a == n else f"{source} rows {a}-{z - 1}"
        )

    if not in_entry:
        for _ in _in_order(ctx.pool, check, range(0, n, VALIDATE_ROWS), ctx.ahead):
            pass
    return schema, out


def _drop_orphans(skeletons: list[Side], where: Callable[[int], str]) -> list[int]:
    """Mark each block's ``kept`` rows (not a conversion without a click); the kept rows per skeleton."""
    row0, dropped, first = 0, 0, -1
    kept = []
    for skeleton in skeletons:
        kept.append(0)
        for b in skeleton.blocks:
            assert b.click is not None and b.conversion is not None
            orphan = (b.conversion == 1) & (b.click == 0)
            b.kept = spill.stow(~orphan)
            if orphan.any():
                first = row0 + int(np.flatnonzero(orphan)[0]) if first < 0 else first
                dropped += int(orphan.sum())
            kept[-1] += b.rows - int(orphan.sum())
            row0 += b.rows
    if dropped:
        log.warning(
            "ali_ccp: dropped %d skeleton row(s) with conversion=1 and click=0 (first: %s)", dropped, where(first)
        )
    return kept


def _vocabularies(
    skeletons: list[Side], commons: list[CommonTable], min_count: int
) -> tuple[dict[str, Vocab], dict[str, Vocab]]:
    """The vocabulary of each single-valued field and each behaviour field, over the kept rows: a common row's
    ids weighted by the kept rows that reference it."""
    references = []
    for skeleton, common in zip(skeletons, commons):
        refs = np.zeros(common.rows, dtype=np.int64)
        for b in skeleton.blocks:
            assert b.crow is not None and b.kept is not None
            np.add.at(refs, b.crow[b.kept], 1)
        references.append(refs)
    blocks = [b for k in skeletons for b in k.blocks]
    fields = set().union(*[b.singles for b in blocks], *[c.singles for c in commons])
    seq_fields = [f for f in SEQUENCE_FIELDS if any(f in b.seqs for b in blocks) or any(f in c.seqs for c in commons)]
    vocabs = {f: _field_counts(f, skeletons, commons, references, False).vocab(min_count) for f in fields}
    seq_vocabs = {f: _field_counts(f, skeletons, commons, references, True).vocab(min_count, False) for f in seq_fields}
    return vocabs, seq_vocabs


def _fill(
    out: dict[str, np.ndarray],
    parts: list[tuple[Side, CommonTable]],
    vocabs: dict[str, Vocab],
    seq_vocabs: dict[str, Vocab],
    tasks: list[str],
    ctx: Context,
) -> None:
    """Write each skeleton block's kept rows into their slice of the columns (on the context's threads); each
    block is freed once written."""
    o = 0
    for skeleton, common in parts:
        theirs = {f: vocabs[f](v) for f, v in common.singles.items()}  # the ids of each common row
        their_seqs = {f: (seq_vocabs[f].sequences(i), w) for f, (i, w) in common.seqs.items()}
        blocks, skeleton.blocks = skeleton.blocks, []
        jobs = []
        for b in blocks:
            assert b.kept is not None
            m = int(b.kept.sum())
            jobs.append((b, slice(o, o + m)))
            o += m
        del blocks

        def write(job: tuple[Parsed, slice], theirs: dict = theirs, their_seqs: dict = their_seqs) -> None:
            rows = {name: col[job[1]] for name, col in out.items()}
            _write(job[0], rows, vocabs, seq_vocabs, theirs, their_seqs, tasks)

        for _ in _in_order(ctx.pool, write, _drain(jobs), ctx.ahead):
            pass


def _allocate(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array: on disk while a cache entry is built (:mod:`mtlbench.data.spill`); otherwise a
    large one in memory the kernel maps in at once (``MAP_POPULATE``): the first
    touch of fresh memory is the slow part of filling the columns on a virtual machine, and populating it is
    about twice as fast as faulting it in page by page (1 GB here: 2.6 s against 5.3 s)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if spill.active():  # a cache entry is being built: the columns go to disk (flat memory)
        return spill.empty(shape, dtype)
    if size < POPULATE_BYTES or not populate:
        return np.empty(shape, dtype=dtype)
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(memory, dtype=dtype).reshape(shape)  # the array keeps the mapping alive


def _drain(items: list[T]) -> Iterator[T]:
    """The items of a list, each forgotten by the list once handed out."""
    for i in range(len(items)):
        item = items[i]
        items[i] = None  # type: ignore[assignment]
        yield item


def _scenarios(
    skeletons: list[Side], commons: list[CommonTable], ids: ScenarioIds, starts: np.ndarray, where: Any
) -> None:
    """Each skeleton block's ``scenario``: its own field 301, else its common-features row's."""
    blocks = [b for k in skeletons for b in k.blocks]
    if not any(SCENARIO_FIELD in b.singles for b in blocks) and not any(SCENARIO_FIELD in c.singles for c in commons):
        raise DataError(f"{skeletons[0].name}: no field {SCENARIO_FIELD} (the scenario) in the raw files")
    for skeleton, common, row0 in zip(skeletons, commons, starts.tolist()):
        theirs = common.singles.pop(SCENARIO_FIELD, None)
        for b in skeleton.blocks:
            assert b.crow is not None and b.kept is not None
            raw = b.singles.pop(SCENARIO_FIELD, None)
            if theirs is not None:
                raw = theirs[b.crow] if raw is None else np.where(raw >= 0, raw, theirs[b.crow])
            if raw is None or (raw[b.kept] < 0).any():
                r = int(np.flatnonzero(b.kept)[0] if raw is None else np.flatnonzero(b.kept & (raw < 0))[0])
                raise DataError(
                    f"{where(row0 + r)}: the row has no field {SCENARIO_FIELD} (the scenario), neither in the "
                    "skeleton nor in its common features"
                )
            b.scenario = spill.stow(ids.index(raw))
            row0 += b.rows


def _write(
    b: Parsed,
    out: dict[str, np.ndarray],
    vocabs: dict[str, Vocab],
    seq_vocabs: dict[str, Vocab],
    theirs: dict[str, np.ndarray],
    their_seqs: dict[str, tuple[np.ndarray, np.ndarray]],
    tasks: list[str],
) -> None:
    """Write the kept rows of one skeleton block into ``out`` (views of its rows in the columns)."""
    assert b.kept is not None and b.crow is not None and b.scenario is not None
    assert b.click is not None and b.conversion is not None
    every = bool(b.kept.all())

    def kept(a: np.ndarray) -> np.ndarray:
        return a if every else a[b.kept]

    crow = kept(b.crow)
    out[SCENARIO_FIELD][:] = kept(b.scenario)
    for f, vocab in vocabs.items():
        own = b.singles.get(f)
        if own is None:
            out[f][:] = theirs[f][crow] if f in theirs else vocab.other
        else:
            own = kept(own)
            out[f][:] = vocab(own) if f not in theirs else np.where(own >= 0, vocab(own), theirs[f][crow])
    for f, vocab in seq_vocabs.items():
        ids, weights = out[f], out[weights_column(f)]
        if f in their_seqs:
            np.take(their_seqs[f][0], crow, axis=0, out=ids, mode="clip")
            np.take(their_seqs[f][1], crow, axis=0, out=weights, mode="clip")
        else:
            ids[:], weights[:] = PAD, 0
        if f in b.seqs:  # rows with their own sequence keep it
            own_ids, own_weights = kept(b.seqs[f][0]), kept(b.seqs[f][1])
            mine = (own_ids != PAD).any(axis=1)
            ids[mine], weights[mine] = vocab.sequences(own_ids[mine]), own_weights[mine]
    labels = funnel_labels(
        tasks, kept(b.click).astype(np.float32), kept(b.conversion).astype(np.float32), None, "conversion", "ignore"
    )
    for t, y in labels.items():
        out[t][:] = y
