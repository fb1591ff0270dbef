"""Building feature columns from read files: side-table joins, the user's previous items, time order.

Numeric scaling: every numeric feature of a log is z-scored when the data is loaded, with the training
split's statistics (``Feature.standardize``, :meth:`mtlbench.data.rows.ColumnRows.standardize`). The one
exception is :func:`standardize_side_table`, for a numeric attribute of a publisher's side table (one row per
user or per item, published as its own file, e.g. KuaiRand's user / video features): there the side table is
the unit, each user or item counted once whatever its number of impressions, and every dataset that uses it
says so in its docstring.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtlbench.data import spill
from mtlbench.data.order import Timeline
from mtlbench.data.schema import PAD
from mtlbench.datasets.raw_file import RawFile
from mtlbench.errors import DataError

#: rows of :func:`recent_items` built at a time
HISTORY_ROWS = 1 << 18


def join_rows(keys: np.ndarray, table_keys: np.ndarray, log: RawFile, column: str, table: RawFile) -> np.ndarray:
    """Row of a side table (users, items) holding each log key; unknown keys fail naming the log line."""
    order = np.argsort(table_keys, kind="stable")
    sorted_keys = table_keys[order]
    dup = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if len(dup):
        value = sorted_keys[dup[0]]
        row = int(np.flatnonzero(table_keys == value)[1])
        raise DataError(f"{table.at(row)}: column {column!r} repeats id {int(value)}; ids must be unique")
    if len(table_keys) == 0:
        raise DataError(f"{table.path}: the table has no rows")
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    found = sorted_keys[pos] == keys
    if not found.all():
        row = int(np.flatnonzero(~found)[0])
        raise DataError(
            f"{log.at(row)}: column {column!r} has id {int(keys[row])}, which {table.path.name} does not list"
        )
    return order[pos]


def recent_items(user: np.ndarray, item: np.ndarray, length: int) -> np.ndarray:
    """[N, length] the user's previous items, most recent first, PAD (-1) where there are fewer.

    Rows must be in time order; "previous" means earlier rows of the same user (the current row excluded).
    Built ``HISTORY_ROWS`` rows at a time into :func:`~mtlbench.data.spill.empty` (on disk while a cache entry is
    built), so its temporaries stay bounded whatever the row count.
    """
    timeline = Timeline(user)  # no time: the rows' order is their time order
    ordered, rank = item[timeline.order], timeline.rank
    lag = np.arange(1, length + 1)
    out = spill.empty((len(timeline), length), np.int64)
    for start in range(0, len(timeline), HISTORY_ROWS):
        pos = np.arange(start, min(len(timeline), start + HISTORY_ROWS))  # positions in the timeline
        prev = pos[:, None] - lag
        out[timeline.order[pos]] = np.where(rank[pos, None] >= lag, ordered[np.maximum(prev, 0)], PAD)
    return out


def time_order(*keys: np.ndarray) -> np.ndarray:
    """Stable row order by the given keys, most significant first (e.g. time, then user)."""
    return np.lexsort(tuple(reversed(keys)))


def standardize_side_table(x: np.ndarray, log: bool = False) -> np.ndarray:
    """z-score of a publisher's side-table column over its rows (each user / item once), of
    ``log1p(max(x, 0))`` when ``log``; float32, 0 for a constant column.

    Only for side tables whose rows are the unit (see the module docstring); a log's numeric features are
    scaled with training-split statistics at load time instead.
    """
    v = np.log1p(np.maximum(x, 0.0, dtype=np.float64)) if log else x.astype(np.float64)
    std = v.std()
    return ((v - v.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """np.concatenate without the copy when there is one array (on disk while a cache entry is built)."""
    return spill.concatenate(arrays)
