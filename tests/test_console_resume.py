"""A quiet, informative console and resuming a run (issue 17): Lightning's banners off unless ``verbose``, one line
per run, "run i/N" and an ETA in a sweep, one metric per task in the terminal summary; ``resume=true`` finds the
run directory, ``resume=<dir>`` takes one; checkpoints every N steps continue mid-epoch; a resumed run's speed counts
only what it trained."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, run_cli

# -- the console ------------------------------------------------------------------------------------------------
LIGHTNING_NOISE = ("GPU available", "TPU available", "💡", "litlogger", "Restoring states", "Loaded model weights")
TINY_RUN = [
    "dataset.n_users=200",
    "dataset.n_rows=6000",
    "trainer.max_epochs=2",
    "predictions=false",
    "analysis=none",
]


def _console(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The ``mtlbench`` command as a user runs it: warnings shown as Python shows them (run_cli hides them)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "mtlbench.cli.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_quiet_hides_the_warnings_nobody_can_act_on_unless_verbose():
    import warnings

    from mtlbench.log import quiet

    def warn() -> None:
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("The number of training batches (4) is smaller than the logging interval", stacklevel=1)
        warnings.warn("hash_buckets hashes the user field 'user'", stacklevel=1)  # one to act on: always shown

    for verbose, expected in ((False, 1), (True, 3)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet(verbose):
                warn()
        assert len(caught) == expected, [str(w.message) for w in caught]


def test_quiet_hides_lightning_info_unless_verbose_and_restores_the_levels():
    from pytorch_lightning.utilities.rank_zero import rank_zero_info

    from mtlbench.log import quiet

    pl_logger = logging.getLogger("pytorch_lightning")
    before = pl_logger.level
    records = _Records()
    pl_logger.addHandler(records)
    try:
        with quiet(verbose=False):
            rank_zero_info("GPU available: False, used: False")
        assert records.messages == []
        assert pl_logger.level == before
        with quiet(verbose=True):
            rank_zero_info("GPU available: False, used: False")
        assert records.messages == ["GPU available: False, used: False"]
    finally:
        pl_logger.removeHandler(records)


def test_progress_bar_is_one_transient_line_unless_verbose_or_switched_off():
    from mtlbench.training.console import CompactProgressBar, progress_bar

    (bar,) = progress_bar({"enable_progress_bar": True}, verbose=False)
    assert isinstance(bar, CompactProgressBar)
    assert progress_bar({"enable_progress_bar": True}, verbose=True) == []  # Lightning's own bars
    assert progress_bar({"enable_progress_bar": False}, verbose=False) == []  # none
    assert bar.init_validation_tqdm().disable and bar.init_test_tqdm().disable and bar.init_sanity_tqdm().disable
    assert bar.init_train_tqdm().leave is False


RESULTS = {
    "model": "mmoe",
    "dataset": "lifecycle",
    "weighting": "equal",
    "seed": 2,
    "config": {"monitor": "auc"},
    "metrics": {
        "valid": {"click": {"auc": 0.7, "gauc": 0.6}, "purchase": {"auc": 0.8, "gauc": 0.65}},
        "test": {"click": {"auc": 0.71234, "gauc": 0.61}, "purchase": {"auc": 0.80001, "gauc": 0.66}},
    },
    "train": {"samples_per_second": 1234.0},
}


def test_run_line_names_the_run_its_test_metric_per_task_time_and_directory():
    from mtlbench.report.summary import run_line

    line = run_line(RESULTS, "outputs/lifecycle/mmoe/x_seed2", 83.4)
    assert line == (
        "mmoe seed 2 · test auc: click 0.7123, purchase 0.8000 · 1 min 23 s · outputs/lifecycle/mmoe/x_seed2"
    )
    other = {**RESULTS, "weighting": "uncertainty", "config": {"monitor": "gauc"}}
    assert (
        run_line(other, "d", 2.0) == "mmoe + uncertainty seed 2 · test gauc: click 0.6100, purchase 0.6600 · 2.0 s · d"
    )


def _run(model: str, seed: int, auc: float, lr: float = 1e-3) -> dict:
    cfg = {"seed": seed, "monitor": "auc", "model": {"name": model}, "optimizer": {"lr": lr}}
    cfg |= {"dataset": {"name": "lifecycle"}, "weighting": {"name": "equal"}}
    return {
        "dataset": "lifecycle",
        "model": model,
        "weighting": "equal",
        "seed": seed,
        "config": cfg,
        "metrics": {"test": {t: {"auc": auc, "gauc": auc - 0.1} for t in ("click", "long_view", "purchase")}},
    }


def test_terminal_summary_shows_one_metric_per_task_and_no_unexplained_columns():
    from mtlbench.report.summary import mean_std_table

    table = mean_std_table([_run("mmoe", 0, 0.70), _run("mmoe", 1, 0.72), _run("ple", 0, 0.75)])
    lines = table.splitlines()
    assert lines[0] == "| dataset | model | seeds | click auc | long_view auc | purchase auc |"
    assert lines[2] == "| lifecycle | mmoe | 2 | 0.7100 ± 0.0141 | 0.7100 ± 0.0141 | 0.7100 ± 0.0141 |"
    assert len(lines) == 4 and "setting" not in table  # nothing but the model tells the rows apart

    lr = mean_std_table([_run("mmoe", 0, 0.70), _run("mmoe", 0, 0.60, lr=1e-2), _run("ple", 0, 0.75)])
    assert "| lifecycle | mmoe | optimizer.lr=0.001 | 1 | 0.7000 | 0.7000 |" in lr  # one seed: no "± 0.0000"
    assert "| lifecycle | ple | – | 1 |" in lr  # one ple group: nothing sets it apart from another ple row
    assert lr.splitlines()[-1].startswith("setting: the config values in which rows of the same model differ")


def test_compact_report_echo_shows_one_metric_per_task(tmp_path):
    from mtlbench.cli.sweep_callbacks import WriteReport

    for i, (model, auc) in enumerate([("single_task", 0.70), ("single_task", 0.72), ("mmoe", 0.75)]):
        run = tmp_path / f"{model}_seed{i}"
        run.mkdir()
        results = _run(model, i, auc)
        (run / "config.yaml").write_text(json.dumps(results["config"]))
        (run / "results.json").write_text(json.dumps({**results, "task_roles": {}, "params": 1}))
    out = io.StringIO()
    with redirect_stdout(out):
        WriteReport(echo="compact", metrics=["auc", "gauc"], title="T", html=False).on_multirun_end(
            OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
        )
    text = out.getvalue()
    assert "| model | seeds | click AUC | long_view AUC | purchase AUC |" in text
    assert "GAUC" not in text and "RelaImpr" not in text  # those are in the report
    assert "| MLP_Single | 2 | 0.7100 ± 0.0141 |" in text or "| single_task | 2 | 0.7100 ± 0.0141 |" in text
    assert (tmp_path / "report" / "leaderboard.md").exists()
    with pytest.raises(ValueError, match="echo"):
        WriteReport(echo="short")


def _sweep_config(**extra: object):
    return OmegaConf.create(
        {
            "verbose": False,
            "hydra": {
                "sweeper": {
                    "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": {"model": "a,b", "seed": "0"},
                },
                "launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
                "overrides": {"task": ["seed=0,1,2", "dataset.n_rows=100"]},
                **extra,
            },
        }
    )


def test_sweep_jobs_counts_the_product_of_the_sweep_values_command_line_first():
    from hydra import compose, initialize_config_module

    from mtlbench.cli.sweep_callbacks import sweep_jobs

    assert sweep_jobs(_sweep_config()) == (6, ["model", "seed"])  # seed=0,1,2 of the command line wins
    compose_cfg([])  # registers the schema and resolvers
    with initialize_config_module("mtlbench.configs", version_base="1.3"):
        quickstart = compose("train", overrides=["experiment=quickstart"], return_hydra_config=True)
    assert sweep_jobs(quickstart) == (12, ["model", "seed"])
    optuna = _sweep_config()
    optuna.hydra.sweeper = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"}
    optuna.hydra.sweeper.n_trials = 20
    assert sweep_jobs(optuna)[0] == 20


def test_sweep_progress_prints_run_i_of_n_and_an_eta_from_the_mean_job_time(monkeypatch):
    from mtlbench.cli import sweep_callbacks
    from mtlbench.cli.sweep_callbacks import BASIC_LAUNCHER_LOGGER, SweepProgress

    clock = iter([0.0, 0.0, 10.0, 10.0, 40.0, 40.0, 50.0, 60.0])
    monkeypatch.setattr(sweep_callbacks.time, "perf_counter", lambda: next(clock))
    cb = SweepProgress()
    sweep = _sweep_config()
    out = io.StringIO()
    with redirect_stdout(out):
        cb.on_multirun_start(sweep)  # t=0
        assert logging.getLogger(BASIC_LAUNCHER_LOGGER).level == logging.WARNING  # its lines are replaced
        for num, task in enumerate([["model=a", "seed=0", "dataset.n_rows=100"], ["model=a", "seed=1"]]):
            job = OmegaConf.create({"hydra": {"job": {"num": num}, "overrides": {"task": task}}})
            cb.on_job_start(job)  # t=0, then t=10
            cb.on_job_end(job, None)  # t=10 (10 s), then t=40 (30 s)
        cb.on_job_start(OmegaConf.create({"hydra": {"job": {"num": 2}, "overrides": {"task": ["model=a"]}}}))
        cb.on_job_end(None, None)  # t=50
        cb.on_multirun_end(sweep)  # t=60
    lines = out.getvalue().splitlines()
    assert lines[0] == "run 1/6: model=a seed=0"  # the swept values only
    assert lines[1] == "run 2/6: model=a seed=1 · 10 s so far, ETA 50 s"  # 10 s per job x 5 jobs left
    assert lines[2] == "run 3/6: model=a · 40 s so far, ETA 1 min 20 s"  # (10 + 30) / 2 = 20 s x 4
    assert lines[3] == "sweep: 3 runs in 1 min 00 s"
    assert logging.getLogger(BASIC_LAUNCHER_LOGGER).level == logging.NOTSET  # restored


def test_sweep_progress_is_silent_for_jobs_run_by_another_process():
    from mtlbench.cli.sweep_callbacks import SweepProgress

    cb = SweepProgress()
    cb.on_multirun_start(_sweep_config())
    cb.pid = os.getpid() + 1  # as in a worker process of the parallel launcher (the callback is pickled there)
    out = io.StringIO()
    with redirect_stdout(out):
        cb.on_job_start(OmegaConf.create({"hydra": {"job": {"num": 0}, "overrides": {"task": []}}}))
    cb.on_multirun_end(_sweep_config())
    assert out.getvalue() == ""


@pytest.mark.slow
def test_a_run_prints_one_result_line_and_no_lightning_banners_unless_verbose(tmp_path):
    out = tmp_path / "run"
    proc = _console([*TINY_RUN, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert not [w for w in LIGHTNING_NOISE if w in console], console
    assert proc.stderr == "", proc.stderr  # no warnings
    lines = [line for line in proc.stdout.splitlines() if line.startswith("mmoe seed 0 · test auc: click ")]
    assert len(lines) == 1 and lines[0].endswith(" s · run"), proc.stdout  # relative to the working directory
    auc = json.loads((out / "results.json").read_text())["metrics"]["test"]["click"]["auc"]
    assert f"click {auc:.4f}," in lines[0]

    loud = _console([*TINY_RUN, f"hydra.run.dir={tmp_path / 'loud'}", "verbose=true"], cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "GPU available" in loud.stdout + loud.stderr and "Restoring states" in loud.stdout + loud.stderr
    assert "is smaller than the logging interval" in loud.stderr  # a warning hidden by default (with a logger)
    assert (
        json.loads((tmp_path / "loud" / "results.json").read_text())["metrics"]
        == json.loads((out / "results.json").read_text())["metrics"]
    )  # verbose changes what is shown, not the numbers


@pytest.mark.slow
def test_a_sweep_prints_run_i_of_n_eta_one_line_per_run_and_a_narrow_table(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _console(
        ["-m", *TINY_RUN, "trainer.max_epochs=1", "model=single_task,mmoe", f"hydra.sweep.dir={sweep}"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "run 1/2: model=single_task" in lines
    assert any(line.startswith("run 2/2: model=mmoe · ") and ", ETA " in line for line in lines), lines
    done = [line for line in lines if " seed 0 · test auc: " in line]
    assert len(done) == 2 and done[0].endswith(" s · sweep/0_single_task_equal_seed0"), done
    assert "Launching 2 jobs locally" not in proc.stdout + proc.stderr  # replaced by the run i/N lines
    head = next(line for line in lines if line.startswith("| dataset |"))
    assert head == "| dataset | model | seeds | click auc | long_view auc | purchase auc |"
    assert not [w for w in LIGHTNING_NOISE if w in proc.stdout + proc.stderr] and proc.stderr == "", proc.stderr


# -- resume=true / resume=<dir> -----------------------------------------------------------------------------------
def _fake_run(path: Path, cfg, checkpoint: bool = True, complete: bool = False, mtime: int | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if checkpoint:
        (path / "checkpoints").mkdir()
        (path / "checkpoints" / "last.ckpt").write_bytes(b"not read here")
        if mtime is not None:
            os.utime(path / "checkpoints" / "last.ckpt", ns=(mtime, mtime))
    if complete:
        (path / "results.json").write_text("{}")
    return path


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    from mtlbench.cli.resume import resume_argv

    with pytest.raises(SystemExit) as stop:
        resume_argv(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mtlbench: error: ")  # one line
    return err


def test_resume_argv_leaves_other_command_lines_alone():
    from mtlbench.cli.resume import resume_argv

    for argv in (
        ["mtlbench", "seed=1"],
        ["mtlbench", "resume=false"],
        ["mtlbench", "resume=true", "hydra.run.dir=x"],  # the directory is given
        ["mtlbench", "-m", "resume=true", "seed=0,1"],  # a sweep continues each job in its own directory
        ["mtlbench", "experiment=quickstart", "resume=true"],  # a sweep by its experiment config
    ):
        assert resume_argv(argv) == argv


def test_resume_true_finds_the_latest_incomplete_run_of_the_same_config(tmp_path, monkeypatch, capsys):
    from mtlbench.cli.resume import resume_argv

    monkeypatch.chdir(tmp_path)
    args = ["model=ple", "seed=3", "dataset.n_rows=9000"]
    cfg = compose_cfg(args)
    runs = Path("outputs/lifecycle/ple")
    _fake_run(runs / "2026-01-01_10-00-00_seed3", cfg, mtime=1_000)
    latest = _fake_run(runs / "2026-01-01_11-00-00_seed3", cfg, mtime=2_000)
    _fake_run(runs / "2026-01-01_12-00-00_seed3", cfg, mtime=3_000, complete=True)  # complete: not resumed
    _fake_run(runs / "2026-01-01_13-00-00_seed3", cfg, checkpoint=False)  # nothing to continue from
    _fake_run(runs / "2026-01-01_14-00-00_seed3", compose_cfg([*args, "optimizer.lr=0.01"]), mtime=4_000)
    _fake_run(runs / "2026-01-01_15-00-00_seed4", compose_cfg(["model=ple", "seed=4", "dataset.n_rows=9000"]))
    loud = _fake_run(runs / "2026-01-01_09-00-00_seed3", compose_cfg([*args, "verbose=true"]), mtime=5_000)

    argv = ["mtlbench", *args, "resume=true", "verbose=false"]
    assert resume_argv(argv) == ["mtlbench", *args, "resume=true", "verbose=false", f"hydra.run.dir={loud}"]
    assert "continuing" in capsys.readouterr().err  # what verbose shows is not part of the config compared
    (loud / "results.json").write_text("{}")
    assert resume_argv(argv)[-1] == f"hydra.run.dir={latest}"


def test_resume_true_without_an_incomplete_run_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, ["mtlbench", "model=ple", "resume=true"])
    assert "resume=true: no incomplete run of this config in outputs/lifecycle/ple/*_seed0" in err
    _fake_run(Path("outputs/lifecycle/ple/2026-01-01_10-00-00_seed0"), compose_cfg(["model=ple", "seed=0"]))
    err = _error(capsys, ["mtlbench", "model=ple", "resume=true", "optimizer.lr=0.5"])
    assert "1 incomplete run(s) of another config" in err and "differs in optimizer.lr" in err
    assert not Path("outputs/lifecycle/ple").glob("*_seed0").__next__().joinpath("results.json").exists()


def test_resume_dir_takes_the_directory(tmp_path, capsys):
    from mtlbench.cli.resume import resume_argv

    run = _fake_run(tmp_path / "my run", compose_cfg([]))
    assert resume_argv(["mtlbench", f"resume={run}", "seed=0"]) == [
        "mtlbench",
        "resume=true",
        "seed=0",
        f"hydra.run.dir='{run}'",  # quoted: the path has a space
    ]
    assert "no such directory" in _error(capsys, ["mtlbench", f"resume={tmp_path / 'nope'}"])
    (run / "results.json").write_text("{}")
    assert "that run is complete" in _error(capsys, ["mtlbench", f"resume={run}"])
    empty = _fake_run(tmp_path / "empty", compose_cfg([]), checkpoint=False)
    assert "no checkpoints/last.ckpt in it" in _error(capsys, ["mtlbench", f"resume={empty}"])
    assert "both name the run directory" in _error(capsys, ["mtlbench", f"resume={empty}", "hydra.run.dir=x"])


# -- checkpoints every N steps, mid-epoch resume and speed -----------------------------------------------------------
ROWS, BATCH = 3000, 64  # 2,400 training rows: 37 batches of 64 and one of 32 per epoch
STEPS_BASE = [
    f"dataset.n_rows={ROWS}",
    "dataset.n_users=60",
    "dataset.n_items=80",
    "trainer.max_epochs=2",
    "callbacks.early_stopping_patience=null",
    f"batch_size={BATCH}",
    "threads=1",
    "logger=none",
    "predictions=false",
    "model=mmoe",
    "seed=3",
]
#: runs the mtlbench command; SIGKILL at training step KILL_AT_STEP (no chance to save anything: a crash)
SELF_KILL = """
import os, signal
from mtlbench.training.module import MultiTaskModule

