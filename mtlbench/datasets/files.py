"""Finding a dataset's raw files: the ``path`` setting, the files of a folder, and checks that name the file."""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtlbench.errors import ConfigError, DataError


def require_path(path: Any, dataset: str, hint: str) -> Path:
    """The dataset's ``path`` setting as a Path; a ConfigError that says what to pass when it is unset."""
    if path is None or str(path).strip() in ("", "???"):
        raise ConfigError(f"dataset {dataset!r} reads the files as published: set dataset.path=<{hint}>")
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise DataError(f"{p}: file not found (dataset {dataset!r} expects {hint})")
    return p


def find_files(path: Path, patterns: Sequence[str], dataset: str, hint: str, required: bool = True) -> list[Path]:
    """Files of ``path`` (a file, or a folder searched recursively) matching any glob in ``patterns``."""
    if path.is_file():
        return [path]
    found: list[Path] = []
    for pattern in patterns:
        found += [f for f in sorted(path.rglob(pattern)) if f.is_file() and f not in found]
    if required and not found:
        raise DataError(f"{path}: no file matching {' or '.join(patterns)} (dataset {dataset!r} expects {hint})")
    return found


def check_file(path: Path) -> None:
    """A one-line DataError when ``path`` is missing, a folder or empty."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)")


def is_gzip(path: Path) -> bool:
    """Whether the file is gzip-compressed (by its magic bytes, not its name)."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def open_binary(path: Path) -> io.BufferedIOBase:
    """The file's bytes, decompressed when it is gzip (both kinds of file are buffered binary streams)."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")
