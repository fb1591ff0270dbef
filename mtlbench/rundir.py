"""One run directory = one row: the names of a run's files, and atomic writers (a file exists only complete).

Training writes a run directory; reports, sweeps' skip-complete check and the analyses read it. Layout::

    config.yaml           the resolved config (written first)
    checkpoints/          best.ckpt (selected on validation), last.ckpt (resume)
    logs/                 CSV logger (or wandb/)
    predictions.parquet   test rows: ids, labels, scores
    environment.json      versions and machine
    results.json          written last: its presence means the run completed
    .lock                 held (flock) by the process running this directory's job: a sweep launched twice
                          into one directory runs each job once
    checkpoints/preempted.json  written when a signal stopped the run: the same command continues it

Every file is written under a temporary name beside its final one and renamed when complete, so a write that
fails (a full disk, a file-size limit) leaves the previous file or none, never half of one, and ends in a
:class:`WriteError` that names the path.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtlbench.errors import MtlbenchError

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.parquet"
CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
#: in checkpoints/: a signal (preemption, a scheduler's time limit) stopped the run after saving last.ckpt
PREEMPTED_FILE = "preempted.json"
LOCK_FILE = ".lock"
LOG_DIR = "logs"
WANDB_DIR = "wandb"
#: folders inside a run directory that hold a run's outputs, never another run
OUTPUT_DIRS = (CHECKPOINT_DIR, WANDB_DIR, LOG_DIR)


#: errnos of a write that failed for lack of space: the disk, a quota, a file-size limit (RLIMIT_FSIZE)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteError(MtlbenchError, OSError):
    """A file could not be written (no space, a quota, a file-size limit, permissions); names the path."""

    original: OSError | None = None


def write_error(path: str | os.PathLike, error: OSError) -> WriteError:
    """One line naming ``path`` and the cause; nothing was left under that name (the writers are atomic)."""
    if isinstance(error, WriteError):
        return error
    reason = os.strerror(error.errno) if error.errno else str(error) or type(error).__name__
    hint = " (out of disk space or over a quota / file-size limit)" if error.errno in NO_SPACE else ""
    out = WriteError(f"could not write {path}: {reason}{hint}; no partial file was left under that name")
    out.original = error  # the library's own exception, for debugging
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the permissions of a new file (mkstemp's temporary files are private: 0600)
FILE_MODE = 0o666 & ~_umask()


def _atomic(path: Path, write: Callable[[str], Any]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``; an OSError on the way
    removes the temporary file and becomes a :class:`WriteError` naming ``path``."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        return
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        error = write_error(path, e)
    raise error  # outside the handler: the one line, without the chain of the library's own messages


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` then rename to ``path``: the file exists complete or not at all (see :func:`_atomic`)."""
    _atomic(Path(path), write)


@contextmanager
def exclusive(
    path: str | os.PathLike, on_wait: Callable[[], None] | None = None, remove: bool = False
) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if needed) for the ``with`` block.

    Waits while another process holds it (``on_wait`` is called once if it has to). The lock goes away with the
    process that holds it, so a killed process never leaves a stale claim. ``remove``: delete the file when done
    (a waiter that locked the deleted file sees that and locks the new one). Yields False, and locks nothing, on
    a file system without ``flock``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None and not waited:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # a file system without locks
                yield False
                return
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file we waited on: lock the current one
    try:
        yield True
    finally:
        if remove:
            Path(path).unlink(missing_ok=True)
        os.close(fd)  # releases the lock


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