at = int(os.environ["KILL_AT_STEP"])
step = MultiTaskModule.training_step

def training_step(self, batch, batch_idx):
    if self.global_step == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, batch, batch_idx)

MultiTaskModule.training_step = training_step
from mtlbench.cli.train import main
main()
"""


def test_step_checkpoints_are_configured_next_to_the_epoch_checkpoint(tmp_path):
    import pytorch_lightning as pl

    from mtlbench.errors import ConfigError
    from mtlbench.training.run import build_callbacks

    ckpts = [c for c in build_callbacks(compose_cfg([]), tmp_path) if isinstance(c, pl.callbacks.ModelCheckpoint)]
    assert [c.monitor for c in ckpts] == ["valid/auc_mean", None, None]  # best.ckpt first: checkpoint_callback
    best, epochs, steps = ckpts
    assert best.save_weights_only and not best.save_last  # best.ckpt: the weights the final test reads
    # last.ckpt, the full state, every epoch: the latest (no monitor, top 1) under that name
    assert epochs._every_n_epochs == 1 and epochs.filename == "last" and epochs.save_top_k == 1
    assert not epochs.save_weights_only
    assert steps._every_n_train_steps == 500 and steps.save_last and steps.save_top_k == 0
    assert not steps.save_weights_only
    assert all(not c._enable_version_counter for c in ckpts)  # both write last.ckpt, never last-v1.ckpt
    off = build_callbacks(compose_cfg(["callbacks.checkpoint_every_n_steps=null"]), tmp_path)
    assert len([c for c in off if isinstance(c, pl.callbacks.ModelCheckpoint)]) == 2
    with pytest.raises(ConfigError, match="checkpoint_every_n_steps must be a positive"):
        build_callbacks(compose_cfg(["callbacks.checkpoint_every_n_steps=0"]), tmp_path)


@pytest.mark.slow
def test_a_crash_mid_epoch_resumes_from_the_step_checkpoint_to_the_same_numbers_and_honest_speed(tmp_path):
    ref = tmp_path / "ref"
    assert run_cli([*STEPS_BASE, f"hydra.run.dir={ref}"], cwd=tmp_path).returncode == 0
    reference = json.loads((ref / "results.json").read_text())

    out = tmp_path / "outputs" / "crashed"
    args = [*STEPS_BASE, "callbacks.checkpoint_every_n_steps=20", f"hydra.run.dir={out}"]
    script = tmp_path / "self_kill.py"
    script.write_text(SELF_KILL)
    env = dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", KILL_AT_STEP="50")
    proc = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 40 and ckpt["epoch"] == 1  # the step checkpoint, 2 batches into the 2nd epoch
    assert not (out / "results.json").exists()

    resumed = run_cli([*args, "resume=true"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for split in ("valid", "test"):
        for task, m in reference["metrics"][split].items():
            for metric in ("auc", "logloss", "gauc"):
                assert results["metrics"][split][task][metric] == pytest.approx(m[metric], abs=1e-6), (split, task)
    # the speed of the resumed process: the rows it trained (the 2nd epoch but its first 2 batches) over its own
    # training time
    per_epoch = reference["train"]["samples"] // 2
    train = results["train"]
    assert train["samples"] == per_epoch - 2 * BATCH
    # results.json rounds the seconds to the millisecond: for a sub-second run that alone moves samples / seconds
    rounding = 0.0005 / train["seconds"]
    assert train["samples_per_second"] == pytest.approx(train["samples"] / train["seconds"], rel=1e-3 + rounding)


@pytest.mark.slow
def test_resume_true_continues_the_run_directory_and_leaves_no_new_one(tmp_path):
    args = [*STEPS_BASE, "trainer.max_epochs=1", "callbacks.checkpoint_every_n_steps=null"]
    first = run_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "lifecycle" / "mmoe").iterdir()
    (run / "results.json").unlink()  # as if the run had died after its last checkpoint
    again = run_cli([*args, "resume=true"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.name for p in (tmp_path / "outputs" / "lifecycle" / "mmoe").iterdir()] == [run.name]
    assert (run / "results.json").exists() and f"continuing {Path('outputs/lifecycle/mmoe') / run.name}" in again.stderr
