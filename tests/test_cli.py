"""The ``mtlbench`` command end to end: outputs, reproducibility, sweeps, and bad input."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import FAST, TINY, run_cli

pytestmark = pytest.mark.slow


def run_ok(args, tmp_path, name="run"):
    out = tmp_path / name
    proc = run_cli([*TINY, *args, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_run_writes_results_and_predictions(tmp_path):
    out, res = run_ok(["model=mmoe", "seed=1"], tmp_path)
    assert (res["model"], res["dataset"], res["weighting"], res["seed"]) == ("mmoe", "lifecycle", "equal", 1)
    assert res["config"]["model"]["num_experts"] == 4 and res["version"]
    for split in ("valid", "test"):
        for task in ("click", "long_view", "purchase"):
            m = res["metrics"][split][task]
            assert {"auc", "logloss", "gauc", "ndcg@1", "ndcg@5", "sgauc"} <= set(m)
            assert {"auc@scenario=0", "auc@scenario=2", "gauc@scenario=1"} <= set(m)
            assert 0.0 < m["auc"] < 1.0 and m["logloss"] > 0
    assert res["train"]["samples_per_second"] > 0 and res["train"]["seconds"] > 0
    assert (out / "config.yaml").exists() and (out / "environment.json").exists()
    preds = pq.read_table(out / "predictions.parquet").to_pydict()
    for col in (
        "user_id",
        "session_id",
        "scenario",
        "true_stage",
        "label_click",
        "score_click",
        "label_purchase",
        "score_purchase",
    ):
        assert col in preds, col
    scores = np.asarray(preds["score_click"])
    assert ((scores > 0) & (scores < 1)).all()
    # the AUC in results.json is the AUC of the predictions file
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(preds["label_click"], scores) == pytest.approx(
        res["metrics"]["test"]["click"]["auc"], abs=1e-6
    )


def test_a_task_subset_trains_a_single_task_model(tmp_path):
    out, res = run_ok(["model=sfpnet", "tasks=[click]"], tmp_path)
    assert list(res["metrics"]["test"]) == ["click"]
    assert res["metrics"]["test"]["click"]["auc"] > 0.5


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    _, a = run_ok(["model=ple", "seed=7"], tmp_path, "a")
    _, b = run_ok(["model=ple", "seed=7"], tmp_path, "b")
    _, c = run_ok(["model=ple", "seed=8"], tmp_path, "c")
    assert a["metrics"] == b["metrics"]
    assert a["metrics"]["test"] != c["metrics"]["test"]


def test_multirun_sweeps_models_and_prints_a_table(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *TINY, "model=single_task,shared_bottom", "seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(sweep.rglob("results.json"))
    assert len(results) == 4
    models = sorted(json.loads(p.read_text())["model"] for p in results)
    assert models == ["shared_bottom", "shared_bottom", "single_task", "single_task"]
    assert "single_task" in proc.stdout and "±" in proc.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["model=nosuch"], ["no option 'nosuch' in group model", "mmoe"]),
        (["weighting=nosuch"], ["no option 'nosuch' in group weighting"]),
        (["dataset=nosuch"], ["no option 'nosuch' in group dataset"]),
        (["learning_rate=0.1"], ["learning_rate"]),
        (["seed=abc"], ["seed", "abc"]),
        (["model.num_expert=3"], ["num_expert"]),
        (["tasks=[clik]"], ["clik", "click"]),
        (["+model.num_expert=3"], ["num_expert", "mmoe"]),
        (
            ["dataset=table", "dataset.path=/nonexistent/log.parquet", "dataset.tasks=[y]"],
            ["/nonexistent/log.parquet", "does not exist"],
        ),
    ],
)
def test_bad_input_is_one_clear_line_nonzero_exit_no_results(tmp_path, args, words):
    out = tmp_path / "bad"
    proc = run_cli([*(FAST if "dataset=table" in args else TINY), *args, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode != 0
    err = [line for line in proc.stderr.splitlines() if line.startswith("mtlbench: error:")]
    assert len(err) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in err[0], err[0]
    assert not (out / "results.json").exists()


def _table_file(tmp_path, **over):
    import pyarrow as pa

    rng = np.random.default_rng(0)
    n = 400
    cols = {
        "u": rng.integers(0, 20, n),
        "i": rng.integers(0, 50, n),
        "t": np.arange(n),
        "click": rng.integers(0, 2, n).astype(float),
    }
    cols.update(over)
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table(cols), path)
    return path


TABLE = [
    "dataset=table",
    "dataset.tasks=[click]",
    "+dataset.categorical={u: {vocab_size: 20, role: user}, i: {vocab_size: 50, role: item}}",
    "dataset.user_field=u",
    "dataset.time_field=t",
]


def test_table_dataset_trains_from_a_parquet_file(tmp_path):
    path = _table_file(tmp_path)
    out = tmp_path / "run"
    proc = run_cli([*FAST, *TABLE, f"dataset.path={path}", "model=shared_bottom", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"] == "table" and res["metrics"]["test"]["click"]["auc"] is not None


@pytest.mark.parametrize(
    "over, words",
    [
        ({"click": np.r_[[0.0, 1.0, 3.0], np.zeros(397)]}, ["'click'", "row 2", "value 3"]),
        ({"i": np.r_[[0, 70], np.zeros(398, int)]}, ["'i'", "row 1", "70"]),
    ],
)
def test_bad_labels_and_ids_in_a_file_fail_clearly(tmp_path, over, words):
    path = _table_file(tmp_path, **over)
    out = tmp_path / "bad"
    proc = run_cli([*FAST, *TABLE, f"dataset.path={path}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode != 0
    err = [line for line in proc.stderr.splitlines() if line.startswith("mtlbench: error:")]
    assert len(err) == 1, proc.stderr[-2000:]
    for w in words:
        assert w in err[0], err[0]
    assert not (out / "results.json").exists()
