"""Paired bootstrap over test users: the confidence interval of a metric difference between two models.

For a candidate run and a base run with the same seed and data (their ``predictions.parquet`` hold the same test
rows), users are drawn with replacement ``resamples`` times (seeded); each model's metric is recomputed on every
resample, a user's rows weighted by how often the user was drawn, and the statistic is the difference. Seeds pool
by averaging their differences under the same draws (the test users are the same in every seed of a cell), so the
percentile interval is the test users' sampling uncertainty of the mean difference over those seeds; the t-test
over seeds (:mod:`mtlbench.report.stats`) is the training-randomness side.

Vectorised, no loop over users: a resample x user count matrix (resample ``b`` draws ``n_users`` users from its
own stream ``default_rng([seed, b])``); the AUC of every resample from one sort of each model's scores (weighted
Mann-Whitney U, tied scores counted 1/2, as :func:`mtlbench.metrics.functional.grouped_auc`); GAUC from the
per-user AUCs, which a resample does not change (a user's rows are drawn together), only their weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtlbench.errors import ConfigError

#: metrics the bootstrap recomputes on resamples of users
METRICS = ("auc", "gauc")
#: resample x row elements per chunk (bounds the memory of the weighted AUC: a few arrays of this size)
CHUNK_ELEMENTS = 2**22


@dataclass
class Interval:
    """The mean difference (candidate - base, over seeds) and its percentile interval over resamples."""

    mean: float
    low: float
    high: float
    seeds: int
    users: int
    resamples: int


@dataclass
class Predictions:
    """One run's test predictions: row ids, user ids and per task the labels and scores."""

    rows: np.ndarray
    users: np.ndarray
    labels: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]


