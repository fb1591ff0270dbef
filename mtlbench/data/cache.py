"""Columnar on-disk cache of prepared datasets, keyed by a hash of source + preprocessing settings.

One entry is a folder ``<cache_dir>/<name>-<fingerprint>/`` holding ``data.arrow`` (Arrow IPC file,
uncompressed so it can be memory-mapped), ``schema.json`` and ``meta.json``. Entries are written under
a temporary name and renamed when complete, so a crash or a full disk never leaves a half-written entry behind.

Concurrency: processes that prepare the same entry at once (a job array starting together) take turns on a
lock file ``.<entry>.lock`` beside it: one builds, the others wait and read its entry. Where the file system
has no ``flock``, each builds and the first rename wins (the others drop theirs).

Integrity: ``meta.json`` records a checksum (:func:`checksum`: the files' sizes, a hash of ``schema.json`` and
a hash of sampled blocks of ``data.arrow``: its first and last blocks and ones spread evenly between, so the
whole file when it is small) and opening an entry verifies it. An entry that fails (truncated, overwritten,
unreadable) is reported in one line naming it and rebuilt rather than used.

Written once: a reader that knows its columns' shapes before filling them asks :func:`entry_columns` for them;
while an entry is built they are regions of the entry's ``data.arrow`` itself (pyarrow's writer lays the file
out first), so the build fills the file and :func:`write_entry` only adds it to the entry, instead of copying
every column into a new file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mtlbench.data import spill
from mtlbench.data.schema import DatasetSchema
from mtlbench.data.source import DatasetSource
from mtlbench.errors import DataError
from mtlbench.log import get_logger
from mtlbench.rundir import FILE_MODE, exclusive, write_error

CACHE_ENV = "MTLBENCH_CACHE"

logger = get_logger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "mtlbench"))


def _to_arrow(values: np.ndarray) -> pa.Array:
    if values.ndim == 2:  # sequence fields: fixed-size lists keep [N, L] zero-copy on read
        flat = pa.array(np.ascontiguousarray(values).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    return pa.array(values)


def _to_numpy(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
        return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), width)
    return arr.to_numpy(zero_copy_only=False)


DATA_FILE, SCHEMA_FILE, META_FILE = "data.arrow", "schema.json", "meta.json"
#: rows validated at a time by each thread of :func:`validate`
VALIDATE_SLICE = 1 << 20
#: sampled checksum of data.arrow: this many blocks of BLOCK bytes (the whole file up to 4 MiB)
BLOCK, BLOCKS = 64 * 1024, 64


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _block_hash(path: Path, size: int, block: int, blocks: int) -> str:
    """sha256 over ``blocks`` blocks of ``block`` bytes spread evenly from the start to the end of the file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= block * blocks:
            h.update(f.read())
        else:
            last = size - block
            for i in range(blocks):
                f.seek(last * i // (blocks - 1))
                h.update(f.read(block))
    return h.hexdigest()


def checksum(folder: Path, block: int = BLOCK, blocks: int = BLOCKS) -> dict[str, Any]:
    """A cheap checksum of an entry's files: sizes, the schema's hash, and a hash of sampled data blocks.

    Reads at most ``block * blocks`` bytes (4 MiB) however large the data: a truncated or resized file, a
    changed schema, and damage in the sampled blocks (the Arrow header and footer are always among them) are
    detected; a change elsewhere in a file larger than 4 MiB is not.
    """
    data, schema = folder / DATA_FILE, folder / SCHEMA_FILE
    size = data.stat().st_size
    return {
        "sizes": {DATA_FILE: size, SCHEMA_FILE: schema.stat().st_size},
        "schema_sha256": _sha256(schema.read_bytes()),
        "data_blocks": {"block": block, "blocks": blocks, "sha256": _block_hash(data, size, block, blocks)},
    }


def verify_entry(folder: Path) -> str | None:
    """None if the entry is intact (or predates checksums), else what is wrong with it."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError) as e:
        return f"{META_FILE} unreadable ({e})"
    expected = meta.get("integrity") if isinstance(meta, dict) else None
    if not isinstance(expected, dict):
        return None  # written before entries recorded a checksum
    try:
        for name, size in expected["sizes"].items():
            actual = (folder / name).stat().st_size
            if actual != size:
                return f"{name} has {actual:,} bytes, {size:,} were written"
        if _sha256((folder / SCHEMA_FILE).read_bytes()) != expected["schema_sha256"]:
            return f"{SCHEMA_FILE} changed since it was written"
        blocks = expected["data_blocks"]
        if (
            _block_hash(folder / DATA_FILE, expected["sizes"][DATA_FILE], blocks["block"], blocks["blocks"])
            != (blocks["sha256"])
        ):
            return f"{DATA_FILE} changed since it was written (checksum mismatch)"
    except (OSError, KeyError, TypeError) as e:
        return f"cannot be checked ({e})"
    return None


def validate(schema: DatasetSchema, columns: dict[str, np.ndarray], source: str) -> None:
    """``schema.validate(columns, source=source)``, slices of ``VALIDATE_SLICE`` rows checked on threads (its
    checks are per row); when a slice fails, the whole table is checked again, so the error is validate's own
    message, naming the row of the table."""
    sizes = {len(v) for v in columns.values()}
    n = sizes.pop() if len(sizes) == 1 else 0
    threads = min(pa.cpu_count(), -(-n // VALIDATE_SLICE))
    if threads < 2:  # one slice, or columns of different lengths: validate decides
        schema.validate(columns, source=source)
        return

    def check(start: int) -> None:
        schema.validate({k: v[start : start + VALIDATE_SLICE] for k, v in columns.items()}, source=source)

    pool = ThreadPoolExecutor(threads, thread_name_prefix="validate")
    try:
        for _ in pool.map(check, range(0, n, VALIDATE_SLICE)):
            pass
    except DataError:
        schema.validate(columns, source=source)  # the message that names the table's row
        raise
    finally:
        pool.shutdown(cancel_futures=True)


def write_entry(path: Path, schema: DatasetSchema, columns: dict[str, np.ndarray], meta: dict) -> None:
    """Write one cache entry atomically (temporary folder, then rename), with its checksum in ``meta.json``.

    Columns that are exactly those :func:`entry_columns` laid out (same names in the same order) are not copied:
    their file becomes the entry's ``data.arrow``. An entry already at ``path`` that is complete and intact is
    kept (another process finished first); one that fails :func:`verify_entry` is replaced. A write that fails
    (e.g. no space) leaves nothing under ``path`` and raises a one-line :class:`~mtlbench.rundir.WriteError`
    naming it.
    """
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        laid_out = _laid_out(columns)
        if laid_out is None or not laid_out.finish(columns, tmp / DATA_FILE):
            table = pa.table({name: _to_arrow(np.asarray(v)) for name, v in columns.items()})
            with pa.OSFile(str(tmp / DATA_FILE), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)  # one record batch: every column reads back as one zero-copy map
        (tmp / SCHEMA_FILE).write_text(json.dumps(schema.to_dict(), indent=1))
        meta["integrity"] = checksum(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        _install(tmp, path)
        return
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError):
            raise
        error = write_error(path, e)
    raise error  # outside the handler: one line, without pyarrow's chained message


# -- the data file written once --------------------------------------------------------------------------------
#: while prepare_entry builds an entry: (the entry's folder, its scratch folder), see entry_columns
_building: tuple[Path, Path] | None = None
_building_lock = threading.Lock()


@contextmanager
def _build_target(path: Path, scratch: Path) -> Iterator[None]:
    """Within the block, :func:`entry_columns` lays out the data file of the entry ``path`` in ``scratch``."""
    global _building
    with _building_lock:
        previous, _building = _building, (path, scratch)
    try:
        yield
    finally:
        with _building_lock:
            _building = previous


class _Sink:
    """A file-like object for ``pa.PythonFile`` that keeps where pyarrow's IPC writer puts each piece: its own
    bytes (magic, schema, message metadata, padding, footer) as bytes, the column buffers as (address, size)."""

    def __init__(self) -> None:
        self.pos = 0
        self.own: list[tuple[int, bytes]] = []
        self.buffers: list[tuple[int, int, int]] = []  # (file offset, address, size)
        self.closed = False

    def write(self, data: Any) -> int:
        if isinstance(data, pa.Buffer):  # a column's values: never read here
            self.buffers.append((self.pos, data.address, data.size))
            size = data.size
        else:
            piece = bytes(data)
            self.own.append((self.pos, piece))
            size = len(piece)
        self.pos += size
        return size

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _pieces(columns: Mapping[str, np.ndarray]) -> _Sink:
    """What :func:`write_entry`'s writer puts where, for these columns (their values are not read)."""
    table = pa.table({name: _to_arrow(np.asarray(v)) for name, v in columns.items()})
    sink = _Sink()
    with pa.PythonFile(sink, mode="w") as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)
    return sink


