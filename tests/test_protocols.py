"""The seed papers' protocols run end to end on fixtures in the publishers' layouts and write the papers' columns.

``debug=smoke`` (one seed, one epoch) makes them a run-through: the figures are not results, the columns,
settings and report are what is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures.make_aliccp_raw import write_aliccp_raw
from fixtures.make_fixtures import wechat

from conftest import run_cli

SMOKE = ["debug=smoke", "logger=none", "trainer.enable_progress_bar=false"]


def results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}


def sweep_run(tmp_path: Path, args: list[str]) -> tuple[Path, dict[str, dict], str]:
    sweep = tmp_path / "sweep"
    proc = run_cli([*args, *SMOKE, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return sweep, results(sweep), (sweep / "report" / "leaderboard.md").read_text()


@pytest.fixture
def aliccp_raw(tmp_path: Path) -> Path:
    return write_aliccp_raw(tmp_path / "ali-ccp")


@pytest.mark.slow
def test_sfpnet_table4_on_raw_aliccp(tmp_path, aliccp_raw):
    sweep, runs, md = sweep_run(tmp_path, ["experiment=sfpnet_table4", f"dataset.path={aliccp_raw}"])
    assert sorted(runs) == sorted(
        f"{m}_equal_seed0"
        for m in [
            "base_dnn",
            "deepfm",
            "shared_bottom",
            "mmoe",
            "ple",
            "star",
            "adasparse",
            "pepnet",
            "maria",
            "sfpnet",
        ]
    )
    for name, r in runs.items():
        assert list(r["metrics"]["test"]) == ["ctr"], name  # CTR only
        assert r["config"]["model"]["embedding_dim"] == 40 and r["config"]["dataset"]["name"] == "ali_ccp"
        assert {f"auc@scenario={s}" for s in range(3)} <= set(r["metrics"]["test"]["ctr"])
    for model in ("shared_bottom", "mmoe", "ple"):  # the multi-scenario form of the baselines
        assert runs[f"{model}_equal_seed0"]["config"]["model"]["per"] == "scenario"
    assert runs["sfpnet_equal_seed0"]["config"]["model"]["num_blocks"] == 2
    assert "| model | seeds | CTR AUC |" in md and "| SFPNet | 1 |" in md and "| SharedBottom | 1 |" in md
    assert "| MARIA | 1 |" in md and "| DeepFM | 1 |" in md and "| AdaSparse | 1 |" in md
    for column in ("CTR AUC", "CTR B1", "CTR B2", "CTR B3"):
        assert column in md, column
    assert "Mann-Whitney" in md


@pytest.mark.slow
def test_aem2tl_table_on_raw_aliccp(tmp_path, aliccp_raw):
    sweep, runs, md = sweep_run(tmp_path, ["experiment=aem2tl_table", f"dataset.path={aliccp_raw}"])
    assert "aem2tl_gradnorm_seed0" in runs  # the model selects its adaptive weighting
    assert runs["esmm_equal_seed0"]["cvr"]["given"] == "ctr"  # tasks from the dataset's roles
    for r in runs.values():
        assert list(r["metrics"]["test"]) == ["ctr", "ctcvr"]
    for column in ("CTR AUC", "CTCVR AUC", "CTR GAUC", "CTCVR GAUC", "CTR B1", "CTCVR B3"):
        assert column in md, column
    assert "Per scenario: GAUC" in md and "Per scenario: AUC" in md


@pytest.mark.slow
def test_stan_table2_on_wechat(tmp_path):
    # the challenge's layout at a size where every task has positives on the test day (days 13 / 14)
    data = wechat(np.random.default_rng(7), tmp_path / "wechat_algo_data1", users=30, rows_per_day=50)
    sweep, runs, md = sweep_run(tmp_path, ["experiment=stan_table2", f"dataset.path={data}"])
    assert len(runs) == 8
    stan = runs["stan_stan_stage_seed0"]
    assert stan["model_info"]["user_extractor"] == "dnn"  # f of Eq. 6 a DNN (section 4.1.3)
    assert set(stan["model_info"]["user_fields"]) >= {"userid", "device"}
    for task in ("like", "click_avatar", "forward"):
        assert f"{task} AUC" in md and f"{task} NDCG@5" in md
    assert "RelaImpr" in md and "MLP_Single" in md and "STAN w/o Beta" in md


@pytest.mark.slow
def test_stan_dose_response_on_a_small_simulator(tmp_path):
    """The protocol end to end on one row of its grid (conflict 1.0 x both noise levels: 10 runs); the whole grid's
    composition is tested fast in tests/test_dose_response.py."""
    tiny = ["dataset.n_rows=3000", "dataset.n_users=150", "dataset.n_items=300", "dataset.task_conflict.Wander=1.0"]
    sweep, _, md = sweep_run(tmp_path, ["experiment=stan_dose_response", *tiny])
    runs = {str(p.parent.relative_to(sweep)): json.loads(p.read_text()) for p in sweep.glob("*/*/results.json")}
    models = ["ple_equal", "stan_wo_beta_stan_wo_beta", "stan_stan_stage", "stan_equal", "ple_stage_equal"]
    cells = [("1.0", n) for n in ("0.0", "0.1")]
    assert sorted(runs) == sorted(f"conflict{c}_noise{n}/{m}_seed0" for c, n in cells for m in models)
    knobs = runs["conflict1.0_noise0.1/stan_equal_seed0"]["config"]["dataset"]
    assert knobs["task_conflict"] == {"Wander": 1.0} and knobs["label_noise"] == {"New": 0.1}
    assert "## Gap: STAN - PLE" in md and "### Gap per stage: STAN - PLE" in md
    assert "| STAN (equal weighting) | 1 |" in md and "| STAN w/o Beta | 1 |" in md and "| PLE_stage | 1 |" in md
    report = sweep / "report"
    gap = (report / "gap.csv").read_text()
    assert gap.count("\n") > 2 * 3 * 2 and ",STAN,PLE," in gap  # every cell x task x metric, and per stage
    assert (report / "gap_auc.png").exists() and "gap-heatmap" in (report / "leaderboard.html").read_text()
