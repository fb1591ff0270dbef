"""experiment=stan_dose_response: its grid and models as written, and the report's gap (candidate - base per data
cell with intervals over seeds and test users, the per-stage breakdown, the heat-map) on a synthetic sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score
from test_report import BASE_CFG, read_csv
from test_sweeps import compose_hydra

from mtlbench.errors import ConfigError
from mtlbench.metrics.functional import gauc
from mtlbench.report.bootstrap import paired_bootstrap, read_predictions
from mtlbench.report.tables import ReportSettings, settings_from
from mtlbench.report.write import write_report
from mtlbench.rundir import write_parquet

from conftest import compose_cfg

GRID = {"dataset.task_conflict.Wander": "0.0,1.0", "dataset.label_noise.New": "0.0,0.1"}
MODELS = "ple,stan_wo_beta,stan,stan_dose_response/stan_equal,ple_stage"
STAGES = ["New", "Wander", "Stick", "Loyal"]
TASKS = ["click", "purchase"]


# -- the config ------------------------------------------------------------------------------------------
def test_the_grid_models_and_seeds_are_the_ones_in_the_file():
    cfg = compose_hydra(["experiment=stan_dose_response"])
    params = dict(cfg.hydra.sweeper.params)
    assert {k: params[k] for k in GRID} == GRID
    assert params["model"] == MODELS and len(str(params["seed"]).split(",")) >= 3
    assert cfg.hydra.sweep.dir == "multirun/stan_dose_response/lifecycle"
    assert cfg.dataset.task_conflict == {"Wander": 0.0} and cfg.dataset.label_noise == {"New": 0.0}
    cell = compose_hydra(
        ["experiment=stan_dose_response", "dataset.task_conflict.Wander=1.0", "dataset.label_noise.New=0.1"]
    )
    assert OmegaConf.to_container(cell.dataset.task_conflict) == {"Wander": 1.0}
    assert OmegaConf.to_container(cell.dataset.label_noise) == {"New": 0.1}
    assert cell.analysis.tsne_users == 0
    settings = settings_from(**{k: v for k, v in cfg.hydra.callbacks.summary.items() if k != "_target_"})
    assert settings.grid == list(GRID) and settings.gap_metrics == ["auc", "gauc"] and settings.bootstrap >= 1000
    assert settings.base == "ple" and settings.candidate == "stan+stan_stage"


def test_every_model_of_the_sweep_composes_with_its_weighting():
    expect = {
        "ple": "equal",
        "stan_wo_beta": "stan_wo_beta",
        "stan": "stan_stage",
        "stan_dose_response/stan_equal": "equal",
        "ple_stage": "equal",
    }
    subdirs = set()
    for model, weighting in expect.items():
        cfg = compose_hydra(["experiment=stan_dose_response", f"model={model}"])
        assert cfg.weighting.name == weighting, model
        subdirs.add(cfg.hydra.sweep.subdir)
    assert len(subdirs) == len(expect)  # STAN and STAN + equal weighting land in different run directories
    assert "conflict0.0_noise0.0/stan_equal_seed0" in subdirs


def test_stan_with_equal_weighting_is_stan_but_for_the_loss():
    stan, equal = compose_cfg(["model=stan"]), compose_cfg(["model=stan_dose_response/stan_equal"])
    assert OmegaConf.to_container(equal.model) == OmegaConf.to_container(stan.model)
    assert (equal.weighting.name, stan.weighting.name) == ("equal", "stan_stage")
    assert equal.analysis == stan.analysis
    assert compose_cfg(["model=stan_dose_response/stan_equal", "weighting=dwa"]).weighting.name == "dwa"


def test_the_null_cell_is_the_default_data():
    from mtlbench.factory import create_dataset

    default = create_dataset("lifecycle", n_users=200, n_rows=4000).build()[1]
    null = create_dataset(
        "lifecycle", n_users=200, n_rows=4000, task_conflict={"Wander": 0.0}, label_noise={"New": 0.0}
    ).build()[1]
    assert default.keys() == null.keys()
    assert all(np.array_equal(default[k], null[k], equal_nan=True) for k in default)


# -- the report ------------------------------------------------------------------------------------------
def _run(root: Path, model: str, weighting: str, seed: int, cell: tuple[float, float], data: dict) -> None:
    """A run directory with predictions.parquet and the results.json metrics computed from them."""
    run = root / f"conflict{cell[0]}_noise{cell[1]}" / f"{model}_{weighting}_seed{seed}"
    run.mkdir(parents=True)
    config = json.loads(json.dumps(BASE_CFG))
    config["dataset"].update({"task_conflict": {"Wander": cell[0]}, "label_noise": {"New": cell[1]}})
    config.update({"model": {"name": model}, "weighting": {"name": weighting}, "seed": seed})
    (run / "config.yaml").write_text(json.dumps(config))
    rng = np.random.default_rng([seed, int(10 * cell[0]), int(100 * cell[1]), len(model) + len(weighting)])
    gain = {"ple": 0.0, "stan": 0.6 * cell[0]}[model] + (0.1 if weighting == "equal" and model == "stan" else 0.0)
    columns = {"row": data["rows"], "user_id": data["users"], "true_stage": data["stage"]}
    metrics: dict[str, dict[str, float]] = {}
    for t in TASKS:
        y = data[t]
        score = (1 / (1 + np.exp(-(data[f"base_{t}"] + gain * y + 0.3 * rng.normal(size=len(y)))))).astype("f4")
        columns[f"label_{t}"], columns[f"score_{t}"] = y, score  # the probabilities the metrics saw
        metrics[t] = {
            "auc": roc_auc_score(y, score),
            "gauc": float(gauc(torch.tensor(score), torch.tensor(y), torch.tensor(data["users"]))),
        }
        for s, name in enumerate(STAGES):
            metrics[t][f"auc@stage={name}"] = roc_auc_score(y[data["stage"] == s], score[data["stage"] == s])
    write_parquet(run / "predictions.parquet", columns)
    results = {
        "model": model,
        "dataset": "lifecycle",
        "weighting": weighting,
        "seed": seed,
        "metrics": {"valid": metrics, "test": metrics},
        "train": {"samples_per_second": 1000.0},
        "params": 1,
        "config": config,
    }
    (run / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A 2 x 2 grid of PLE, STAN and STAN + equal weighting, 3 seeds; STAN gains only where task_conflict = 1."""
    root = tmp_path_factory.mktemp("dose") / "sweep"
    rng = np.random.default_rng(0)
    n_users, per_user = 80, 12
    n = n_users * per_user
    data = {
        "rows": np.arange(n) * 7,
        "users": np.repeat(np.arange(n_users) * 3, per_user),
        "stage": rng.integers(0, 4, n),
    }
    for t, rate in zip(TASKS, (0.4, 0.2)):
        data[t] = (rng.random(n) < rate).astype(np.float32)
        data[f"base_{t}"] = 0.8 * data[t] + rng.normal(size=n)
    for cell in ((0.0, 0.0), (0.0, 0.1), (1.0, 0.0), (1.0, 0.1)):
        for seed in range(3):
            for model, weighting in (("ple", "equal"), ("stan", "stan_stage"), ("stan", "equal")):
                _run(root, model, weighting, seed, cell, data)
    return root


