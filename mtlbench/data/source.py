"""The dataset plug-in contract: a source that builds schema + columns from raw input."""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import DataError

#: keys of a ``dataset`` config that belong to the run, not to the source: the split and the training budget
DATASET_KEYS = ("name", "split", "budget")


class DatasetSource(ABC):
    """A registered dataset: turns raw files (or a simulator's settings) into validated columns.

    Subclasses take their settings as keyword arguments (from the ``dataset`` config group) and
    implement :meth:`build`. :meth:`fingerprint` identifies the raw input so the cache can tell
    when it changed; the default covers settings plus size/mtime of every file under ``path``.
    """

    #: bump when the preprocessing of a source changes, so old caches are not reused
    version: str = "1"

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    @abstractmethod
    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        """Read/generate the raw data; return the schema and one numpy array per column."""

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"{type(self).__module__}.{type(self).__qualname__}:{self.version}".encode())
        h.update(repr(sorted(self.settings.items())).encode())
        path = self.settings.get("path")
        if path:
            for f in raw_files(path):
                st = f.stat()
                h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


def raw_files(path: str | os.PathLike) -> list[Path]:
    """All files of a raw dataset path (a file or a folder); a clear error when it doesn't exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"dataset path {str(p)!r} does not exist")
    return [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
