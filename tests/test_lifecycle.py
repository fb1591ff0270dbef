"""The lifecycle simulator: determinism, schema, label logic, history without leakage, stage effects."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mtlbench.data.schema import PAD
from mtlbench.datasets.lifecycle import N_STAGES, TASKS, LifecycleSimulator
from mtlbench.registry import DATASETS

SMALL = dict(n_users=500, n_items=400, n_rows=20000, seq_len=6, seed=3)
NEW, WANDER, STICK, LOYAL = range(N_STAGES)


@pytest.fixture(scope="module")
def small():
    return LifecycleSimulator(**SMALL).simulate()


def rate(columns: dict[str, np.ndarray], task: str, mask: np.ndarray) -> float:
    return float(columns[task][mask].mean())


def test_registered():
    assert DATASETS.get("lifecycle") is LifecycleSimulator


def test_deterministic_per_seed(small):
    schema, again = LifecycleSimulator(**SMALL).build()
    assert again.keys() == small.columns.keys()
    for k, v in small.columns.items():
        np.testing.assert_array_equal(v, again[k], err_msg=k)
    _, other = LifecycleSimulator(**{**SMALL, "seed": 4}).build()
    for k in ("item_id", "click", "timestamp", "true_stage"):
        assert not np.array_equal(small.columns[k], other[k]), k
    fingerprints = {LifecycleSimulator(**{**SMALL, "seed": seed}).fingerprint() for seed in (3, 4)}
    assert len(fingerprints) == 2


def test_the_default_cache_key_is_stable():
    """The cache key of configs/dataset/lifecycle.yaml: a change makes every user rebuild the cached data, so it
    may change only with the simulator's output (bump ``version`` then, and this value). 32d526d04b1330f2 before
    version 4 (the knobs task_conflict / label_noise / stage_dwell and the true_logit_<task> columns; the columns of
    version 3 are unchanged at the defaults: tests/test_lifecycle_knobs.py)."""
    assert LifecycleSimulator().fingerprint() == "b2bf938f2fcb8d78"


def test_schema_and_dtypes(small):
    schema, c = small.schema, small.columns
    schema.validate(c)
    assert len(c["click"]) == SMALL["n_rows"]
    assert schema.tasks == ["click", "long_view", "purchase"]
    assert schema.analysis_fields == ["true_stage", "true_logit_click", "true_logit_long_view", "true_logit_purchase"]
    assert schema.stage_field == "true_stage" and schema.stage_labels == ["New", "Wander", "Stick", "Loyal"]
    assert "true_stage" not in [f.name for f in schema.features]
    roles = {f.name: f.role for f in schema.features}
    assert roles["user_id"] == roles["age_bucket"] == roles["hist_items"] == "user"
    assert roles["item_id"] == roles["category"] == "item" and roles["scenario"] == "context"
    for f in schema.features:
        want = np.float32 if f.kind == "numeric" else np.int64
        assert c[f.name].dtype == want, f.name
    for t in TASKS:
        assert c[t].dtype == np.float32 and set(np.unique(c[t])) <= {0.0, 1.0}
    assert c["hist_items"].shape == (SMALL["n_rows"], SMALL["seq_len"])
    assert c["timestamp"].dtype == c["session_id"].dtype == c["true_stage"].dtype == np.int64
    assert 0.0 <= c["hour"].min() and c["hour"].max() < 1.0
    assert 0.0 <= c["item_popularity"].min() and c["item_popularity"].max() <= 1.0


def test_purchase_implies_click_and_median_binning(small):
    c = small.columns
    assert np.all(c["purchase"] <= c["click"])
    assert c["purchase"].sum() > 0
    assert abs(c["long_view"].mean() - 0.5) < 0.01


def test_time_order_and_sessions(small):
    c = small.columns
    ts, users, sessions = c["timestamp"], c["user_id"], c["session_id"]
    assert np.all(np.diff(ts) >= 0), "rows are not in global time order"
    by_user = np.lexsort((ts, users))  # stable: keeps row order on ties
    same_user = users[by_user][1:] == users[by_user][:-1]
    assert np.all(np.diff(ts[by_user])[same_user] > 0), "timestamps must strictly increase per user"
    # a session belongs to one user and is one consecutive run of that user's timeline
    session_users = defaultdict(set)
    for s, u in zip(sessions.tolist(), users.tolist()):
        session_users[s].add(u)
    assert all(len(v) == 1 for v in session_users.values())
    s_sorted = sessions[by_user]
    starts = np.r_[True, (s_sorted[1:] != s_sorted[:-1])]
    assert starts.sum() == len(session_users), "a session is split by another session of the same user"
    assert 2.0 < len(ts) / len(session_users) < 8.0
    # tenure grows along each user's timeline
    assert np.all(np.diff(c["tenure_bucket"][by_user])[same_user] >= 0)


def test_hist_items_brute_force(small):
    c = small.columns
    seq_len = SMALL["seq_len"]
    seen: dict[int, list[int]] = defaultdict(list)
    expected = np.full((len(c["item_id"]), seq_len), PAD, dtype=np.int64)
    for row, (u, item) in enumerate(zip(c["user_id"].tolist(), c["item_id"].tolist())):  # time order
        past = seen[u][::-1][:seq_len]
        expected[row, : len(past)] = past
        seen[u].append(item)
    np.testing.assert_array_equal(c["hist_items"], expected)
    assert (c["hist_items"] == PAD).any() and (c["hist_items"] != PAD).any()


def test_stage_dependent_label_rates(small):
    c, stage = small.columns, small.columns["true_stage"]
    shares = np.bincount(stage, minlength=N_STAGES) / len(stage)
    assert np.all(shares > 0.05), shares
    at = [stage == s for s in range(N_STAGES)]
    assert rate(c, "click", at[WANDER]) > rate(c, "click", at[NEW]) + 0.1
    assert rate(c, "click", at[STICK]) > rate(c, "click", at[NEW]) + 0.1
    assert rate(c, "long_view", at[WANDER]) < rate(c, "long_view", at[STICK]) - 0.2
    assert rate(c, "long_view", at[WANDER]) < rate(c, "long_view", at[NEW]) < rate(c, "long_view", at[LOYAL])
    assert rate(c, "purchase", at[STICK]) < rate(c, "purchase", at[LOYAL]) - 0.05
    cvr = [c["purchase"][m].sum() / c["click"][m].sum() for m in at]
    assert cvr[STICK] < min(cvr[NEW], cvr[WANDER], cvr[LOYAL])
    # the observable activity level only hints at the stage
    activity = [c["activity_level"][m].mean() for m in at]
    assert np.all(np.diff(activity) > 0)
    assert np.mean(c["activity_level"] == np.rint(stage * 4 / 3)) < 0.6


def test_stages_move_forward_along_timelines(small):
    c = small.columns
    users, stage = c["user_id"], c["true_stage"]
    by_user = np.lexsort((c["timestamp"], users))
    first = np.r_[True, users[by_user][1:] != users[by_user][:-1]]
    late = c["tenure_bucket"][by_user] >= 5
    assert stage[by_user][first].mean() < stage[by_user][late].mean()
    s, same_user = stage[by_user], ~first[1:]
    moves = s[1:][same_user] != s[:-1][same_user]
    assert 0.005 < moves.mean() < 0.1  # persistent stages, but users do move


def test_scenario_base_rates_differ(small):
    c = small.columns
    clicks = [rate(c, "click", c["scenario"] == j) for j in range(3)]
    assert clicks[0] > clicks[1] + 0.03 and clicks[1] > clicks[2] + 0.03
    assert np.bincount(c["scenario"]).min() > 1000


def test_stage_is_learnable_and_labels_not_trivial(small):
    c = small.columns
    x = np.eye(N_STAGES)[c["true_stage"]]
    cut = len(x) * 3 // 4
    model = LogisticRegression().fit(x[:cut], c["click"][:cut])
    assert roc_auc_score(c["click"][cut:], model.predict_proba(x[cut:])[:, 1]) > 0.55
    for t in TASKS:  # the generating probabilities rank well but not perfectly
        assert 0.7 < roc_auc_score(c[t], small.truth[t]) < 0.95, t


def test_fewer_rows_than_users_and_bad_settings():
    for seed in range(20):  # some users, including the last ones, get no rows
        schema, c = LifecycleSimulator(n_users=300, n_items=50, n_rows=100, seed=seed).build()
        schema.validate(c)
        assert len(c["click"]) == 100
    with pytest.raises(ValueError):
        LifecycleSimulator(stage_persistence=1.0)
    with pytest.raises(ValueError):
        LifecycleSimulator(n_rows=0)
    with pytest.raises(TypeError):
        LifecycleSimulator(n_user=10)
