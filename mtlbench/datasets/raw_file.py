"""The columns read from one raw file, and the conversions that name the file, line and column of a bad value.

Every reader (:func:`~mtlbench.datasets.csv_reading.read_csv`,
:func:`~mtlbench.datasets.parquet_reading.read_parquet`) returns a :class:`RawFile`; a dataset takes its
columns over with the checks here (0/1 labels, finite numbers, integers present, documented values), so a bad
value in a publisher's file and in a user's own table fails with the same one line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from mtlbench.data import spill
from mtlbench.datasets.vocabulary import decode_values
from mtlbench.errors import DataError

#: how a column is read: a category (text, see :class:`~mtlbench.datasets.vocabulary.Categories`), an
#: integer, a float, or a 0/1 label (float, NaN = empty)
Kind = Literal["cat", "int", "float", "label"]


class RawFile:
    """The columns read from one file, and the conversions that name the file and line of a bad value.

    Number columns are numpy arrays (float32 with NaN for empty cells; int64, with the empty cells in
    ``nulls``), categorical ones :class:`~mtlbench.datasets.vocabulary.Categories`. A location is a physical
    ``line`` of a text file (``first_line`` is the line of data row 0) or a ``row`` of a columnar file.
    """

    def __init__(
        self,
        path: Path,
        columns: dict[str, Any],
        first_line: int,
        nulls: dict[str, np.ndarray] | None = None,
        unit: Literal["line", "row"] = "line",
    ) -> None:
        self.path = path
        self.columns = columns
        self.first_line = first_line  # line (or row) number of data row 0
        self.nulls = nulls or {}
        self.unit = unit
        self.num_rows = len(next(iter(columns.values()))) if columns else 0

    def at(self, row: int) -> str:
        """Where data row ``row`` is: ``<file>: line <n>``."""
        return f"{self.path}: {self.unit} {self.first_line + int(row)}"

    def __getitem__(self, name: str) -> Any:
        return self.columns[name]

    def pop(self, name: str) -> Any:
        """Hand a column over and forget it (its memory goes with the caller's reference)."""
        return self.columns.pop(name)

    def label(self, name: str, allow_missing: bool = False) -> np.ndarray:
        """A 0/1 label column as float32 (NaN = missing); other values fail with file, column and line."""
        y = self.pop(name)
        ok = (y == 0) | (y == 1)
        if allow_missing:
            ok |= np.isnan(y)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            if np.isnan(y[row]):
                raise DataError(
                    f"{self.at(row)}: label column {name!r} is empty/NaN; this dataset's labels must be 0 or 1"
                )
            raise DataError(f"{self.at(row)}: label column {name!r} has value {_fmt(y[row])}; labels must be 0 or 1")
        return y

    def numeric(self, name: str, fill: float | None = 0.0) -> np.ndarray:
        """A numeric feature as float32; empty cells become ``fill`` (``None``: they fail with the line);
        infinities fail with the line."""
        x = self.pop(name)
        bad = np.isinf(x)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{self.at(row)}: column {name!r} has value {_fmt(x[row])}, expected a finite number")
        missing = np.isnan(x)
        if missing.any():
            if fill is None:
                row = int(np.flatnonzero(missing)[0])
                raise DataError(
                    f"{self.at(row)}: numeric column {name!r} is empty/NaN; it must hold a number "
                    "(fill missing values first)"
                )
            x[missing] = fill
        return x

    def integer(self, name: str, allow_missing: bool = False, fill: int = -1) -> np.ndarray:
        """An integer column (ids, times) as int64; an empty cell fails with the line (or is ``fill``)."""
        x = self.pop(name)
        nulls = self.nulls.get(name)
        if nulls is not None and nulls.any():
            if not allow_missing:
                row = int(np.flatnonzero(nulls)[0])
                raise DataError(f"{self.at(row)}: column {name!r} is empty; it must hold an integer")
            x[nulls] = fill
        return x

    def check_known(self, column: str, known: Callable[[str], bool], expected: str) -> None:
        """One-line DataError (file, line, value) for the first row whose text in ``column`` fails ``known``.

        For a scenario field whose values the publisher documents: an unknown value is an error, not a new
        scenario. ``known`` is called once per distinct text (not per row); an empty cell always fails.
        """
        ids, texts = decode_values(self[column])
        bad = (ids < 0) | np.isin(ids, [i for i, t in enumerate(texts) if t is None or not known(t)])
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = texts[ids[row]] if ids[row] >= 0 else ""
            raise DataError(f"{self.at(row)}: column {column!r} has {value!r}; expected {expected}")


class NumberSink:
    """Float or int values block by block into a preallocated array (on disk while a cache entry is built);
    nulls -> NaN (float) or a mask (int)."""

    def __init__(self, capacity: int, dtype: Any) -> None:
        self.values = spill.empty(capacity, dtype)
        self.nulls: np.ndarray | None = None

    def add(self, chunk: pa.Array, offset: int) -> None:
        if chunk.null_count and self.values.dtype.kind != "f":
            if self.nulls is None:
                self.nulls = spill.full(len(self.values), False, bool)
            self.nulls[offset : offset + len(chunk)] = chunk.is_null().to_numpy(zero_copy_only=False)
            chunk = chunk.fill_null(0)
        self.values[offset : offset + len(chunk)] = chunk.to_numpy(zero_copy_only=False)

    def finish(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.values[:n], (self.nulls[:n] if self.nulls is not None else None)


def _fmt(v: float) -> str:
    return repr(int(v)) if float(v).is_integer() else repr(float(v))
