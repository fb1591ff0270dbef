"""STAN's Stage_Single (section 4.3.1, Fig. 5): ``subset: {rule_stage: <stage>}`` trains, selects and tests on one
stage's rows; the all-data run's ``auc@rule_stage=<stage>`` (the metric ``rule_stage``) is measured on the same
test rows; ``python -m mtlbench.cli.stages --stage-single`` pairs the two."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score

from mtlbench.data.derived import compute_derived
from mtlbench.data.lifecycle_inputs import NUM_RULE_STAGES
from mtlbench.data.subset import apply_subset, subset_rows
from mtlbench.errors import ConfigError
from mtlbench.metrics.stage import RULE_STAGE_LABELS, RuleStageMetrics
from mtlbench.stages import STAGE_NAMES
from mtlbench.training.run import build_components, build_datamodule

from conftest import TINY, compose_cfg, run_cli

SMALL = [*TINY, "model=ple", "model.expert=[8]", "model.tower=[]"]


def test_rule_stage_labels_are_the_rule_stage_ids_names():
    assert RULE_STAGE_LABELS == (*STAGE_NAMES, "unknown") and len(RULE_STAGE_LABELS) == NUM_RULE_STAGES


def test_the_rule_stage_metric_on_a_hand_example():
    """Stage Wander (1): rows 0-3; Loyal (3): rows 4-6 (AUCs by hand)."""
    preds = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.3, 0.8, 0.1])
    target = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    stage = torch.tensor([1, 1, 1, 1, 3, 3, 3])
    m = RuleStageMetrics()
    m.update(preds, target, {"stage": stage})
    out = m.compute()
    # Wander: positives .9, .4 against negatives .2, .6 -> pairs won 1 + 1 + 0 + 1 of 4; Loyal: .3, .8 vs .1 -> 1
    assert out == {"auc@rule_stage=Wander": pytest.approx(0.75), "auc@rule_stage=Loyal": pytest.approx(1.0)}


def test_the_subset_keeps_exactly_one_stages_rows_in_every_split():
    full = build_datamodule(compose_cfg(SMALL))
    full.load()
    stage = compute_derived("rule_stage", full.schema, full.columns, full.splits["train"])
    kept: dict[str, list[np.ndarray]] = {name: [] for name in full.splits}
    for sid, name in enumerate(RULE_STAGE_LABELS):
        try:
            dm = build_datamodule(compose_cfg([*SMALL, f"subset={{rule_stage:{name}}}"]))
            dm.load()
        except ConfigError as e:  # "unknown" (a user's first training rows): no valid or test rows
            assert name == "unknown" and "leaves split(s) ['valid', 'test']" in str(e)
            kept["train"].append(full.splits["train"][stage[full.splits["train"]] == sid])
            continue
        for split, rows in dm.splits.items():
            assert len(rows) > 0 and set(stage[rows]) == {sid}, (name, split)
            np.testing.assert_array_equal(rows, full.splits[split][stage[full.splits[split]] == sid])
            kept[split].append(rows)
        # the inputs of the kept rows are the all-data run's
        for key in ("categorical", "numeric"):
            torch.testing.assert_close(dm.rows().column(key), full.rows().column(key))
    for split, parts in kept.items():  # the stages partition every split
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.sort(full.splits[split]))
    # ids work as names do; the true stage of the simulator too
    dm = build_datamodule(compose_cfg([*SMALL, "subset={rule_stage:2}"]))
    dm.load()
    assert set(stage[dm.splits["train"]]) == {2}
    dm = build_datamodule(compose_cfg([*SMALL, "subset={true_stage:Loyal}"]))
    dm.load()
    for split, rows in dm.splits.items():
        np.testing.assert_array_equal(rows, full.splits[split][full.columns["true_stage"][full.splits[split]] == 3])


def test_the_all_data_model_on_a_stages_test_rows_equals_the_stage_runs_metric():
    import pytorch_lightning as pl

    metrics = "metrics=[auc,rule_stage]"
    dm_all, all_data = build_components(compose_cfg([*SMALL, metrics]))
    dm_one, one = build_components(compose_cfg([*SMALL, metrics, "subset={rule_stage:Wander}"]))
    one.load_state_dict(all_data.state_dict())  # the same model: only the rows differ
    for dm, module in ((dm_all, all_data), (dm_one, one)):
        pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(
            module, datamodule=dm, verbose=False
        )
    rows = dm_one.splits["test"]
    assert set(dm_all.rows().column("rule_stage", rows).tolist()) == {1}
    index, scores = one.test_predictions
    order = torch.argsort(index)
    np.testing.assert_array_equal(index[order].numpy(), np.sort(rows))
    for k, task in enumerate(dm_all.schema.tasks):
        y = dm_all.columns[task][np.sort(rows)]
        ok = ~np.isnan(y)
        expected = roc_auc_score(y[ok], scores[order][:, k].numpy()[ok])
        single, full = one.results["test"][task], all_data.results["test"][task]
        assert single["auc"] == pytest.approx(expected, abs=1e-6)
        assert single["auc@rule_stage=Wander"] == pytest.approx(expected, abs=1e-6)
        assert [key for key in single if key.startswith("auc@rule_stage=")] == ["auc@rule_stage=Wander"]
        assert full["auc@rule_stage=Wander"] == pytest.approx(expected, abs=1e-6)


def test_bad_subsets_fail_in_one_line():
    full = build_datamodule(compose_cfg(SMALL))
    full.load()
    schema, columns, splits = full.schema, full.columns, full.splits
    for subset, message in [
        ({"rule_stage": "Lost"}, r"rule_stage must be one of \['New', 'Wander', 'Stick', 'Loyal', 'unknown'\]"),
        ({"rule_stage": 7}, "an id 0..4, got 7"),
        ({"rule_stage": True}, "got 'True'"),
        ({"true_stage": "unknown"}, r"true_stage must be one of \['New', 'Wander', 'Stick', 'Loyal'\]"),
        ({"scenario": 1}, "unknown key 'scenario' .* known: rule_stage, true_stage"),
        ({}, "subset must map"),
        (5, "subset must map"),
    ]:
        with pytest.raises(ConfigError, match=message):
            subset_rows(schema, columns, splits["train"], subset)
    with pytest.raises(ConfigError, match=r"subset \{'rule_stage': 'unknown'\} leaves split\(s\) \['valid', 'test'\]"):
        apply_subset(schema, columns, splits, {"rule_stage": "unknown"})
    with pytest.raises(ConfigError, match="rule_stage: tasks must be"):  # the run's rule settings are used
        build_datamodule(compose_cfg([*SMALL, "subset={rule_stage:New}", "+derived.rule_stage.tasks=[nope]"])).load()


# -- the Stage_Single table ---------------------------------------------------------------------------------
def fake_run(root: Path, seed: int, subset: dict | None, values: dict[str, float]) -> None:
    config = {"model": {"name": "ple"}, "weighting": {"name": "equal"}, "dataset": {"name": "lifecycle"}, "seed": seed}
    if subset is not None:
        config["subset"] = subset
    run = root / f"{subset}_{seed}".replace(" ", "")
    run.mkdir(parents=True)
    results = {
        "model": "ple",
        "weighting": "equal",
        "dataset": "lifecycle",
        "seed": seed,
        "config": config,
        "metrics": {"test": {"click": values}},
    }
    (run / "config.yaml").write_text(json.dumps(config))
    (run / "results.json").write_text(json.dumps(results))


def test_the_stage_single_table_pairs_each_stage_run_with_the_all_data_run_by_seed(tmp_path):
    from mtlbench.cli.stages import stage_single_markdown, stage_single_rows

    single = {0: 0.70, 1: 0.74, 2: 0.71}
    full = {0: 0.68, 1: 0.69, 2: 0.70, 3: 0.60}  # seed 3 has no stage run: left out of the pairs
    for seed, v in single.items():
        fake_run(tmp_path, seed, {"rule_stage": "Wander"}, {"auc": v, "auc@rule_stage=Wander": v})
    for seed, v in full.items():
        fake_run(tmp_path, seed, None, {"auc": 0.5, "auc@rule_stage=Wander": v, "auc@rule_stage=New": 0.9})
    (row,) = stage_single_rows([tmp_path])
    assert (row["stage"], row["task"], row["paired_seeds"]) == ("Wander", "click", 3)
    assert row["stage_single"][0] == pytest.approx(np.mean(list(single.values())))
    assert row["all_data"][0] == pytest.approx(np.mean([full[s] for s in range(3)]))
    assert row["difference"] == pytest.approx(np.mean([single[s] - full[s] for s in range(3)]))
    expected = scipy_stats.ttest_rel([single[s] for s in range(3)], [full[s] for s in range(3)]).pvalue
    assert row["p"] == pytest.approx(expected)
    md = stage_single_markdown([row])
    assert "| ple + equal | rule_stage=Wander | click | 0.7167 ± 0.0208 | 0.6900 ± 0.0100 | +0.0267 |" in md


# -- end to end ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_stage_single_experiment_runs_and_prints_its_table(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "experiment=stan_stage_single",
        *SMALL,
        "seed=0",
        "subset=null,{rule_stage:Wander}",  # the command line wins over the experiment's sweep
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    full = json.loads((sweep / "ple_equal_all_seed0" / "results.json").read_text())["metrics"]["test"]
    one = json.loads((sweep / "ple_equal_Wander_seed0" / "results.json").read_text())["metrics"]["test"]
    assert {k for k in full["click"] if k.startswith("auc@rule_stage=")} >= {"auc@rule_stage=Wander"}
    assert one["click"]["auc"] == pytest.approx(one["click"]["auc@rule_stage=Wander"])
    md = (sweep / "stage_single.md").read_text()
    assert "| ple + equal | rule_stage=Wander | click |" in md and md.strip() in proc.stdout
