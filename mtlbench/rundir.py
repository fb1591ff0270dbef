"""One run directory = one row: the names of a run's files, and atomic writers (a file exists only complete).

Training writes a run directory; reports, sweeps' skip-complete check and the analyses read it. Layout::

    config.yaml           the resolved config (written first)
    checkpoints/          best.ckpt (selected on validation), last.ckpt (resume)
    logs/                 CSV logger (or wandb/)
    predictions.parquet   test rows: ids, labels, scores
    environment.json      versions and machine
    results.json          written last: its presence means the run completed
"""

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
CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LOG_DIR = "logs"
WANDB_DIR = "wandb"
#: folders inside a run directory that hold a run's outputs, never another run
OUTPUT_DIRS = (CHECKPOINT_DIR, WANDB_DIR, LOG_DIR)


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


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN; null means "not defined" (e.g. no user with both classes)
    if isinstance(x, (np.floating, np.integer)):
        return jsonable(x.item())
    return x


def write_text(path: str | os.PathLike, text: str) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, data: dict[str, Any], indent: int = 2) -> None:
    write_text(path, json.dumps(jsonable(data), indent=indent, sort_keys=False) + "\n")


def write_parquet(path: str | os.PathLike, columns: dict[str, np.ndarray]) -> None:
    table = pa.table({k: pa.array(np.asarray(v)) for k, v in columns.items()})
    _atomic(Path(path), lambda tmp: pq.write_table(table, tmp))
