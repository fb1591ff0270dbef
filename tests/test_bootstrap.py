"""The paired bootstrap over test users (mtlbench.report.bootstrap): coverage of a known difference, a zero
difference, narrowing with more users, and equality with a slow loop over resamples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from mtlbench.errors import ConfigError
from mtlbench.report.bootstrap import (
    Predictions,
    draw_users,
    paired_bootstrap,
    read_predictions,
    resample_differences,
)
from mtlbench.rundir import write_parquet


def write_pair(
    root: Path,
    n_users: int,
    rows_per_user: int,
    base_signal: float,
    gain: float,
    seed: int,
    extra_noise: float = 0.5,
    fresh: bool = False,
) -> tuple[Path, Path, float, float]:
    """Two predictions files on the same test rows: base scores ``a y + u + e``, candidate scores the base's plus
    ``gain y + extra_noise e'`` (e, e' standard normal per row, u a user offset, y ~ Bernoulli(0.3)); ``fresh``:
    the candidate's ``(a + gain) y + u + e'`` instead (its own noise, of the base's variance).

    Returns the files and the true AUC and GAUC differences: overall AUC = Phi(a / sqrt(2 var)) with var the
    score noise variance around the class means (user offsets included), within a user Phi(a / sqrt(2 var_row)).
    """
    rng = np.random.default_rng(seed)
    n = n_users * rows_per_user
    users = np.repeat(rng.permutation(10 * n_users)[:n_users], rows_per_user)  # sparse, unsorted user ids
    y = (rng.random(n) < 0.3).astype(np.float32)
    offset = rng.normal(0.0, 0.7, n_users).repeat(rows_per_user)
    base = base_signal * y + offset + rng.normal(size=n)
    cand = base + gain * y + extra_noise * rng.normal(size=n)
    if fresh:
        cand, extra_noise = (base_signal + gain) * y + offset + rng.normal(size=n), 0.0
    rows = rng.permutation(n) * 3  # row ids as a split's: sparse, files written in another order than sorted
    auc_b = norm.cdf(base_signal / np.sqrt(2 * (1 + 0.49)))
    auc_c = norm.cdf((base_signal + gain) / np.sqrt(2 * (1 + 0.49 + extra_noise**2)))
    gauc_b = norm.cdf(base_signal / np.sqrt(2))
    gauc_c = norm.cdf((base_signal + gain) / np.sqrt(2 * (1 + extra_noise**2)))
    paths = []
    for name, scores in (("cand", cand), ("base", base)):
        path = root / f"{name}{seed}.parquet"
        write_parquet(
            path,
            {"row": rows, "user_id": users, "label_click": y, "score_click": (1 / (1 + np.exp(-scores))).astype("f4")},
        )
        paths.append(path)
    return paths[0], paths[1], float(auc_c - auc_b), float(gauc_c - gauc_b)


def read_pair(c: Path, b: Path) -> tuple[Predictions, Predictions]:
    return read_predictions(c, ["click"]), read_predictions(b, ["click"])


def test_the_interval_covers_a_known_difference(tmp_path):
    covered = {"auc": 0, "gauc": 0}
    detected = {"auc": 0, "gauc": 0}
    for rep in range(40):
        c, b, true_auc, true_gauc = write_pair(tmp_path, 150, 20, 0.6, 0.3, seed=rep)
        out = paired_bootstrap([read_pair(c, b)], ["click"], resamples=300, seed=rep)
        for metric, truth in (("auc", true_auc), ("gauc", true_gauc)):
            iv = out[("click", metric)]
            covered[metric] += iv.low <= truth <= iv.high
            detected[metric] += iv.low > 0
    # nominal 95%: 40 replicates cover 38 on average; 34 or fewer has probability < 1% under 0.94 coverage
    assert covered["auc"] >= 35 and covered["gauc"] >= 35, covered
    assert detected["auc"] >= 35 and detected["gauc"] >= 35, detected  # not covering by being wide: ~0.05 is seen


def test_the_point_estimate_is_the_full_data_difference(tmp_path):
    c, b, _, _ = write_pair(tmp_path, 100, 10, 0.5, 0.4, seed=1)
    pc, pb = read_pair(c, b)
    iv = paired_bootstrap([(pc, pb)], ["click"], ["auc"], resamples=50)[("click", "auc")]
    y = pc.labels["click"]
    assert iv.mean == pytest.approx(
        roc_auc_score(y, pc.scores["click"]) - roc_auc_score(y, pb.scores["click"]), abs=1e-12
    )
    assert iv.low < iv.mean < iv.high and iv.users == 100 and iv.seeds == 1 and iv.resamples == 50


def test_a_zero_difference_gives_an_interval_around_0(tmp_path):
    c, b, _, _ = write_pair(tmp_path, 200, 10, 0.5, 0.0, seed=3, extra_noise=0.0)  # the candidate = the base
    pc, pb = read_pair(c, b)
    same_ranks = Predictions(pc.rows, pc.users, pc.labels, {"click": 3 * pb.scores["click"] + 1})
    for cand in (pc, same_ranks):
        out = paired_bootstrap([(cand, pb)], ["click"], resamples=200)
        for metric in ("auc", "gauc"):
            iv = out[("click", metric)]
            assert iv.low == iv.high == iv.mean == pytest.approx(0.0, abs=1e-12)
    # the same signal with independent noise: a true difference of 0, an interval of some width that contains it
    c, b, true_auc, true_gauc = write_pair(tmp_path, 300, 10, 0.5, 0.0, seed=4, fresh=True)
    assert true_auc == true_gauc == 0.0
    for metric, iv in paired_bootstrap([read_pair(c, b)], ["click"], resamples=300).items():
        assert iv.low < 0.0 < iv.high and iv.high - iv.low > 0.01, metric


def test_the_interval_narrows_with_more_users(tmp_path):
    widths = []
    for n_users in (100, 1600):
        c, b, _, _ = write_pair(tmp_path, n_users, 10, 0.6, 0.3, seed=n_users)
        iv = paired_bootstrap([read_pair(c, b)], ["click"], ["auc"], resamples=300)[("click", "auc")]
        widths.append(iv.high - iv.low)
    assert widths[1] < widths[0] / 2.5  # sqrt(16) = 4 in theory


def _slow_auc_and_gauc(scores, labels, users, drawn):
    """A resample as a data set: every drawn user's rows repeated, AUC by scikit-learn, GAUC by a loop."""
    rows = np.concatenate([np.flatnonzero(users == u) for u in drawn])
    auc = roc_auc_score(labels[rows], scores[rows])
    num = den = 0.0
    for u in drawn:
        mine = users == u
        if 0 < labels[mine].sum() < mine.sum():
            num += mine.sum() * roc_auc_score(labels[mine], scores[mine])
            den += mine.sum()
    return auc, num / den


def test_vectorised_bootstrap_equals_a_loop_over_resamples():
    rng = np.random.default_rng(5)
    n = 90
    users = rng.choice([7, 11, 13, 20, 21, 30, 31, 40, 55, 60], n)
    labels = (rng.random(n) < 0.4).astype(np.float64)
    labels[rng.random(n) < 0.1] = np.nan  # rows without a label of this task
    pairs = []
    for _ in range(2):  # two seeds
        base = np.round(rng.random(n), 1).astype(np.float32)  # many tied scores
        cand = np.round(np.clip(base + 0.3 * labels - 0.1, 0, 1), 1).astype(np.float32)
        pairs.append(
            (
                Predictions(np.arange(n), users, {"t": labels}, {"t": cand}),
                Predictions(np.arange(n), users, {"t": labels}, {"t": base}),
            )
        )
    fast = resample_differences(pairs, ["t"], ["auc", "gauc"], resamples=12, seed=9)
    ids = np.unique(users)
    keep = ~np.isnan(labels)
    for b in range(12):
        drawn = ids[draw_users(len(ids), b, 9)]
        slow = {"auc": [], "gauc": []}
        for c, p in pairs:
            ca, cg = _slow_auc_and_gauc(c.scores["t"][keep], labels[keep], users[keep], drawn)
            ba, bg = _slow_auc_and_gauc(p.scores["t"][keep], labels[keep], users[keep], drawn)
            slow["auc"].append(ca - ba)
            slow["gauc"].append(cg - bg)
        for metric in ("auc", "gauc"):
            assert fast.resampled[("t", metric)][b] == pytest.approx(np.mean(slow[metric]), abs=1e-9), (b, metric)


def test_runs_on_different_rows_are_refused(tmp_path):
    c, b, _, _ = write_pair(tmp_path, 20, 5, 0.5, 0.1, seed=0)
    pc, pb = read_pair(c, b)
    shifted = Predictions(pb.rows + 1, pb.users, pb.labels, pb.scores)
    with pytest.raises(ConfigError, match="different test rows"):
        paired_bootstrap([(pc, shifted)], ["click"])
    with pytest.raises(ConfigError, match="lacks the column"):
        read_predictions(c, ["purchase"])
