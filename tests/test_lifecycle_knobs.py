"""The simulator's knobs (task_conflict, label_noise, stage_dwell) and what ``mtlbench-data describe`` shows of them.

The null control: at the defaults the simulator gives, bit for bit, the columns it gave before the knobs existed.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import roc_auc_score

from mtlbench.cli.data import describe_stages, main
from mtlbench.datasets.lifecycle import N_STAGES, STAGE_NAMES, TASKS, LifecycleSimulator
from mtlbench.errors import ConfigError

NEW, WANDER, STICK, LOYAL = range(N_STAGES)

#: the columns of simulator version 3 (before the knobs): the only ones the null control compares
V3_COLUMNS = [
    "activity_level",
    "age_bucket",
    "brand",
    "category",
    "city",
    "click",
    "gender",
    "hist_items",
    "hour",
    "item_id",
    "item_popularity",
    "long_view",
    "price_bucket",
    "purchase",
    "scenario",
    "session_id",
    "tenure_bucket",
    "timestamp",
    "true_stage",
    "user_id",
]

#: (settings, sha256 of the v3 columns, sha256 of the oracle probabilities ``Simulation.truth``), computed with
#: the code of commit bd5225d (simulator version 3, before the knobs) by ``digest`` below:
#: ``digest(LifecycleSimulator(**settings).simulate().columns)`` and ``digest(....truth)``
NULL_CONTROL = [
    (
        dict(n_users=40, n_items=30, n_rows=25, seq_len=3, seed=7),  # fewer rows than users
        "7c00b7704edad81ed69f719d237d5183cd2f4c97325cac00efbd604f750037b2",
        "4003d868d9af20d8d5298fd36087844b58f89b34f20b67b3a5ffee029ac6c512",
    ),
    (
        dict(n_users=200, n_items=150, n_rows=3000, seq_len=5, n_scenarios=1, seed=1),
        "f2ecf2f7fdcf95c7dc222dac0881cfd5a8d63abd1b71b4c0b83c4995a86bd27f",
        "7a51b84821f0ea905137283a2355215737f085f2906983eede5fc31d34510ce5",
    ),
    (
        dict(n_users=500, n_items=400, n_rows=20000, seq_len=6, seed=3),
        "3eecfebff53614730929e82244b32d0557d0688ff4cbd5f2181bf2a1e4ac762a",
        "424e9a20a81cc4daa021ed4c4940fdff223d51082b5b514454ec14fb21009a41",
    ),
    (
        dict(
            n_users=300, n_items=500, n_rows=12000, seq_len=4, n_scenarios=4, seed=11, stage_persistence=0.9, noise=0.8
        ),
        "f193d16d3caf866232c90202931fa2011e4f0d42e69acf9c343b91870ee3916d",
        "53d9fab94ea13c8e4b758ebac0fbcf1c2e03a8d3d890c869c6913d1ce3886c4f",
    ),
    (
        {},  # configs/dataset/lifecycle.yaml: 300,000 rows
        "246ff967869b492d75a4ec0c08ca6087af5df9332bb053b23c106ef145df9755",
        "3f29bf452d532dcb289421d5a1eb7f4d279d44619fae56d0349a1b529b9c1a14",
    ),
]

SMALL = dict(n_users=500, n_items=400, n_rows=20000, seq_len=6, seed=3)


def digest(columns: dict[str, np.ndarray]) -> str:
    """sha256 over the columns in name order: name, dtype, shape and the bytes of each."""
    h = hashlib.sha256()
    for name in sorted(columns):
        v = np.ascontiguousarray(columns[name])
        h.update(name.encode())
        h.update(str(v.dtype).encode())
        h.update(str(v.shape).encode())
        h.update(v.tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def null():
    return LifecycleSimulator(**SMALL).simulate()


@pytest.mark.parametrize("settings, columns_sha, truth_sha", NULL_CONTROL)
def test_the_defaults_give_the_columns_of_before_the_knobs_bit_for_bit(settings, columns_sha, truth_sha):
    sim = LifecycleSimulator(**settings).simulate()
    assert digest({k: sim.columns[k] for k in V3_COLUMNS}) == columns_sha
    assert digest(sim.truth) == truth_sha
    # the explicit defaults are the same setting
    explicit = LifecycleSimulator(**settings, task_conflict=0.0, label_noise={}, stage_dwell=None).simulate()
    assert digest({k: explicit.columns[k] for k in V3_COLUMNS}) == columns_sha


def test_true_logits_are_analysis_columns_of_the_oracle_probabilities(null):
    schema, c = null.schema, null.columns
    features = {f.name for f in schema.features}
    for t in TASKS:
        col = f"true_logit_{t}"
        assert col in schema.analysis_fields and col not in features
        assert c[col].dtype == np.float32
        np.testing.assert_allclose(1.0 / (1.0 + np.exp(-c[col].astype(np.float64))), null.truth[t], rtol=1e-5)


# -- task_conflict -------------------------------------------------------------------------------------------
def brute_within_user_corr(c: dict[str, np.ndarray], stage: int, a: str, b: str) -> float:
    """A loop over users: remove each user's mean within the stage, then one Pearson correlation."""
    rows = c["true_stage"] == stage
    user = c["user_id"][rows]
    x, y = (c[f"true_logit_{t}"][rows].astype(np.float64) for t in (a, b))
    rx, ry = np.empty_like(x), np.empty_like(y)
    for u in np.unique(user):
        m = user == u
        rx[m], ry[m] = x[m] - x[m].mean(), y[m] - y[m].mean()
    return float(pearsonr(rx, ry)[0])