class _DataFile(mmap.mmap):
    """A shared map of a data file laid out by :func:`entry_columns`; its columns are views of it."""

    fd: int
    named: Path | None  # the file's name when it could not be made unlinked (O_TMPFILE)
    address: int
    columns: list[tuple[str, int, tuple[int, ...], np.dtype]]  # name, file offset, shape, dtype

    def finish(self, columns: Mapping[str, np.ndarray], dest: Path) -> bool:
        """Write pyarrow's bytes around ``columns`` (the laid-out views, filled) and give the file the name
        ``dest``; False when that is not possible (then nothing was changed: write the entry by copying)."""
        sink = _pieces(columns)
        if sink.pos != len(self) or any(a != self.address + o for o, a, _ in sink.buffers):
            return False  # not the layout of entry_columns (cannot happen: _laid_out checked the views)
        for offset, piece in sink.own:
            os.pwrite(self.fd, piece, offset)  # the bytes written when laid out, again
        if self.named is not None:
            os.rename(self.named, dest)
            return True
        folder = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:  # linkat(AT_SYMLINK_FOLLOW) of the unlinked file: the dir fd makes os.link use linkat
            os.link(f"/proc/self/fd/{self.fd}", dest.name, dst_dir_fd=folder)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            return False  # no /proc: copy
        finally:
            os.close(folder)
        return True


