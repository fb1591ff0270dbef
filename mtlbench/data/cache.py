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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mtlbench.data import spill
from mtlbench.data.schema import DatasetSchema
from mtlbench.data.source import DatasetSource
from mtlbench.log import get_logger
from mtlbench.rundir import exclusive, write_error

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


def write_entry(path: Path, schema: DatasetSchema, columns: dict[str, np.ndarray], meta: dict) -> None:
    """Write one cache entry atomically (temporary folder, then rename), with its checksum in ``meta.json``.

    An entry already at ``path`` that is complete and intact is kept (another process finished first); one
    that fails :func:`verify_entry` is replaced. A write that fails (e.g. no space) leaves nothing under
    ``path`` and raises a one-line :class:`~mtlbench.rundir.WriteError` naming it.
    """
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
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
            with spill.spilling(scratch):  # large columns on disk while building: flat memory (data/spill.py)
                schema, columns = source.build()
                schema.validate(columns, source=name)
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
