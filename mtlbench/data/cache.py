"""Columnar on-disk cache of prepared datasets, keyed by a hash of source + preprocessing settings.

One entry is a folder ``<cache_dir>/<name>-<fingerprint>/`` holding ``data.arrow`` (Arrow IPC file,
uncompressed so it can be memory-mapped), ``schema.json`` and ``meta.json``. Entries are written under
a temporary name and renamed when complete, so a crash never leaves a half-written entry behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from mtlbench.data.schema import DatasetSchema
from mtlbench.data.source import DatasetSource
from mtlbench.log import get_logger

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


def write_entry(path: Path, schema: DatasetSchema, columns: dict[str, np.ndarray], meta: dict) -> None:
    """Write one cache entry atomically (temporary folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        table = pa.table({name: _to_arrow(np.asarray(v)) for name, v in columns.items()})
        with pa.OSFile(str(tmp / "data.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)  # one record batch: every column reads back as one zero-copy map
        (tmp / "schema.json").write_text(json.dumps(schema.to_dict(), indent=1))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same entry first: keep theirs
            if not (path / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_entry(path: Path) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
    """Memory-map a cache entry; numeric columns are zero-copy views of the mapped file."""
    schema = DatasetSchema.from_dict(json.loads((path / "schema.json").read_text()))
    source = pa.memory_map(str(path / "data.arrow"), "r")
    table = pa.ipc.open_file(source).read_all()
    return schema, {name: _to_numpy(table.column(name)) for name in table.column_names}


def entry_path(source: DatasetSource, name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / f"{name}-{source.fingerprint()}"


def load_or_build(
    source: DatasetSource, name: str, cache_dir: str | os.PathLike | None = None, log: bool = True
) -> tuple[DatasetSchema, dict[str, np.ndarray], Path]:
    """Return the cached dataset, building and validating it first when the cache has no entry."""
    path = entry_path(source, name, cache_dir)
    if not (path / "meta.json").exists():
        start = time.perf_counter()
        schema, columns = source.build()
        schema.validate(columns, source=name)
        rows = len(columns[schema.tasks[0]])
        meta = {
            "dataset": name,
            "settings": source.settings,
            "rows": rows,
            "build_seconds": round(time.perf_counter() - start, 3),
            "fingerprint": path.name,
        }
        write_entry(path, schema, columns, meta)
        del columns  # free the built arrays before the entry is mapped back
        if log:
            logger.info("prepared %s: %s rows in %.1fs -> %s", name, f"{rows:,}", meta["build_seconds"], path)
    schema, columns = read_entry(path)
    return schema, columns, path