def _open_data_file(scratch: Path, size: int) -> tuple[int, Path | None]:
    """A new file of ``size`` bytes (allocated on disk, so a full disk fails here rather than while the map
    is filled) in ``scratch``: unlinked when the file system can (nothing is left after a crash), else named."""
    named = None
    try:
        fd = os.open(scratch, os.O_TMPFILE | os.O_RDWR, FILE_MODE)
    except (AttributeError, OSError):  # no O_TMPFILE (not Linux, or the file system has none)
        fd, name = tempfile.mkstemp(prefix="data.", suffix=".arrow", dir=scratch)
        os.fchmod(fd, FILE_MODE)
        named = Path(name)
    try:
        os.ftruncate(fd, size)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
        return fd, named
    except BaseException:
        os.close(fd)
        if named is not None:
            named.unlink(missing_ok=True)
        raise


def entry_columns(layout: Mapping[str, tuple[tuple[int, ...], Any]]) -> dict[str, np.ndarray] | None:
    """Uninitialised columns of these shapes and dtypes, in this order, that are the regions of the data file
    of the entry being built (while :func:`prepare_entry` builds one): filled by the build, they are written
    once, as :func:`write_entry` adds the file to the entry when handed exactly these columns (in order, no
    other). None outside a build or for no rows: allocate the columns as usual then.

    pyarrow's writer lays the file out: it writes columns of these shapes (views of a reserved, never touched
    map) to a sink that keeps its own bytes and where each column goes; those bytes are written to the file
    now and again when it is finished, so the file is the one pyarrow writes from the filled columns.
    """
    target = _building
    if target is None:
        return None
    shapes = {name: (tuple(int(s) for s in shape), np.dtype(dtype)) for name, (shape, dtype) in layout.items()}
    sizes = [int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for shape, dtype in shapes.values()]
    if not shapes or not all(sizes):
        return None
    starts = np.cumsum([0] + [-(-n // 64) * 64 for n in sizes]).tolist()
    reserved = mmap.mmap(-1, starts[-1], flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ)
    try:
        views = {
            name: np.frombuffer(reserved, dtype, int(np.prod(shape)), start).reshape(shape)
            for (name, (shape, dtype)), start in zip(shapes.items(), starts)
        }
        base = views[next(iter(views))].ctypes.data
        sink = _pieces(views)
        where = {address - base: offset for offset, address, _ in sink.buffers}
        del views
    finally:
        try:
            reserved.close()
        except BufferError:  # a view still held (an exception's frames): the map goes with it
            pass
    entry, scratch = target
    try:
        fd, named = _open_data_file(scratch, sink.pos)
    except OSError as e:
        raise write_error(entry, e) from None
    try:
        for offset, piece in sink.own:
            os.pwrite(fd, piece, offset)
        data = _DataFile(fd, sink.pos, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        if named is not None:
            named.unlink(missing_ok=True)
        raise
    weakref.finalize(data, os.close, fd)  # the file goes with its last column (and its name with the scratch)
    data.fd, data.named = fd, named
    data.address = np.frombuffer(data, np.uint8, 1).ctypes.data
    data.columns = [(name, where[start], shape, dtype) for (name, (shape, dtype)), start in zip(shapes.items(), starts)]
    return {
        name: np.frombuffer(data, dtype, int(np.prod(shape)), offset).reshape(shape)
        for name, offset, shape, dtype in data.columns
    }


def _laid_out(columns: Mapping[str, np.ndarray]) -> _DataFile | None:
    """The data file of :func:`entry_columns` when ``columns`` are exactly its views, in its order."""
    owners: list[Any] = []
    for v in columns.values():
        owner: Any = v
        while isinstance(owner, np.ndarray):
            owner = owner.base
        owners.append(owner.obj if isinstance(owner, memoryview) else owner)  # np.frombuffer's view of the map
    data = owners[0] if owners else None
    if not isinstance(data, _DataFile) or data.closed or any(o is not data for o in owners):
        return None
    if len(columns) != len(data.columns):
        return None
    for (name, v), (planned, offset, shape, dtype) in zip(columns.items(), data.columns):
        if (
            name != planned
            or not isinstance(v, np.ndarray)
            or v.shape != shape
            or v.dtype != dtype
            or not v.flags.c_contiguous
            or v.ctypes.data != data.address + offset
        ):
            return None
    return data


def _install(tmp: Path, path: Path) -> None:
    """Rename the finished folder ``tmp`` to ``path``; keep an intact entry already there, replace a damaged one."""
    for _ in range(3):
        try:
            os.rename(tmp, path)
            return
        except OSError:
            if not path.exists():
                raise
        if (path / META_FILE).exists() and verify_entry(path) is None:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.damaged.", dir=path.parent))
        try:
            os.rename(path, aside / "entry")  # processes that mapped the damaged files keep their mapping
        except FileNotFoundError:
            pass  # another process moved it first
        shutil.rmtree(aside, ignore_errors=True)
    os.rename(tmp, path)


def read_entry(path: Path) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
    """Memory-map a cache entry; numeric columns are zero-copy views of the mapped file."""
    schema = DatasetSchema.from_dict(json.loads((path / SCHEMA_FILE).read_text()))
    source = pa.memory_map(str(path / DATA_FILE), "r")
    table = pa.ipc.open_file(source).read_all()
    return schema, {name: _to_numpy(table.column(name)) for name in table.column_names}


def _open(path: Path) -> tuple[DatasetSchema, dict[str, np.ndarray]] | str:
    """The verified entry, or why it cannot be used ("missing" when there is none)."""
    if not (path / META_FILE).exists():
        return "missing"
    problem = verify_entry(path)
    if problem is not None:
        return problem
    try:
        return read_entry(path)
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:  # ArrowInvalid is a ValueError
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def entry_path(source: DatasetSource, name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / f"{name}-{source.fingerprint()}"


def prepare_entry(
    source: DatasetSource, name: str, cache_dir: str | os.PathLike | None = None, log: bool = True
) -> tuple[Path, dict[str, Any], bool]:
    """Make sure the cache holds an intact entry for ``source``: (its folder, its meta, whether it was there).

    One process builds an entry at a time (a lock file beside it); the others wait and use the entry it wrote.
    A damaged entry is reported in one warning naming it and rebuilt. The build runs inside
    :func:`~mtlbench.data.spill.spilling`, so its large columns live on disk, not in memory; the entry is not
    read back here.
    """
    path = entry_path(source, name, cache_dir)
    if not isinstance(_open(path), str):
        return path, json.loads((path / META_FILE).read_text()), True

    def waiting() -> None:
        if log:
            logger.info("waiting for another process preparing %s", path)

    with exclusive(path.parent / f".{path.name}.lock", on_wait=waiting, remove=True):
        problem = _open(path)
        if not isinstance(problem, str):  # built or repaired meanwhile by the process we waited for
            return path, json.loads((path / META_FILE).read_text()), True
        if problem != "missing":
            logger.warning("cache entry %s is damaged (%s): rebuilding it", path, problem)
        start = time.perf_counter()
        scratch = path.parent / f".{path.name}.spill"
        try:
            # large columns on disk while building (flat memory, data/spill.py); output columns in the data file
            with spill.spilling(scratch), _build_target(path, scratch):
                schema, columns = source.build()
                validate(schema, columns, name)
                meta = {
                    "dataset": name,
                    "settings": source.settings,
                    "rows": len(columns[schema.tasks[0]]),
                    "columns": len(columns),
                    "build_seconds": round(time.perf_counter() - start, 3),
                    "fingerprint": path.name,
                }
                write_entry(path, schema, columns, meta)
                del columns  # free the built arrays (and their maps) before anyone maps the entry
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if log:
        logger.info("prepared %s: %s rows in %.1fs -> %s", name, f"{meta['rows']:,}", meta["build_seconds"], path)
    return path, meta, False


def load_or_build(
    source: DatasetSource, name: str, cache_dir: str | os.PathLike | None = None, log: bool = True
) -> tuple[DatasetSchema, dict[str, np.ndarray], Path]:
    """Return the cached dataset (memory-mapped), building it first when the cache has no intact entry
    (:func:`prepare_entry`)."""
    path = entry_path(source, name, cache_dir)
    opened = _open(path)
    if isinstance(opened, str):
        prepare_entry(source, name, cache_dir, log)
        opened = read_entry(path)
    return (*opened, path)
