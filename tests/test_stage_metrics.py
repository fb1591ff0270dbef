"""Metrics by ground-truth stage (``auc@stage=<name>``, ``gauc@stage=<name>``) and the report's "Per stage" table.

The stage ids come from the dataset's analysis stage field (the simulator's ``true_stage``); they reach the
metrics by row index and never a model.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from test_report import make_run, table_rows

from mtlbench.metrics import available_groups, create_metric, higher_is_better
from mtlbench.metrics.stage import StageMetrics
from mtlbench.report.tables import ReportSettings, build, to_markdown

from conftest import TINY, compose_cfg

NAMES = ["New", "Wander", "Stick", "Loyal"]
SMALL = [
    "dataset.n_rows=6000",
    "dataset.n_users=60",
    "dataset.n_items=100",
    "trainer.max_epochs=1",
    "batch_size=512",
    "eval_batch_size=100000",
    "logger=none",
]


def test_stage_metrics_on_a_hand_example():
    """Stage New (id 0): users a, a, b, b; stage Stick (id 2): users a, c, c; one row of stage 7 (no name)."""
    preds = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.3, 0.8, 0.1, 0.5])
    target = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    stage = torch.tensor([0, 0, 0, 0, 2, 2, 2, 7])
    user = torch.tensor([0, 0, 1, 1, 0, 2, 2, 0])
    m = create_metric("stage")
    assert isinstance(m, StageMetrics) and m.groups == ("true_stage",)
    m.set_group_labels({"true_stage": NAMES, "scenario": ["x", "y"]})
    m.update(preds[:5], target[:5], {"true_stage": stage[:5], "user": user[:5]})
    m.update(preds[5:], target[5:], {"true_stage": stage[5:], "user": user[5:]})
    got = m.compute()
    # New: positives 0.9, 0.4 vs negatives 0.2, 0.6 -> 3 of 4 pairs; per user: a 1.0 (2 rows), b 0.0 (2 rows)
    # Stick: positives 0.3, 0.8 vs negative 0.1 -> 1.0; only user c has both classes: 1.0
    # stage 7: one class only -> NaN, keyed by its id
    assert list(got) == [
        "auc@stage=New",
        "auc@stage=Stick",
        "auc@stage=7",
        "gauc@stage=New",
        "gauc@stage=Stick",
        "gauc@stage=7",
    ]
    assert got["auc@stage=New"] == pytest.approx(0.75) and got["gauc@stage=New"] == pytest.approx(0.5)
    assert got["auc@stage=Stick"] == pytest.approx(1.0) and got["gauc@stage=Stick"] == pytest.approx(1.0)
    assert np.isnan(got["auc@stage=7"]) and np.isnan(got["gauc@stage=7"])
    assert higher_is_better("auc@stage=New") and higher_is_better("gauc@stage=Loyal")


def test_stage_metrics_match_sklearn_on_each_stage():
    rng = np.random.default_rng(4)
    n = 3000
    stage, user = rng.integers(0, 4, n), rng.integers(0, 50, n)
    y = rng.integers(0, 2, n).astype(np.float32)
    p = np.clip(0.3 * y + 0.1 * stage + rng.random(n) * 0.6, 0, 1).round(2).astype(np.float32)
    m = StageMetrics(labels=NAMES)
    for chunk in np.array_split(np.arange(n), 3):
        ps, ys, ss, us = (torch.from_numpy(a[chunk]) for a in (p, y, stage, user))
        m.update(ps, ys, {"true_stage": ss, "user": us})
    got = m.compute()
    for s, name in enumerate(NAMES):
        rows = stage == s
        assert got[f"auc@stage={name}"] == pytest.approx(roc_auc_score(y[rows], p[rows]), abs=1e-6)
        num = den = 0.0
        for u in np.unique(user[rows]):  # GAUC: impression-weighted AUC of the users with both classes
            r = rows & (user == u)
            if 0 < y[r].sum() < r.sum():
                num += r.sum() * roc_auc_score(y[r], p[r])
                den += r.sum()
        assert got[f"gauc@stage={name}"] == pytest.approx(num / den, abs=1e-6)


def test_the_stage_group_exists_only_with_a_stage_field():
    plain = SimpleNamespace(user_field="u", session_field=None, scenario_field="c")
    assert "true_stage" not in available_groups(plain)
    staged = SimpleNamespace(user_field="u", session_field=None, scenario_field="c", stage_field="true_stage")
    assert available_groups(staged) == ("user", "scenario", "true_stage")


def test_the_eval_step_scores_each_true_stage_and_no_model_sees_it():
    from mtlbench.training.run import build_components

    dm, module = build_components(compose_cfg(SMALL))  # the default metrics, stage included
    schema = dm.schema
    assert "true_stage" in module.metric_groups
    assert not set(dm.rows().keys()) & {*schema.analysis_fields, "true_stage"}  # never in a batch
    np.testing.assert_array_equal(dm.analysis_groups["true_stage"].numpy(), dm.columns["true_stage"])
    seen: list[set[str]] = []
    module.model.register_forward_pre_hook(lambda _m, args: seen.append(set(args[0])))
    batch = next(iter(dm.loader("valid")))
    with torch.no_grad():
        module._eval_step(batch, "valid")
        probs = torch.sigmoid(module.task_logits(module(batch)).float()).numpy()
    assert seen and all(keys <= set(dm.rows().keys()) for keys in seen)
    stage = dm.columns["true_stage"][batch["index"].numpy()]
    got = module.metrics["valid"][0].compute()  # the run's path (one shared row buffer)
    y = batch["labels"][:, 0].numpy()
    for s in np.unique(stage):
        rows = stage == s
        assert got[f"auc@stage={NAMES[s]}"] == pytest.approx(roc_auc_score(y[rows], probs[rows, 0]), abs=1e-6)
    # without the ids (e.g. a module built by hand) the stage metric is skipped, not broken
    from mtlbench.training.module import MultiTaskModule

    bare = MultiTaskModule(module.model, module.weighting, schema)
    assert "true_stage" not in bare.metric_groups
    assert "stage" not in [name for name, _ in bare.metrics["valid"][0].items()]


STAGE_RESULTS = {  # auc@stage=<name> per model (seeds: + 0.001 * seed)
    "single_task": [0.60, 0.70, 0.65, 0.66],
    "mmoe": [0.62, 0.71, 0.64, 0.70],
    "ple": [0.61, 0.69, 0.66, 0.71],
}


def test_report_has_a_per_stage_table_in_the_datasets_stage_order(tmp_path):
    for model, values in STAGE_RESULTS.items():
        for seed in range(2):
            metrics = {"auc": 0.7 + 0.001 * seed, "auc@scenario=0": 0.7}
            metrics |= {f"auc@stage={n}": v + 0.001 * seed for n, v in zip(NAMES, values)}
            metrics |= {f"gauc@stage={n}": v for n, v in zip(NAMES, values)}
            make_run(tmp_path, model, seed, {"click": metrics, "purchase": dict(metrics)})
    board = build([tmp_path], ReportSettings(metrics=["auc"], stage_metrics=["auc", "gauc"], base=None))
    titles = [t.title for t in board.sections[0].tables]
    assert titles == ["Overall", "Per scenario: AUC", "Per stage: AUC", "Per stage: GAUC"]
    md = to_markdown(board)
    rows = table_rows(md, "Per stage: AUC")
    head = md.split("### Per stage: AUC\n", 1)[1].strip().splitlines()[0]
    headers = [c.strip() for c in head.strip("|").split("|")]
    assert headers == ["model", "seeds"] + [f"{t} {n}" for t in ("click", "purchase") for n in NAMES]
    assert rows["mmoe"][1] == "**0.6205 ± 0.0007**"  # New: MMoE best
    assert rows["ple"][4] == "**0.7105 ± 0.0007**"  # Loyal: PLE best
    assert rows["mmoe"][2] == "**0.7105 ± 0.0007**" and rows["single_task"][2] == "<u>0.7005 ± 0.0007</u>"  # Wander
    none = build([tmp_path], ReportSettings(metrics=["auc"], stage_metrics=[], base=None))
    assert [t.title for t in none.sections[0].tables] == ["Overall", "Per scenario: AUC"]
    with pytest.raises(Exception, match="stage_metrics"):
        ReportSettings(metrics=["auc@stage=New"])


def test_report_has_a_per_rule_stage_table_for_stage_single_runs(tmp_path):
    """Stage_Single (STAN Fig. 5): the all-data run reports every rule stage, a stage run its own; one table."""
    for seed in range(2):
        full = {"auc": 0.7, **{f"auc@rule_stage={n}": 0.6 + 0.01 * k + 0.001 * seed for k, n in enumerate(NAMES)}}
        make_run(tmp_path, "ple", seed, {"click": full})
    board = build([tmp_path], ReportSettings(metrics=["auc"], base=None))
    assert [t.title for t in board.sections[0].tables] == ["Overall", "Per rule stage: AUC"]
    rows = table_rows(to_markdown(board), "Per rule stage: AUC")
    assert rows["ple"][1:] == [f"**{0.6005 + 0.01 * k:.4f} ± 0.0007**" for k in range(len(NAMES))]
    off = build([tmp_path], ReportSettings(metrics=["auc"], rule_stage_metrics=[], base=None))
    assert [t.title for t in off.sections[0].tables] == ["Overall"]


@pytest.mark.slow
def test_a_run_writes_stage_metrics_and_the_report_shows_them(tmp_path):
    from conftest import run_cli

    out = tmp_path / "run"
    proc = run_cli([*TINY, "model=shared_bottom", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    for task, values in res["metrics"]["test"].items():
        assert {f"{m}@stage={n}" for m in ("auc", "gauc") for n in NAMES} <= set(values), task
        assert all(0.0 < values[f"auc@stage={n}"] < 1.0 for n in NAMES)
    md = to_markdown(build([out], ReportSettings(metrics=["auc"], base=None)))
    assert "### Per stage: AUC" in md and "click New" in md and "purchase Loyal" in md
