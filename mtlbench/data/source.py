"""The dataset plug-in contract: a source that builds schema + columns from raw input."""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
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
    implement :meth:`build`. The settings are captured from the constructor's signature before its body
    runs: ``self.settings`` maps every parameter to its value, defaults included, as plain config data
    (:func:`plain`), so a constructor only checks and converts, and never repeats its arguments to a base
    class. :meth:`fingerprint` identifies the raw input so the cache can tell when it changed; the default
    covers settings plus size/mtime of every file under ``path``.
    """

    #: bump when the preprocessing of a source changes, so old caches are not reused
    version: str = "1"
    settings: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            # replacing the subclass's own constructor by a wrapper of it is the point here
            cls.__init__ = _capturing_settings(cls.__dict__["__init__"])  # type: ignore[method-assign]

    def __init__(self, **settings: Any) -> None:
        """For a source without its own constructor: every keyword is a setting."""
        if "settings" not in vars(self):
            self.settings = {k: plain(v) for k, v in settings.items()}

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


def plain(value: Any) -> Any:
    """A setting as plain config data: sequences as lists, mappings as dicts, paths as strings.

    Settings hash into the cache key, so a tuple default and the list a YAML file gives must be one value.
    """
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


def _capturing_settings(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a subclass constructor so ``self.settings`` is set from its bound arguments before it runs.

    Only the outermost constructor captures: a subclass's ``super().__init__(...)`` leaves the settings alone.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: DatasetSource, *args: Any, **kwargs: Any) -> None:
        if "settings" not in vars(self):
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            settings: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:  # after self
                if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    settings.update(value)
                else:
                    settings[name] = value
            self.settings = {k: plain(v) for k, v in settings.items()}
        init(self, *args, **kwargs)

    return __init__


def raw_files(path: str | os.PathLike) -> list[Path]:
    """All files of a raw dataset path (a file or a folder); a clear error when it doesn't exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"dataset path {str(p)!r} does not exist")
    return [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
