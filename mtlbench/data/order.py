"""Per-user time order: where each row stands in its user's timeline.

One sort serves every per-user computation (the per-user time split, the user's previous items, STAN's
counter and pseudo-labels, the rule-based stage): rows are grouped by user and, within a user, ordered by
time, ties by row number (a stable sort, so equal times keep table order). Without a time the table's row
order is the time order. Arrays of a :class:`Timeline` are indexed by *position* in that order.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

import numpy as np

Span = Literal["earlier_rows", "earlier_times", "user"]


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """For rows sorted by ``keys``: the position of the first row of each row's run of equal keys."""
    n = len(keys[0])
    new = np.ones(n, dtype=bool)
    if n:
        new[1:] = np.zeros(n - 1, dtype=bool)
        for k in keys:
            new[1:] |= k[1:] != k[:-1]
    return np.maximum.accumulate(np.where(new, np.arange(n), 0))


def exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    """``out[i] = x[:i].sum(0)`` in float64, with one extra leading row so ``out[n]`` is the total."""
    out = np.zeros((len(x) + 1, *x.shape[1:]), dtype=np.float64)
    np.cumsum(x, axis=0, out=out[1:])
    return out


class Timeline:
    """Every user's rows in time order (ties by row number), one user after another.

    ``order[p]`` is the table row at position ``p``; ``user`` / ``time`` are the sorted keys; ``first[p]``
    and ``end[p]`` bound the positions of that row's user (``end`` is one past the last).
    """

    def __init__(self, user: np.ndarray, time: np.ndarray | None = None) -> None:
        user = np.asarray(user)
        self.order = np.argsort(user, kind="stable") if time is None else np.lexsort((np.asarray(time), user))
        self.user = user[self.order]
        self.time = None if time is None else np.asarray(time)[self.order]
        self.first = run_starts(self.user)
        ends = np.flatnonzero(np.append(self.user[1:] != self.user[:-1], True)) + 1  # one past each user's rows
        self.end = np.repeat(ends, np.diff(np.append(0, ends))) if len(user) else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.order)

    @property
    def rank(self) -> np.ndarray:
        """0-based position of each row in its user's timeline."""
        return np.arange(len(self.order)) - self.first

    @property
    def length(self) -> np.ndarray:
        """Number of rows of each row's user."""
        return self.end - self.first

    @cached_property
    def first_at_time(self) -> np.ndarray:
        """Position of the user's first row with this row's time (without a time, every row has its own)."""
        return np.arange(len(self.order)) if self.time is None else run_starts(self.user, self.time)

    def sum(self, x: np.ndarray, span: Span) -> np.ndarray:
        """float64 sums of ``x`` (given in timeline order, [N] or [N, K]) over the user's rows in ``span``.

        ``earlier_rows``: the rows before this one in the timeline; ``earlier_times``: the rows strictly
        earlier in time (rows at the same time as this one don't count); ``user``: all the user's rows.
        """
        c = exclusive_cumsum(x)
        if span == "earlier_rows":
            upto = c[:-1]
        elif span == "earlier_times":
            upto = c[self.first_at_time]
        elif span == "user":
            upto = c[self.end]
        else:
            raise ValueError(f"unknown span {span!r}; spans are earlier_rows, earlier_times, user")
        return upto - c[self.first]

    def to_rows(self, values: np.ndarray) -> np.ndarray:
        """Values given in timeline order, put back in table row order."""
        out = np.empty_like(values)
        out[self.order] = values
        return out
