"""Sweeps: resuming a killed sweep, launchers (sequential, joblib, Slurm), Optuna, experiments, wandb."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from test_report import read_csv

from mtlbench.config import register_configs
from mtlbench.report.collect import find_runs
from mtlbench.report.tables import build, to_csv

from conftest import REPO, TINY, run_cli

SWEEP = [*TINY, "threads=1", "model=single_task,mmoe", "seed=0,1"]


def sweep_args(sweep: Path) -> list[str]:
    return ["-m", *SWEEP, f"hydra.sweep.dir={sweep}"]


def report_rows(sweep: Path) -> list[dict[str, str]]:
    """The report's CSV without the speed column (timings differ between two runs of the same config)."""
    rows = read_csv(to_csv(build([sweep])))
    for r in rows:
        r.pop("train_samples_per_second")
    return rows


def compose_hydra(overrides: list[str]):
    register_configs()
    with initialize_config_module("mtlbench.configs", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted sweep: 2 models x 2 seeds."""
    tmp = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        mp.setenv("WANDB_MODE", "disabled")
        proc = run_cli(sweep_args(tmp / "sweep"), cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp / "sweep").glob("*/results.json"))) == 4
    return tmp / "sweep"


# -- launcher configs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, target",
    [
        ("sequential", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
        ("parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ],
)
def test_launcher_configs_compose(name, target):
    cfg = compose_hydra([f"hydra/launcher={name}"])
    assert cfg.hydra.launcher._target_ == target
    assert (REPO / "configs" / "hydra" / "launcher" / f"{name}.yaml").exists()


def test_slurm_launcher_submits_the_configured_sbatch_script(tmp_path, monkeypatch):
    """The real submitit code path up to ``sbatch``, with stand-ins for the Slurm commands (no cluster)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\nfor last; do :; done\ncp "$last" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sweep = tmp_path / "sweep"
    cfg = compose_hydra(
        [
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.mem_gb=32",
            "hydra.launcher.timeout_min=90",
            "hydra.launcher.gpus_per_node=1",
            "hydra.launcher.array_parallelism=2",
            "hydra.launcher.account=proj1",
            "hydra.launcher.setup=[source /opt/venv/bin/activate]",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    launcher = SlurmLauncher(**params)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)

    class Submitted(Exception):
        pass

    real_map_array = submitit.AutoExecutor.map_array

    def map_array(self, fn, *iterables):
        self.submitted = real_map_array(self, fn, *iterables)
        raise Submitted([j.job_id for j in self.submitted])  # don't wait for a cluster to run them

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    with pytest.raises(Submitted) as info:
        launcher.launch([["seed=0"], ["seed=1"], ["seed=2"]], initial_job_idx=0)
    assert info.value.args[0] == ["4242_0", "4242_1", "4242_2"]
    script = (tmp_path / "submitted.sh").read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --mem=32GB",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --array=0-2%2",
        "#SBATCH --account=proj1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --job-name=mtlbench-",
        "source /opt/venv/bin/activate",
        f"{sweep}/.submitit/",
    ):
        assert line in script, line


# -- resumable sweeps ------------------------------------------------------------------------------------
def test_completed_results_need_the_identical_resolved_config(tmp_path):
    import mtlbench
    from mtlbench.cli.train import completed_results

    from conftest import compose_cfg

    cfg = compose_cfg(["model=mmoe", "seed=2"])
    stored = OmegaConf.to_container(cfg, resolve=True)
    stored["print_summary"] = not stored["print_summary"]  # only changes what is printed
    stored.pop("cache_dir")  # null now, absent in the results of a version without the key
    results = {"version": mtlbench.__version__, "config": stored, "metrics": {}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert completed_results(cfg, tmp_path) == results
    assert completed_results(compose_cfg(["model=mmoe", "seed=3"]), tmp_path) is None
    assert completed_results(compose_cfg(["model=mmoe", "seed=2", "optimizer.lr=0.01"]), tmp_path) is None
    assert completed_results(compose_cfg(["model=mmoe", "seed=2", "model.num_experts=2"]), tmp_path) is None
    (tmp_path / "results.json").write_text(json.dumps({**results, "version": "0.0.1"}))
    assert completed_results(cfg, tmp_path) is None  # another package version
    assert completed_results(cfg, tmp_path / "nothing") is None


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_report_of_an_uninterrupted_one(reference, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "mtlbench.cli.train", *sweep_args(sweep)]
    p = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        start_new_session=True,
    )
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline:  # kill once a run is complete and the next began
        done, started = list(sweep.glob("*/results.json")), list(sweep.glob("*/config.yaml"))
        if done and len(started) > len(done):
            break
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = sorted(sweep.glob("*/results.json"))
    assert 1 <= len(done) < 4, "the sweep finished before it could be killed"
    runs, incomplete = find_runs([sweep])
    assert len(runs) == len(done) and incomplete  # the interrupted run: listed, not counted
    mtimes = {r: r.stat().st_mtime_ns for r in done}

    proc = run_cli(sweep_args(sweep), cwd=tmp_path)  # the same command again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("skipped (reused)") == len(done)
    assert {r: r.stat().st_mtime_ns for r in done} == mtimes  # complete runs were not redone
    assert len(list(sweep.glob("*/results.json"))) == 4 and not find_runs([sweep])[1]
    assert report_rows(sweep) == report_rows(reference)


@pytest.mark.slow
def test_a_changed_config_is_not_skipped(reference, tmp_path):
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(reference, sweep)
    before = (sweep / "0_single_task_equal_seed0" / "results.json").stat().st_mtime_ns
    args = [
        "-m",
        *[a for a in SWEEP if not a.startswith(("model=", "seed="))],
        "model=single_task",
        "seed=0",
        "optimizer.lr=0.002",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped" not in proc.stderr
    res = json.loads((sweep / "0_single_task_equal_seed0" / "results.json").read_text())
    assert res["config"]["optimizer"]["lr"] == 0.002
    assert (sweep / "0_single_task_equal_seed0" / "results.json").stat().st_mtime_ns != before


@pytest.mark.slow
def test_parallel_launcher_runs_the_same_jobs(reference, tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *[a for a in SWEEP if not a.startswith("model=")],
        "model=single_task",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    names = sorted(p.parent.name for p in sweep.glob("*/results.json"))
    assert names == ["0_single_task_equal_seed0", "1_single_task_equal_seed1"]
    for name in names:  # the same jobs as in the sequential reference sweep, with the same results
        par = json.loads((sweep / name / "results.json").read_text())
        assert par["metrics"] == json.loads((reference / name / "results.json").read_text())["metrics"], name


# -- experiments -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_experiment_sweeps_the_available_models_and_writes_its_report(tmp_path):
    sweep = tmp_path / "exp"
    args = [
        "experiment=stan_table2",
        "dataset=lifecycle",
        *TINY,
        "seed=0",
        "hydra.callbacks.summary.models=[single_task,not_landed]",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "left out of the sweep: not_landed" in proc.stdout + proc.stderr  # a warning, through Hydra's logging
    assert [p.parent.name for p in sweep.glob("*/results.json")] == ["single_task_equal_seed0"]
    md = (sweep / "report" / "leaderboard.md").read_text()
    assert md.startswith("# STAN Table 2 protocol") and "| MLP_Single | 1 |" in md
    assert "click AUC" in md and "click NDCG@5" in md and "click GAUC" not in md
    assert "(not available yet, or not run): not_landed." in md
    assert md in proc.stdout  # printed at the end of the sweep
    for name in ("leaderboard.csv", "leaderboard.tex", "leaderboard.html"):
        assert (sweep / "report" / name).exists()
    mtime = (sweep / "single_task_equal_seed0" / "results.json").stat().st_mtime_ns
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0 and "skipped (reused)" in again.stderr
    assert (sweep / "single_task_equal_seed0" / "results.json").stat().st_mtime_ns == mtime


@pytest.mark.slow  # a run of the mtlbench command
def test_experiment_with_no_available_model_fails_in_one_line(tmp_path):
    proc = run_cli(
        [
            "experiment=stan_table2",
            "dataset=lifecycle",
            *TINY,
            "hydra.callbacks.summary.models=[nope1,nope2]",
            f"hydra.sweep.dir={tmp_path / 'x'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mtlbench: error:")]
    assert len(errors) == 1 and "nope1" in errors[0] and "Traceback" not in proc.stderr


SIMULATOR_PROTOCOLS = ("stan_dose_response", "multiscenario_lifecycle", "scenariowise", "multitask")


@pytest.mark.parametrize("name", ["stan_table2", "sfpnet_table4", "aem2tl_table", *SIMULATOR_PROTOCOLS])
def test_experiments_have_deterministic_sweep_dirs_and_a_report(name):
    cfg = compose_hydra([f"experiment={name}", "dataset=lifecycle", "dataset.n_rows=1000"])
    assert cfg.hydra.sweep.dir == f"multirun/{name}/lifecycle"
    if name in SIMULATOR_PROTOCOLS:  # the simulator by default (scenariowise: any dataset with scenarios)
        assert compose_hydra([f"experiment={name}"]).dataset.name == "lifecycle"
    else:
        paper = compose_hydra([f"experiment={name}", "dataset.path=x"])  # the dataset the paper used, by default
        assert paper.dataset.name == {"stan_table2": "wechat"}.get(name, "ali_ccp")
    assert cfg.hydra.callbacks.summary._target_ == "mtlbench.cli.sweep_callbacks.WriteReport"
    assert cfg.hydra.mode.name == "MULTIRUN"
    from mtlbench.report.tables import settings_from

    settings = settings_from(**{k: v for k, v in cfg.hydra.callbacks.summary.items() if k != "_target_"})
    assert settings.test == ("mannwhitney" if name == "sfpnet_table4" else "ttest")


# -- Optuna --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("monitor, direction", [("auc", "maximize"), ("logloss", "minimize"), ("ndcg@5", "maximize")])
def test_optuna_direction_follows_the_monitored_metric(monitor, direction):
    cfg = compose_hydra(["hparams_search=optuna", f"monitor={monitor}"])
    assert cfg.hydra.sweeper.direction == direction


@pytest.mark.slow
def test_optuna_search_maximises_the_validation_metric(tmp_path):
    hs = (
        "hparams_search=optuna"
        if "hparams_search" in (REPO / "configs" / "train.yaml").read_text()
        else "+hparams_search=optuna"
    )
    sweep = tmp_path / "hps"
    args = [
        hs,
        *[a for a in TINY if not a.startswith("batch_size")],
        "model=single_task",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("trial*/results.json"))]
    assert len(trials) == 3
    assert len({(t["config"]["optimizer"]["lr"], t["config"]["batch_size"]) for t in trials}) == 3

    def mean(t, split):
        return sum(m["auc"] for m in t["metrics"][split].values()) / len(t["metrics"][split])

    best = OmegaConf.load(sweep / "optimization_results.yaml")
    valid = [mean(t, "valid") for t in trials]
    assert best.best_value == pytest.approx(max(valid))
    winner = trials[valid.index(max(valid))]
    assert best.best_params["optimizer.lr"] == pytest.approx(winner["config"]["optimizer"]["lr"])
    assert best.best_value != pytest.approx(mean(winner, "test"))
    assert (sweep / "report" / "leaderboard.md").exists()


# -- wandb --------------------------------------------------------------------------------------------------
def read_wandb_records(path: Path) -> list:
    """Records of an offline ``run-*.wandb`` file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        data = raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(data)
        elif kind in (2, 3):
            pending = (pending if kind == 3 else b"") + data
        elif kind == 4:
            records.append(pending + data)
    out = []
    for data in records:
        rec = pb.Record()
        rec.ParseFromString(data)
        out.append(rec)
    return out


def record_key(item) -> str:
    """A wandb record item's key ("a/b" keys may be stored as nested keys)."""
    return item.key or "/".join(item.nested_key)


def test_wandb_is_offline_unless_configured(tmp_path, monkeypatch):
    from mtlbench.training import tracking

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert tracking.resolve_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    assert tracking.resolve_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_mode() == "disabled" and tracking.resolve_mode("offline") == "offline"


@pytest.mark.slow
def test_wandb_logs_config_steps_epochs_and_results_grouped_by_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *[a for a in TINY if a != "logger=none"],
        "logger=wandb",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=5",
        "model=mmoe",
        "seed=3",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next(sweep.glob("*_mmoe_*"))
    results = json.loads((run_dir / "results.json").read_text())
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = read_wandb_records(files[0])
    kinds = [r.WhichOneof("record_type") for r in records]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_group == str(sweep) and run.job_type == "mmoe"
    config = {record_key(i) for r in records if r.WhichOneof("record_type") == "config" for i in r.config.update}
    assert {"model", "dataset", "weighting", "optimizer", "seed"} <= config
    history: dict[str, int] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                history[record_key(item)] = history.get(record_key(item), 0) + 1
    for key in ("train/loss", "train/loss_click", "train/weight_purchase"):
        assert history.get(key, 0) >= 2, key  # per step
    assert history.get("valid/click/auc", 0) >= 2  # per epoch (2 epochs)
    summary = {
        record_key(item): json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for item in r.summary.update
    }
    assert summary["final/test/click/auc"] == pytest.approx(results["metrics"]["test"]["click"]["auc"])
    assert summary["final/params"] == results["params"]
    assert "exit" in kinds  # the run was finished


def test_the_multitask_protocol_reports_every_model_it_sweeps():
    from mtlbench.registry import MODELS

    cfg = compose_hydra(["experiment=multitask"])
    swept = cfg.hydra.sweeper.params.model.split(",")
    summary = cfg.hydra.callbacks.summary
    assert list(summary.models) == swept and set(summary.model_labels) == set(swept)
    assert summary.base == "single_task" and all(MODELS.get(name) for name in swept)
