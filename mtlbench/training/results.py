"""Atomic writers for a run's outputs: a result exists only when it is complete."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.parquet"


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN; null means "not defined" (e.g. no user with both classes)
    if isinstance(x, (np.floating, np.integer)):
        return _jsonable(x.item())
    return x


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False)
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text + "\n"))


def write_parquet(path: str | os.PathLike, columns: dict[str, np.ndarray]) -> None:
    table = pa.table({k: pa.array(np.asarray(v)) for k, v in columns.items()})
    _atomic(Path(path), lambda tmp: pq.write_table(table, tmp))
