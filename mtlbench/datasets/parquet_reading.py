"""Reading Parquet files into the same :class:`~mtlbench.datasets.raw_file.RawFile` as CSV, with the same errors.

A missing or duplicated column names the file and the column; a value that cannot be read as the column's
kind (a word in a number column, a fraction in an integer column) names the file, the row and the column.
Rows are counted from 0, as pyarrow and pandas count them. The file is read column by column with pyarrow
(no Python loop over rows); the first bad value of a column that fails to convert is found by bisection, a
few casts of shrinking slices.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtlbench.datasets.files import check_file
from mtlbench.datasets.raw_file import Kind, RawFile
from mtlbench.datasets.vocabulary import Categories
from mtlbench.errors import DataError

#: arrow type each number kind is converted to (categories are kept as their values)
TARGET: dict[str, pa.DataType] = {"int": pa.int64(), "float": pa.float32(), "label": pa.float32()}


def read_parquet(path: str | os.PathLike, columns: Mapping[str, Kind]) -> RawFile:
    """Read the named ``columns`` of a Parquet file; ``columns`` maps names to kinds as for ``read_csv``."""
    path = Path(path).expanduser()
    check_file(path)
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot be read as Parquet ({str(e).strip().splitlines()[0]})") from None
    _check_columns(path, names, list(columns))
    table = pq.read_table(path, columns=list(columns))
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    out: dict[str, Any] = {}
    nulls: dict[str, np.ndarray] = {}
    for name, kind in columns.items():
        col = table.column(name).combine_chunks()
        if kind == "cat":
            out[name] = Categories.of(col)
            continue
        values = _cast(path, name, col, kind)
        if kind == "int":  # as read_csv: nulls in a mask, NaN in a float column
            if values.null_count:
                nulls[name] = values.is_null().to_numpy(zero_copy_only=False)
            out[name] = values.fill_null(0).to_numpy(zero_copy_only=False, writable=True)
        else:
            out[name] = values.fill_null(np.nan).to_numpy(zero_copy_only=False, writable=True)
    return RawFile(path, out, 0, nulls, unit="row")


def _check_columns(path: Path, names: list[str], wanted: list[str]) -> None:
    """A one-line DataError for a duplicated or missing column (with the closest name when misspelt)."""
    for c in wanted:
        if names.count(c) > 1:
            raise DataError(f"{path}: column {c!r} appears twice")
    missing = [c for c in wanted if c not in names]
    if missing:
        close = difflib.get_close_matches(missing[0], names, n=1, cutoff=0.6)
        hint = f" (the file has {close[0]!r}: misspelt?)" if close else ""
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise DataError(f"{path}: missing column {missing[0]!r}{hint}; the file has: {shown}")


def _cast(path: Path, name: str, col: pa.Array, kind: str) -> pa.Array:
    """The column as its kind's arrow type; the first value that does not convert fails naming its row."""
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    target = TARGET[kind]
    try:
        return pc.cast(col, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    lo, hi = 0, len(col)  # the first failing row lies in [lo, hi): halve until one row is left
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(col.slice(lo, mid - lo), target)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    value = col[lo].as_py()
    what = "an integer" if kind == "int" else "a number"
    raise DataError(f"{path}: row {lo}: column {name!r} has {value!r}, expected {what} (the column is {col.type})")
