"""Statistics of a leaderboard: mean ± std over seeds, RelaImpr (STAN Eq. 15-16), significance tests, paired
differences with their t interval, and the row-wise tests of many rows against their reference rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from mtlbench.errors import ConfigError

#: significance tests by name: the STAN paper's paired t-test and SFPNet's Mann-Whitney U test
TESTS = {"ttest": "paired t-test", "mannwhitney": "Mann-Whitney U test"}
MIN_SEEDS_FOR_TEST = 3
#: the note of a paired t-test whose differences are all equal (t infinite, or undefined for 0)
CONSTANT = "constant paired differences"


def base_metric(metric: str) -> str:
    """The metric of a per-group key: ``auc@scenario=2`` and ``auc@stage=Wander`` -> ``auc`` (``ndcg@5`` stays)."""
    head, sep, tail = metric.partition("@")
    return head if sep and "=" in tail else metric


def higher_is_better(metric: str) -> bool:
    """Direction of a results key (``logloss``, ``ndcg@5``, ``auc@scenario=2``) from its metric class's
    ``higher_is_better``; higher for a name no installed metric claims."""
    from mtlbench.metrics import higher_is_better as registered  # imports torch: only when a report needs it

    return registered(metric, default=True)


def is_auc_like(metric: str) -> bool:
    """AUC-type metrics, whose random-guess value is 0.5 (AUC, GAUC, S-GAUC and their per-group forms)."""
    return base_metric(metric) in ("auc", "gauc", "sgauc")


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and count."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0, len(x)


def format_mean_std(mean: float, std: float, n: int) -> str:
    """``mean ± std`` to 4 places; the mean alone for one value (it has no spread to show)."""
    return f"{mean:.4f}" if n == 1 else f"{mean:.4f} ± {std:.4f}"


def relaimpr(metric: str, measured: float, base: float) -> float | None:
    """Relative improvement over the base model in percent.

    STAN Eq. 15 for AUC-type metrics (relative to the random guesser's 0.5):
    ``(AUC(measured) - 0.5) / (AUC(base) - 0.5) - 1``; Eq. 16 for NDCG@k: ``NDCG(measured) / NDCG(base) - 1``.
    Not defined for logloss (lower is better) nor for a base at 0.5 (AUC) or 0 (NDCG): None.
    """
    if measured is None or base is None or not (math.isfinite(measured) and math.isfinite(base)):
        return None
    if is_auc_like(metric):
        if base == 0.5:
            return None
        return ((measured - 0.5) / (base - 0.5) - 1.0) * 100.0  # Eq. 15
    if base_metric(metric).startswith("ndcg"):
        if base == 0:
            return None
        return (measured / base - 1.0) * 100.0  # Eq. 16
    return None


@dataclass
class TestResult:
    """Outcome of a significance test of ``best`` against ``baseline`` in one column."""

    test: str
    n: int
    p: float | None
    statistic: float | None = None
    note: str = ""

    @property
    def mark(self) -> str:
        """``**`` for p < 0.01, ``*`` for p < 0.05, else empty."""
        if self.p is None or not math.isfinite(self.p):
            return ""
        return "**" if self.p < 0.01 else "*" if self.p < 0.05 else ""


def significance(
    best: dict[int, float], baseline: dict[int, float], test: str = "ttest", min_n: int = MIN_SEEDS_FOR_TEST
) -> TestResult:
    """Two-sided test of the best model against the best baseline over seeds.

    ``ttest``: paired t-test over the seeds both have (the STAN paper's). ``mannwhitney``: Mann-Whitney U
    test (SFPNet's), which does not need pairs: all seeds of each side. With fewer than ``min_n``
    (:data:`MIN_SEEDS_FOR_TEST`) seeds on a side no test is run (``p`` is None and ``note`` says why).
    Note that with 3 seeds per side the smallest two-sided Mann-Whitney p-value is 0.1.
    """
    if test not in TESTS:
        raise ConfigError(f"unknown significance test {test!r}; known: {', '.join(TESTS)}")
    if test == "ttest":
        seeds = sorted(set(best) & set(baseline))
        a = np.array([best[s] for s in seeds])
        b = np.array([baseline[s] for s in seeds])
        n = len(seeds)
        if n < min_n:
            return TestResult(test, n, None, note=f"no test: {n} paired seed(s), needs {min_n}")
        d = a - b
        if np.all(d == d[0]):  # constant differences: t is infinite (or undefined for 0)
            p = 1.0 if d[0] == 0 else 0.0
            return TestResult(test, n, p, None, CONSTANT)
        r = stats.ttest_rel(a, b)
        return TestResult(test, n, float(r.pvalue), float(r.statistic))
    a, b = np.array(list(best.values())), np.array(list(baseline.values()))
    n = min(len(a), len(b))
    if n < min_n:
        return TestResult(test, n, None, note=f"no test: {n} seed(s) on one side, needs {min_n}")
    r = stats.mannwhitneyu(a, b, alternative="two-sided")
    return TestResult(test, n, float(r.pvalue), float(r.statistic))


@dataclass
class RowTests:
    """Outcome of :func:`tests_against`, one entry per row."""

    p: np.ndarray  # two-sided p-value; NaN: not tested (fewer than ``min_n`` seeds)
    statistic: np.ndarray  # t (ttest) or U (mannwhitney); NaN when not tested or the differences are constant
    n: np.ndarray  # ttest: the seeds both rows have; mannwhitney: the fewer seeds of the two sides
    diff: np.ndarray  # ttest: mean over the paired seeds of row - reference; mannwhitney: difference of the means
    constant: np.ndarray  # ttest: the paired differences are all equal (p is 1 if they are 0, else 0)


def tests_against(a: np.ndarray, b: np.ndarray, test: str = "ttest", min_n: int = MIN_SEEDS_FOR_TEST) -> RowTests:
    """:func:`significance` of each row of ``a`` against the same row of ``b`` (``[rows, seeds]``, NaN: no value).

    ``ttest``: paired over the seeds where both have a value; ``mannwhitney``: all the values of each side. Rows
    with fewer than ``min_n`` pairs (ttest) or values on a side (mannwhitney) get p = NaN.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    rows = len(a)
    p, statistic, diff = np.full(rows, np.nan), np.full(rows, np.nan), np.full(rows, np.nan)
    n, constant = np.zeros(rows, dtype=int), np.zeros(rows, dtype=bool)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):  # a loop over table rows
        xs = {s: float(v) for s, v in enumerate(x) if np.isfinite(v)}
        ys = {s: float(v) for s, v in enumerate(y) if np.isfinite(v)}
        r = significance(xs, ys, test, min_n)
        n[i] = r.n
        if test == "ttest":
            both = sorted(set(xs) & set(ys))
            diff[i] = np.mean([xs[s] - ys[s] for s in both]) if both else np.nan
        elif xs and ys:
            diff[i] = np.mean(list(xs.values())) - np.mean(list(ys.values()))
        if r.p is not None:
            p[i] = r.p
            statistic[i] = np.nan if r.statistic is None else r.statistic
            constant[i] = r.note == CONSTANT
    return RowTests(p, statistic, n, diff, constant)


@dataclass
class PairedDifference:
    """Candidate - base over the seeds both have: mean, t interval (None below 2 seeds) and the paired t-test."""

    mean: float
    low: float | None
    high: float | None
    test: TestResult


def paired_difference(
    candidate: dict[int, float], base: dict[int, float], confidence: float = 0.95
) -> PairedDifference | None:
    """Mean of the paired differences with its Student-t interval, and :func:`significance`'s paired t-test.

    None when no seed has both values.
    """
    seeds = sorted(set(candidate) & set(base))
    if not seeds:
        return None
    d = np.array([candidate[s] - base[s] for s in seeds])
    mean = float(d.mean())
    low = high = None
    if len(d) > 1:
        half = float(stats.t.ppf(0.5 + confidence / 2.0, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
        low, high = mean - half, mean + half
    return PairedDifference(mean, low, high, significance(candidate, base, "ttest"))


def ranks(means: Sequence[float], higher: bool = True) -> list[int | None]:
    """Dense rank of each value (1 = best, ties share a rank); None for NaN."""
    finite = sorted({m for m in means if m is not None and math.isfinite(m)}, reverse=higher)
    pos = {m: i + 1 for i, m in enumerate(finite)}
    return [pos.get(m) if m is not None and math.isfinite(m) else None for m in means]
