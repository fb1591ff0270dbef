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
from mtlbench.datasets.raw_file import Kind, NumberSink, RawFile
from mtlbench.datasets.vocabulary import CategoryBuilder
from mtlbench.errors import DataError

#: arrow type each number kind is converted to (categories are kept as their values)
TARGET: dict[str, pa.DataType] = {"int": pa.int64(), "float": pa.float32(), "label": pa.float32()}
#: rows per record batch read
BATCH_ROWS = 1 << 18


def read_parquet(path: str | os.PathLike, columns: Mapping[str, Kind]) -> RawFile:
    """Read the named ``columns`` of a Parquet file; ``columns`` maps names to kinds as for ``read_csv``.

    Record batches stream into preallocated outputs (the row count is in the file's metadata), as
    :func:`~mtlbench.datasets.csv_reading.read_csv` does: memory holds the outputs (on disk while a cache
    entry is built, :mod:`mtlbench.data.spill`) plus one batch, never the whole table.
    """
    path = Path(path).expanduser()
    check_file(path)
    try:
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot be read as Parquet ({str(e).strip().splitlines()[0]})") from None
    _check_columns(path, names, list(columns))
    n = file.metadata.num_rows
    if n == 0:
        raise DataError(f"{path}: the file has no rows")
    sinks = {
        c: CategoryBuilder(n) if k == "cat" else NumberSink(n, np.int64 if k == "int" else np.float32)
        for c, k in columns.items()
    }
    offset = 0
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=list(columns)):
        for name, kind in columns.items():
            col = batch.column(name)
            if kind == "cat":
                if not pa.types.is_dictionary(col.type):
                    col = pc.dictionary_encode(col.cast(pa.string()))
                sinks[name].add(col, offset)
            else:
                sinks[name].add(_cast(path, name, col, kind, offset), offset)
        offset += batch.num_rows
    out: dict[str, Any] = {}
    nulls: dict[str, np.ndarray] = {}
    for c, sink in sinks.items():
        if isinstance(sink, CategoryBuilder):
            out[c] = sink.finish(n)
        else:
            out[c], mask = sink.finish(n)
            if mask is not None:
                nulls[c] = mask
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


def _cast(path: Path, name: str, col: pa.Array, kind: str, offset: int = 0) -> pa.Array:
    """The column as its kind's arrow type; the first value that does not convert fails naming its row
    (``offset``: the file row of the column's first value)."""
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
    raise DataError(
        f"{path}: row {offset + lo}: column {name!r} has {value!r}, expected {what} (the column is {col.type})"
    )