def read_predictions(path: str | Path, tasks: Sequence[str]) -> Predictions:
    """Read ``row``, ``user_id``, ``label_<task>`` and ``score_<task>`` of a predictions file, in row order."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no predictions file {path} (runs with predictions=false cannot be bootstrapped)")
    columns = ["row", "user_id", *(f"{k}_{t}" for t in tasks for k in ("label", "score"))]
    have = set(pq.read_schema(path).names)
    missing = [c for c in columns if c not in have]
    if missing:
        raise ConfigError(f"{path} lacks the column(s) {missing} (has {sorted(have)})")
    table = pq.read_table(path, columns=columns)
    data = {c: table.column(c).to_numpy() for c in columns}
    order = np.argsort(data["row"], kind="stable")
    return Predictions(
        data["row"][order],
        data["user_id"][order],
        {t: data[f"label_{t}"][order].astype(np.float64) for t in tasks},
        {t: data[f"score_{t}"][order] for t in tasks},
    )


def draw_users(n_users: int, resample: int, seed: int) -> np.ndarray:
    """The users (indices in ``[0, n_users)``) drawn with replacement in resample ``resample``."""
    return np.random.default_rng([seed, resample]).integers(0, n_users, size=n_users)


def user_counts(n_users: int, resamples: range, seed: int) -> np.ndarray:
    """``[len(resamples), n_users]``: how often each user is drawn in each of the given resamples (float32)."""
    draws = np.stack([draw_users(n_users, b, seed) for b in resamples]) if len(resamples) else np.zeros((0, 0))
    offsets = np.arange(len(resamples))[:, None] * n_users
    flat = (draws.astype(np.int64) + offsets).ravel()
    counts = np.bincount(flat, minlength=len(resamples) * n_users).reshape(len(resamples), n_users)
    return counts.astype(np.float32)  # small integers: exact, and half the memory traffic of float64


@dataclass
class RankedScores:
    """One model's scores of one task, sorted once for the weighted AUC of any number of resamples."""

    pos_users: np.ndarray  # user index of every positive row
    neg_users: np.ndarray  # user index of every negative row, in ascending score order
    lower: np.ndarray  # per positive: the negatives that score lower
    lower_or_tied: np.ndarray  # per positive: the negatives that score lower or the same

    @classmethod
    def of(cls, scores: np.ndarray, labels: np.ndarray, users: np.ndarray) -> RankedScores:
        pos = labels > 0.5
        order = np.argsort(scores[~pos], kind="stable")
        neg_scores = scores[~pos][order]
        return cls(
            users[pos],
            users[~pos][order],
            np.searchsorted(neg_scores, scores[pos], side="left"),
            np.searchsorted(neg_scores, scores[pos], side="right"),
        )

    def auc(self, counts: np.ndarray) -> np.ndarray:
        """AUC per resample (rows of ``counts``, the users' weights); NaN where a class has no weight."""
        # float32 stays exact (integers below 2**24) while count x cumulative count does: fewer than 2**18
        # negatives, a user drawn < 32 times; products are summed in float64
        dtype = np.float32 if len(self.neg_users) < 2**18 else np.float64
        neg = counts[:, self.neg_users].astype(dtype, copy=False)
        cum = np.zeros((len(counts), neg.shape[1] + 1), dtype=dtype)
        np.cumsum(neg, axis=1, out=cum[:, 1:])
        pos = counts[:, self.pos_users].astype(dtype, copy=False)
        # each positive beats the lower negatives and ties the tied ones: (lower + lower_or_tied) / 2
        twice_u = (pos * (cum[:, self.lower] + cum[:, self.lower_or_tied])).sum(axis=1, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return twice_u / (2.0 * pos.sum(axis=1, dtype=np.float64) * cum[:, -1].astype(np.float64))


@dataclass
class UserAUC:
    """One model's per-user AUC of one task (GAUC's terms): numerator and denominator weights per user."""

    weighted_auc: np.ndarray  # [n_users] impressions x AUC of the users with both classes, else 0
    impressions: np.ndarray  # [n_users] impressions of the users with both classes, else 0

    @classmethod
    def of(cls, scores: np.ndarray, labels: np.ndarray, users: np.ndarray, n_users: int) -> UserAUC:
        import torch

        from mtlbench.metrics.functional import grouped_auc

        auc, impressions, valid = grouped_auc(
            torch.from_numpy(scores.astype(np.float64)),  # float64 out: exact per-user AUCs
            torch.from_numpy(labels),
            torch.from_numpy(users.astype(np.int64)),
        )
        present = np.unique(users)  # grouped_auc's groups: the distinct ids in ascending order
        ok = valid.numpy()
        n = np.zeros(n_users)
        a = np.zeros(n_users)
        n[present[ok]] = impressions.numpy()[ok]
        a[present[ok]] = auc.double().numpy()[ok] * n[present[ok]]
        return cls(a, n)

    def gauc(self, counts: np.ndarray) -> np.ndarray:
        """Impression-weighted mean of the users' AUC per resample (rows of ``counts``)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (counts @ self.weighted_auc) / (counts @ self.impressions)


def _metric_fn(
    metric: str, scores: np.ndarray, labels: np.ndarray, users: np.ndarray, n_users: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The metric of one model's rows as a function of the users' counts (one row per resample)."""
    if metric == "auc":
        return RankedScores.of(scores, labels, users).auc
    if metric == "gauc":
        return UserAUC.of(scores, labels, users, n_users).gauc
    raise ConfigError(f"the user bootstrap computes {list(METRICS)}, not {metric!r}")


def _pair(candidate: Predictions, base: Predictions, where: str) -> None:
    same = np.array_equal(candidate.rows, base.rows) and np.array_equal(candidate.users, base.users)
    if not same or any(not np.array_equal(v, base.labels[t], equal_nan=True) for t, v in candidate.labels.items()):
        raise ConfigError(f"{where}: the two runs' predictions hold different test rows (not the same data?)")


@dataclass
class Resampled:
    """Per (task, metric): each usable pair's difference on the full data and the pooled difference per resample."""

    point: dict[tuple[str, str], list[float]]
    resampled: dict[tuple[str, str], np.ndarray]  # [resamples]: the mean over pairs of candidate - base
    users: int


def resample_differences(
    pairs: Sequence[tuple[Predictions, Predictions]],
    tasks: Sequence[str],
    metrics: Sequence[str] = METRICS,
    resamples: int = 1000,
    seed: int = 0,
) -> Resampled:
    """Candidate - base per (task, metric) on the full data and on every resample of users.

    ``pairs``: (candidate, base) predictions of the same seed and data. Users are drawn once per resample and the
    same draw applies to every pair, whose differences are averaged (a pair where the metric is undefined on the
    full data is left out of that task and metric).
    """
    if resamples < 1:
        raise ConfigError(f"bootstrap resamples must be >= 1, got {resamples}")
    if not pairs:
        return Resampled({}, {}, 0)
    for i, (c, b) in enumerate(pairs):
        _pair(c, b, f"seed pair {i}")
    ids, inverse = np.unique(np.concatenate([c.users for c, _ in pairs]), return_inverse=True)
    n_users = len(ids)
    offsets = np.cumsum([0, *(len(c.users) for c, _ in pairs)])
    users = [inverse[offsets[i] : offsets[i + 1]] for i in range(len(pairs))]
    ones = np.ones((1, n_users), dtype=np.float32)

    # per (task, metric): for each usable pair, the two models' metric as a function of the user counts
    fns: dict[tuple[str, str], list[tuple]] = {}
    point: dict[tuple[str, str], list[float]] = {}
    for t in tasks:
        for m in metrics:
            for (c, b), u in zip(pairs, users):
                keep = ~np.isnan(c.labels[t])
                y, uk = c.labels[t][keep], u[keep]
                fc = _metric_fn(m, c.scores[t][keep], y, uk, n_users)
                fb = _metric_fn(m, b.scores[t][keep], y, uk, n_users)
                full = float(fc(ones)[0] - fb(ones)[0])
                if np.isfinite(full):
                    fns.setdefault((t, m), []).append((fc, fb))
                    point.setdefault((t, m), []).append(full)
    rows = max(len(c.users) for c, _ in pairs)
    chunk = max(1, min(resamples, CHUNK_ELEMENTS // max(rows, 1)))
    diffs: dict[tuple[str, str], list[np.ndarray]] = {k: [] for k in fns}
    for start in range(0, resamples, chunk):
        counts = user_counts(n_users, range(start, min(start + chunk, resamples)), seed)
        for key, models in fns.items():
            diffs[key].append(np.mean([fc(counts) - fb(counts) for fc, fb in models], axis=0))
    return Resampled(point, {k: np.concatenate(v) for k, v in diffs.items()}, n_users)


def paired_bootstrap(
    pairs: Sequence[tuple[Predictions, Predictions]],
    tasks: Sequence[str],
    metrics: Sequence[str] = METRICS,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[tuple[str, str], Interval]:
    """Candidate - base per (task, metric): the mean over the pairs (seeds) and its percentile interval over
    resamples of users (:func:`resample_differences`)."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    r = resample_differences(pairs, tasks, metrics, resamples, seed)
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for key, pooled in r.resampled.items():
        low, high = np.nanquantile(pooled, [alpha, 1.0 - alpha])
        out[key] = Interval(
            float(np.mean(r.point[key])), float(low), float(high), len(r.point[key]), r.users, resamples
        )
    return out