def experiment_settings() -> ReportSettings:
    cfg = compose_hydra(["experiment=stan_dose_response"])
    settings = {k: v for k, v in cfg.hydra.callbacks.summary.items() if k != "_target_"}
    return settings_from(**{**settings, "bootstrap": 200})


def test_the_report_shows_the_gap_per_cell_and_stage_and_writes_the_heatmap(sweep, tmp_path):
    out = tmp_path / "report"
    board = write_report([sweep], out, experiment_settings())
    md = (out / "leaderboard.md").read_text()
    assert "## Gap: STAN - PLE" in md and "### Gap per stage: STAN - PLE" in md
    assert "| STAN (equal weighting) | 3 |" in md and "| PLE | 3 |" in md  # distinct labels, no weighting suffix
    gap = board.gap
    assert gap is not None and gap.axes == list(GRID) and not gap.notes
    assert [c.coords for c in gap.cells[:: len(TASKS) * 2]] == [
        ("0.0", "0.0"),
        ("0.0", "0.1"),
        ("1.0", "0.0"),
        ("1.0", "0.1"),
    ]
    assert len(gap.cells) == 4 * len(TASKS) * 2 and len(gap.stages) == 4 * len(TASKS) * len(STAGES)
    for c in gap.cells:
        assert c.boot is not None and c.boot.seeds == 3 and c.boot.users == 80 and c.diff.test.n == 3
        assert c.boot.mean == pytest.approx(c.diff.mean, abs=1e-6)  # both the mean of the seeds' differences
        if c.coords[0] == "1.0":  # STAN's built-in gain: both intervals above 0, the t-test significant
            assert c.boot.low > 0 and c.diff.low is not None and c.diff.low > 0 and c.diff.test.p < 0.05
    stage_cell = next(c for c in gap.stages if c.coords == ("1.0", "0.1") and c.task == "click")
    assert stage_cell.metric == "auc@stage=New" and stage_cell.diff.mean > 0
    rows = read_csv((out / "gap.csv").read_text())
    assert len(rows) == len(gap.cells) + len(gap.stages)
    assert {r["candidate"] for r in rows} == {"STAN"} and {r["base"] for r in rows} == {"PLE"}
    for name in ("gap_auc.png", "gap_gauc.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "leaderboard.html").read_text()
    assert page.count('<figure class="gap-heatmap">') == 2 and 'class="gap"' in page and 'class="gap-stages"' in page
    assert "symmetric scale around 0" in page


def test_the_bootstrap_of_the_report_is_the_one_of_the_prediction_files(sweep):
    board = write_report([sweep], sweep.parent / "r2", experiment_settings(), html=False)
    assert board.gap is not None
    cell = next(c for c in board.gap.cells if c.coords == ("1.0", "0.0") and c.task == "purchase" and c.metric == "auc")
    pairs = [
        tuple(
            read_predictions(sweep / "conflict1.0_noise0.0" / f"{m}_seed{s}" / "predictions.parquet", TASKS)
            for m in ("stan_stan_stage", "ple_equal")
        )
        for s in range(3)
    ]
    direct = paired_bootstrap(pairs, TASKS, resamples=200)[("purchase", "auc")]
    assert cell.boot == direct


def test_the_gap_is_any_sweep_s_with_a_base_and_a_candidate(sweep, tmp_path):
    from mtlbench.cli.report import main

    out = tmp_path / "cli"
    args = [str(sweep / "conflict0.0_noise0.0"), "--out", str(out), "--metrics", "auc", "--base", "ple"]
    args += ["--candidate", "stan+equal", "--gap-metrics", "auc", "--bootstrap", "50", "--quiet", "--no-html"]
    assert main(args) == 0
    rows = read_csv((out / "gap.csv").read_text())
    assert {r["candidate"] for r in rows} == {"stan + equal"} and len(rows) == len(TASKS)
    assert all(r["boot_resamples"] == "50" and r["axes"] == "" for r in rows)  # one cell: no grid axes
    with pytest.raises(ConfigError, match="need a base and a candidate"):
        ReportSettings(gap_metrics=["auc"], candidate=None)
