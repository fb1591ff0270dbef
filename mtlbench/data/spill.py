"""Disk-backed arrays, so preparing a dataset never holds all of its rows in memory.

While a cache entry is built (:func:`~mtlbench.data.cache.load_or_build`), :func:`spilling` names a scratch
folder beside the entry. The readers allocate their output columns (and any per-row state they keep until every
file is read) with :func:`empty`; a large one is then a shared memory map of an unlinked file in that folder,
not anonymous memory. The readers fill those columns block by block, so what a build holds in anonymous
memory is one block plus per-value state (vocabularies), whatever the row count; the filled pages sit in the
page cache, which the kernel writes back and drops when memory is short. The entry's Arrow file is then
written straight from the maps (zero-copy arrays), and each map disappears with its last array: the files were
unlinked when mapped, so nothing is left on disk even after a crash. A reader that knows the shapes of its
output columns before filling them takes them from :func:`mtlbench.data.cache.entry_columns` instead: regions
of the entry's Arrow file itself, so each column is written once rather than here and then again there.

Per-row state a reader keeps in many small pieces (a block of rows at a time) goes to the same kind of files
with :func:`stow`, packed into shared windows of ``WINDOW_BYTES`` so that a large build maps a few hundred windows
rather than one file per piece.

Outside :func:`spilling` (a dataset built in a test, or by a user's script) :func:`empty` is ``np.empty`` and
:func:`stow` returns its array. The setting is process-wide (readers fill columns on thread pools).
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

#: arrays smaller than this stay in memory (a map per small array would cost more than it saves)
MIN_BYTES = 8 << 20
#: rows copied at a time by :func:`take`
COPY_ROWS = 1 << 20
#: size of one shared window of :func:`stow` (pieces larger than a quarter of it get their own map)
WINDOW_BYTES = 256 << 20
ALIGN = 64

_lock = threading.Lock()
_folder: Path | None = None
_window: tuple[mmap.mmap, int] | None = None  # the current stow window and its next free offset


@contextmanager
def spilling(folder: str | os.PathLike) -> Iterator[Path]:
    """Within the block, large arrays are maps of files in ``folder`` (created if needed), in every thread."""
    global _folder, _window
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    with _lock:
        previous, _folder, saved, _window = _folder, path, _window, None
    try:
        yield path
    finally:
        with _lock:
            _folder, _window = previous, saved


def active() -> bool:
    """Whether large arrays go to disk now."""
    return _folder is not None


def _map(folder: Path, size: int) -> mmap.mmap:
    """A shared, writable map of a new unlinked file of ``size`` bytes in ``folder``."""
    fd, name = tempfile.mkstemp(prefix="column.", dir=folder)
    try:
        os.unlink(name)  # the map keeps the file; the disk space is freed with the last array
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def empty(shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array: disk-backed inside :func:`spilling` when it has at least ``MIN_BYTES``."""
    shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    folder = _folder
    if folder is None or size < MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(_map(folder, size), dtype=dtype).reshape(shape)  # the array keeps the map alive


def stow(array: np.ndarray) -> np.ndarray:
    """A copy of ``array`` in a shared disk-backed window inside :func:`spilling` (drop the original), else
    ``array`` itself: for per-row state kept in many small pieces until a build ends."""
    global _window
    folder = _folder
    if folder is None or array.nbytes == 0:
        return array
    size = -(-array.nbytes // ALIGN) * ALIGN
    if size > WINDOW_BYTES // 4:  # > MIN_BYTES: a map of its own
        out = empty(array.shape, array.dtype)
    else:
        with _lock:
            if _window is None or _window[1] + size > WINDOW_BYTES:
                _window = (_map(folder, WINDOW_BYTES), 0)
            window, offset = _window
            _window = (window, offset + size)
        out = np.frombuffer(window, dtype=array.dtype, count=array.size, offset=offset).reshape(array.shape)
    out[...] = array
    return out


def full(shape: int | tuple[int, ...], value: Any, dtype: Any) -> np.ndarray:
    """:func:`empty` filled with ``value``."""
    out = empty(shape, dtype)
    out[...] = value
    return out


def take(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` into :func:`empty` (e.g. a column put in time order), ``COPY_ROWS`` rows at a time."""
    out = empty((len(rows), *array.shape[1:]), array.dtype)
    for s in range(0, len(rows), COPY_ROWS):
        out[s : s + COPY_ROWS] = array[rows[s : s + COPY_ROWS]]
    return out


def concatenate(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``np.concatenate`` along the rows into :func:`empty` (no copy of a single array)."""
    if len(arrays) == 1:
        return arrays[0]
    if not active():
        return np.concatenate(arrays)
    first = arrays[0]
    dtype = np.result_type(*arrays)
    out = empty((sum(len(a) for a in arrays), *first.shape[1:]), dtype)
    o = 0
    for a in arrays:
        out[o : o + len(a)] = a
        o += len(a)
    return out
