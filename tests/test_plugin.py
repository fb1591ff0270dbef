"""The example plugin in plugins/ installs as its own package, passes its own contract tests (mtlbench.testing) and
runs through the mtlbench CLI, its configs found through its one register_plugin_configs call."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO / "plugins" / "mtlbench-example"),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 and "setuptools" in proc.stderr and "No module named" in proc.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert proc.returncode == 0, proc.stderr
    return target


def env_with(path):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]))


def test_plugin_model_is_listed_only_when_installed(plugin_path, tmp_path):
    code = "import mtlbench; print(mtlbench.list_models('example*'))"
    with_plugin = subprocess.run(
        [sys.executable, "-c", code], env=env_with(plugin_path), capture_output=True, text=True, cwd=tmp_path
    )  # cwd: import the installed package, not the checkout
    without = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert with_plugin.stdout.strip() == "['example_gated']", with_plugin.stderr
    assert without.stdout.strip() == "[]"


def test_plugin_model_dataset_weighting_and_metric_train_together_from_the_cli(plugin_path, tmp_path):
    """One file plus one config each (a metric: one file): the plugin's four components compose and train like
    built-ins, in one run; the metric is computed, monitored and checked against a recomputation."""
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "mtlbench.cli.train",
        "dataset=example_toy",
        "weighting=example_loss_scale",
        "model=example_gated",
        "batch_size=256",
        "trainer.max_epochs=2",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "metrics=[auc,hit_rate@3]",
        "monitor=hit_rate@3",
    ]
    proc = subprocess.run(
        [*args, f"hydra.run.dir={out}"],
        cwd=tmp_path,
        env=env_with(plugin_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert (res["model"], res["dataset"], res["weighting"]) == ("example_gated", "example_toy", "example_loss_scale")
    assert res["config"]["model"]["bottom"] == [64] and res["config"]["dataset"]["n_rows"] == 20000
    assert res["config"]["weighting"]["momentum"] == 0.9
    assert all(0.55 < m["auc"] < 1.0 for m in res["metrics"]["valid"].values()), res["metrics"]["valid"]
    for split in ("valid", "test"):
        assert all(list(m) == ["auc", "hit_rate@3"] for m in res["metrics"][split].values()), res["metrics"][split]
    # HitRate@3 recomputed user by user from the predictions file (the test split)
    import numpy as np
    import pyarrow.parquet as pq

    preds = pq.read_table(out / "predictions.parquet").to_pydict()
    for task, m in res["metrics"]["test"].items():
        user, label, score = (np.asarray(preds[c]) for c in ("user_id", f"label_{task}", f"score_{task}"))
        hits = []
        for u in np.unique(user[~np.isnan(label)]):
            y, p = label[(user == u) & ~np.isnan(label)], score[(user == u) & ~np.isnan(label)]
            if (y > 0.5).any():
                hits.append((y[np.argsort(-p, kind="stable")[:3]] > 0.5).any())
        assert m["hit_rate@3"] == pytest.approx(np.mean(hits), abs=1e-6), task
    # the plugin's dataset settings are recorded from its constructor's signature (defaults included), and the
    # metric's direction comes from the plugin's class, found through the entry point
    code = (
        "import mtlbench; from mtlbench.metrics import higher_is_better, metric_class; "
        "print(sorted(mtlbench.create_dataset('example_toy', n_rows=500).settings.items())); "
        "print(metric_class('hit_rate@3').__module__, higher_is_better('hit_rate@3'))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], env=env_with(plugin_path), capture_output=True, text=True, cwd=tmp_path
    )
    lines = found.stdout.splitlines()
    assert lines[0] == "[('dim', 4), ('n_items', 200), ('n_rows', 500), ('n_users', 500), ('seed', 0)]", found.stderr
    assert lines[1].split() == ["mtlbench_example.metric", "True"], found.stderr
    # without the plugin the names are unknown: one line, before any data is read, no results.json
    args = [*args[:3], *TINY, "metrics=[auc,hit_rate@3]", "monitor=hit_rate@3"]
    missing = subprocess.run(
        [*args, f"hydra.run.dir={tmp_path / 'missing'}"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert missing.returncode != 0
    err = [line for line in missing.stderr.splitlines() if line.startswith("mtlbench: error:")]
    assert len(err) == 1 and "unknown metric 'hit_rate'" in err[0], missing.stderr[-2000:]
    assert not (tmp_path / "missing" / "results.json").exists()


def test_plugin_own_tests_run_mtlbench_contract_checks(plugin_path, tmp_path):
    """The plugin's tests/ (mtlbench.testing on its model, weighting and dataset) pass, as its author runs them."""
    tests = REPO / "plugins" / "mtlbench-example" / "tests"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        cwd=tmp_path,
        env=env_with(plugin_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("4 passed"), proc.stdout[-2000:]  # every plugin test ran


def test_plugin_configs_are_options_of_mtlbench_groups(plugin_path, tmp_path):
    """register_plugin_configs(__name__): the plugin's folder is on Hydra's search path after mtlbench's own, with
    nothing passed by the user; `--help` lists its options and experiments can sweep its model."""
    code = (
        "from mtlbench.registry import plugin_config_folders; from mtlbench.config import model_available; "
        "from mtlbench.testing import compose; "
        "print([p.relative_to(p.parents[1]).as_posix() for p in plugin_config_folders()]); "
        "print(model_available('example_gated'), model_available('nosuch')); "
        "cfg = compose(['model=example_gated', 'weighting=example_loss_scale', 'dataset=example_toy']); "
        "print(cfg.model.bottom, cfg.weighting.momentum, cfg.dataset.split.method)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env_with(plugin_path), capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.stdout.splitlines() == ["['mtlbench_example/configs']", "True False", "[64] 0.9 random"], proc.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "mtlbench.cli.train", "--help"],
        env=env_with(plugin_path),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert helped.returncode == 0 and "example_gated" in helped.stdout, helped.stderr[-2000:]