def test_describe_stages_matches_independent_computations(null):
    c = null.columns
    d = describe_stages(null.schema, c)
    assert d["labels"] == list(STAGE_NAMES) and d["rows"] == np.bincount(c["true_stage"], minlength=4).tolist()
    for s in range(N_STAGES):
        rows = c["true_stage"] == s
        for t in TASKS:
            assert d["tasks"][t]["rate"][s] == pytest.approx(c[t][rows].mean())
            assert d["tasks"][t]["oracle_auc"][s] == pytest.approx(roc_auc_score(c[t][rows], null.truth[t][rows]))
        assert d["within_user_corr"]["click~purchase"][s] == pytest.approx(
            brute_within_user_corr(c, s, "click", "purchase"), abs=1e-6
        )
    # rows whose stage differs from the user's previous row (rows are in time order)
    changed, with_prev = 0, 0
    entered, at = np.zeros(N_STAGES), np.zeros(N_STAGES)
    last: dict[int, int] = {}
    for u, s in zip(c["user_id"].tolist(), c["true_stage"].tolist()):
        if u in last:
            with_prev += 1
            at[s] += 1
            if last[u] != s:
                changed += 1
                entered[s] += 1
        last[u] = s
    assert d["changed"] == pytest.approx(changed / with_prev)
    assert d["changed_by_stage"] == pytest.approx((entered / at).tolist())


def test_conflict_turns_the_chosen_stage_negative_and_keeps_the_others_and_the_rates(null):
    conflict = LifecycleSimulator(**SMALL, task_conflict={"Wander": 1.0}).simulate()
    before, after = describe_stages(null.schema, null.columns), describe_stages(conflict.schema, conflict.columns)
    for pair, values in after["within_user_corr"].items():
        assert before["within_user_corr"][pair][WANDER] > 0.3, pair
        assert values[WANDER] < 0.0, pair  # what one task ranks high, another ranks low
        for s in (NEW, STICK, LOYAL):  # other stages: the same rows, logits and labels
            assert values[s] == before["within_user_corr"][pair][s], pair
    other = null.columns["true_stage"] != WANDER
    wander = ~other
    np.testing.assert_array_equal(conflict.columns["true_stage"], null.columns["true_stage"])
    for t in TASKS:
        np.testing.assert_array_equal(conflict.columns[t][other], null.columns[t][other])
        # the stage's marginal rate: the mean true probability is solved to stay, the realised one follows
        assert conflict.truth[t][wander].mean() == pytest.approx(null.truth[t][wander].mean(), rel=1e-4)
        assert conflict.columns[t][wander].mean() == pytest.approx(null.columns[t][wander].mean(), abs=0.02)
    assert np.all(conflict.columns["purchase"] <= conflict.columns["click"])
    # rho = -1: one shared preference: every pair correlates more than without the knob
    shared = describe_stages(null.schema, LifecycleSimulator(**SMALL, task_conflict=-1.0).simulate().columns)
    for pair, values in shared["within_user_corr"].items():
        assert all(v > max(b, 0.7) for v, b in zip(values, before["within_user_corr"][pair])), pair


def test_describe_command_shows_the_conflict(tmp_path, capsys):
    """The issue's check end to end: ``mtlbench-data describe lifecycle task_conflict={Wander:1.0}``."""
    args = ["describe", "lifecycle", *(f"{k}={v}" for k, v in SMALL.items()), f"cache_dir={tmp_path}"]
    assert main([*args, "--json"]) == 0
    null_d = json.loads(capsys.readouterr().out)["stages"]
    assert main([*args, "task_conflict={Wander:1.0}", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["stages"]
    corr, null_corr = d["within_user_corr"], null_d["within_user_corr"]
    assert list(corr) == ["click~long_view", "click~purchase", "long_view~purchase"]
    assert all(corr[p][WANDER] < 0 < null_corr[p][WANDER] for p in corr)
    assert all(corr[p][s] == null_corr[p][s] for p in corr for s in (NEW, STICK, LOYAL))
    assert main([*args, "task_conflict={Wander:1.0}"]) == 0
    text = capsys.readouterr().out
    assert "within-user correlation of the true logits" in text and "positive rate / oracle AUC" in text
    wander = [line for line in text.splitlines() if line.strip().startswith("Wander")]
    assert len(wander) == 2 and wander[1].count("-0.") == 3


# -- label_noise ---------------------------------------------------------------------------------------------
def test_label_noise_adds_accidental_positives_independent_of_the_rate(null):
    eps = {"New": {"click": 0.3, "purchase": 0.2}, "Loyal": 0.1}
    noisy = LifecycleSimulator(**SMALL, label_noise=eps).simulate()
    c0, c1, stage = null.columns, noisy.columns, null.columns["true_stage"]
    for t in TASKS:
        assert np.all(c1[t] >= c0[t]), t  # y = max(y_true, accident)
    want = {(NEW, "click"): 0.3, (NEW, "long_view"): 0.0, (LOYAL, "click"): 0.1, (LOYAL, "long_view"): 0.1}
    for (s, t), e in want.items():
        zero = (stage == s) & (c0[t] == 0)
        got = c1[t][zero].mean()  # accidents among the rows whose true label is 0
        assert got == pytest.approx(e, abs=4 * np.sqrt(max(e, 1e-3) / zero.sum())), (s, t)
    for s in (WANDER, STICK):
        rows = stage == s
        for t in TASKS:
            np.testing.assert_array_equal(c1[t][rows], c0[t][rows])
    # purchase: accidents only on clicked rows (purchase = 1 still implies click = 1)
    assert np.all(c1["purchase"] <= c1["click"])
    eligible = (stage == NEW) & (c1["click"] == 1) & (c0["purchase"] == 0)
    assert c1["purchase"][eligible].mean() == pytest.approx(0.2, abs=4 * np.sqrt(0.2 / eligible.sum()))
    assert np.all(c1["purchase"][(stage == NEW) & (c1["click"] == 0)] == 0)
    # the oracle probabilities are those of the observed labels
    for s in (NEW, LOYAL):
        rows = stage == s
        for t in TASKS:
            assert noisy.truth[t][rows].mean() == pytest.approx(c1[t][rows].mean(), abs=0.02), (s, t)
    p = null.truth["click"][stage == NEW]
    np.testing.assert_allclose(noisy.truth["click"][stage == NEW], 1 - (1 - p) * 0.7, rtol=1e-6)


# -- stage_dwell ---------------------------------------------------------------------------------------------
def leaving_share(c: dict[str, np.ndarray]) -> np.ndarray:
    """Per stage: of the rows with a next row of the same user, the share whose next row is in another stage (a
    geometric stay of mean D interactions leaves after each row with probability 1 / D)."""
    order = np.lexsort((c["timestamp"], c["user_id"]))
    user, stage = c["user_id"][order], c["true_stage"][order]
    has_next = user[:-1] == user[1:]
    leaves = has_next & (stage[:-1] != stage[1:])
    return np.bincount(stage[:-1][leaves], minlength=N_STAGES) / np.bincount(stage[:-1][has_next], minlength=N_STAGES)


def test_stage_dwell_sets_the_mean_stay_in_history_windows(null):
    dwell = LifecycleSimulator(**SMALL, stage_dwell={"Loyal": 1.0, "New": 2.0}).simulate()
    seq_len = SMALL["seq_len"]
    got = leaving_share(dwell.columns)
    assert got[LOYAL] == pytest.approx(1 / (1.0 * seq_len), rel=0.15)
    assert got[NEW] == pytest.approx(1 / (2.0 * seq_len), rel=0.15)
    default = (1 - 0.97) * np.array([1.5, 1.2, 1.0, 0.4])  # the default: stage_persistence's dwell
    np.testing.assert_allclose(got[[WANDER, STICK]], default[[WANDER, STICK]], rtol=0.3)
    np.testing.assert_allclose(leaving_share(null.columns), default, rtol=0.3)
    d1 = describe_stages(dwell.schema, dwell.columns)
    assert d1["changed_by_stage"][LOYAL] > 4 * describe_stages(null.schema, null.columns)["changed_by_stage"][LOYAL]
    # only the stages move: the draws of everything else are the default setting's
    for k in ("user_id", "timestamp", "session_id", "scenario", "hour", "age_bucket"):
        np.testing.assert_array_equal(dwell.columns[k], null.columns[k], err_msg=k)
    assert not np.array_equal(dwell.columns["true_stage"], null.columns["true_stage"])


@pytest.mark.parametrize(
    "settings, words",
    [
        (dict(task_conflict=1.5), "task_conflict must lie in [-1, 1]"),
        (dict(task_conflict={"Lost": 0.5}), "unknown stage 'Lost'"),
        (dict(task_conflict="high"), "task_conflict must be a number"),
        (dict(label_noise=-0.1), "label_noise must lie in [0, 1]"),
        (dict(label_noise={"New": {"clik": 0.1}}), "unknown task 'clik'"),
        (dict(stage_dwell=0.05), "stage_dwell must lie in [0.1, inf]"),  # under one interaction at seq_len=10
        (dict(stage_dwell={"Loyal": True}), "stage_dwell.Loyal must be a number"),
    ],
)
def test_bad_knob_values_are_one_line_config_errors(settings, words):
    with pytest.raises(ConfigError) as e:
        LifecycleSimulator(**settings)
    assert words in str(e.value) and "\n" not in str(e.value)
