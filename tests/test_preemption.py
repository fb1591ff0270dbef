"""Preemption: a signal stops a real run at the next step boundary with a checkpoint; the requeued job continues.

The fault is produced by sending the signal to a run in a subprocess: either the run sends it to itself from
inside a chosen training step (deterministic: the signal arrives mid-step, as a scheduler's does), or the test
sends submitit's preemption signal to a job of a sweep under submitit's local launcher, which requeues the job
the way Slurm does. The continued run must end with the numbers (and weights) of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.slow  # every test runs the mtlbench command in subprocesses

ROWS = 3000
BATCH = 64
TRAIN_BATCHES = 38  # 80% of ROWS in batches of BATCH
BASE = [
    f"dataset.n_rows={ROWS}",
    "dataset.n_users=60",
    "dataset.n_items=80",
    "trainer.max_epochs=2",
    "callbacks.early_stopping_patience=null",
    f"batch_size={BATCH}",
    "threads=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "model=mmoe",
    "seed=3",
]
METRICS = ("auc", "logloss", "gauc")

#: runs the mtlbench command; training step SIGNAL_AT_STEP sends SIGNAL_NAME to its own process
SELF_SIGNAL = """
import os, signal, sys
from mtlbench.training.module import MultiTaskModule

at, sig = int(os.environ["SIGNAL_AT_STEP"]), getattr(signal, os.environ["SIGNAL_NAME"])
step = MultiTaskModule.training_step

def training_step(self, batch, batch_idx):
    if self.global_step == at:
        os.kill(os.getpid(), sig)
    return step(self, batch, batch_idx)

MultiTaskModule.training_step = training_step
from mtlbench.cli.train import main
main()
"""


def _env() -> dict[str, str]:
    return dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def _same_numbers(ref: Path, run: Path, weights: bool = True) -> None:
    a = json.loads((ref / "results.json").read_text())["metrics"]
    b = json.loads((run / "results.json").read_text())["metrics"]
    for split in ("valid", "test"):
        for task, m in a[split].items():
            for metric in METRICS:
                assert b[split][task][metric] == pytest.approx(m[metric], abs=1e-6), (split, task, metric)
    if not weights:
        return
    wa = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:  # the final weights, not only the selected checkpoint's
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of BASE."""
    ref = tmp_path_factory.mktemp("preemption") / "ref"
    proc = run_cli([*BASE, f"hydra.run.dir={ref}"], cwd=ref.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ref


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_signal_checkpoints_at_the_step_boundary_and_the_same_command_continues(sig, reference, tmp_path):
    out = tmp_path / "run"
    at = TRAIN_BATCHES + 12  # mid-way through the second epoch
    script = tmp_path / "self_signal.py"
    script.write_text(SELF_SIGNAL)
    proc = subprocess.run(
        [sys.executable, str(script), *BASE, f"hydra.run.dir={out}"],
        cwd=tmp_path,
        env=dict(_env(), SIGNAL_AT_STEP=str(at), SIGNAL_NAME=sig),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 144, proc.stderr[-3000:]  # submitit's requeue code
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mtlbench:")]
    assert len(lines) == 1 and lines[0].startswith(f"mtlbench: preempted: stopped by {sig}"), lines
    assert str(out / "checkpoints" / "last.ckpt") in lines[0]
    assert not (out / "results.json").exists()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == at + 1  # the boundary after the step the signal arrived in
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": at + 1 - 38}]
    assert json.loads((out / "checkpoints" / "preempted.json").read_text())["signal"] == sig

    proc = run_cli([*BASE, f"hydra.run.dir={out}"], cwd=tmp_path)  # the requeued job: the same command
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stdout + proc.stderr
    assert not (out / "checkpoints" / "preempted.json").exists()
    _same_numbers(reference, out)


def test_a_signal_after_early_stopping_decided_does_not_train_on(tmp_path):
    """Early stopping (patience 0) ends this run after its third epoch; the signal arrives in that epoch's last step,
    so the stop comes after validation decided to stop: the continued run must stop there too."""
    es = [*BASE, "trainer.max_epochs=6", "callbacks.early_stopping_patience=0", "optimizer.lr=0.01"]
    ref = tmp_path / "ref"
    assert run_cli([*es, f"hydra.run.dir={ref}"], cwd=tmp_path).returncode == 0
    assert json.loads((ref / "results.json").read_text())["train"]["epochs"] == 3  # stopped early, after epoch 2

    out = tmp_path / "run"
    script = tmp_path / "self_signal.py"
    script.write_text(SELF_SIGNAL)
    proc = subprocess.run(
        [sys.executable, str(script), *es, f"hydra.run.dir={out}"],
        cwd=tmp_path,
        env=dict(_env(), SIGNAL_AT_STEP=str(3 * TRAIN_BATCHES - 1), SIGNAL_NAME="SIGTERM"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 144, proc.stderr[-3000:]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["mtlbench_should_stop"]
    proc = run_cli([*es, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_numbers(ref, out, weights=False)  # (an early-stopped run's last.ckpt is not its final state)
    assert json.loads((out / "results.json").read_text())["train"]["epochs"] == 3  # no epoch trained after it


#: BASE with the CSV log (every 10 steps: rows inside each epoch too) instead of no logger
LOGGED = [a for a in BASE if a != "logger=none"] + ["logger=csv", "trainer.log_every_n_steps=10"]


def _log_rows(run: Path) -> dict[tuple[str, str], dict[str, float]]:
    """metrics.csv as {(epoch, step): {column: value}} over the cells that hold a value."""
    import csv

    with open(run / "logs" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        key = (row.pop("epoch"), row.pop("step"))
        assert key not in out or not (out[key].keys() & {k for k, v in row.items() if v}), f"row {key} twice"
        out.setdefault(key, {}).update({k: float(v) for k, v in row.items() if v})
    return out


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_resumed_run_keeps_the_log_of_the_epochs_before_it(sig, tmp_path):
    """The validation curve of a stopped and continued run is the uninterrupted run's, every epoch of it: Lightning's
    CSV logger used to delete the earlier rows on resume. SIGKILL gives the process no chance to write its buffered
    rows: those the epoch-end checkpoint covers must be on disk already; the steps after it are logged once."""
    ref = tmp_path / "ref"
    assert run_cli([*LOGGED, "trainer.max_epochs=3", f"hydra.run.dir={ref}"], cwd=tmp_path).returncode == 0
    expected = _log_rows(ref)
    valid_epochs = sorted(e for (e, _), v in expected.items() if "valid/auc_mean" in v)
    assert valid_epochs == ["0", "1", "2", "3"]  # 3 epochs, then the final validate (logged as epoch 3)

    out = tmp_path / "run"
    script = tmp_path / "self_signal.py"
    script.write_text(SELF_SIGNAL)
    proc = subprocess.run(
        [sys.executable, str(script), *LOGGED, "trainer.max_epochs=3", f"hydra.run.dir={out}"],
        cwd=tmp_path,
        env=dict(_env(), SIGNAL_AT_STEP=str(TRAIN_BATCHES + 25), SIGNAL_NAME=sig),  # late in the second epoch
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == (144 if sig == "SIGTERM" else -9), proc.stderr[-3000:]
    assert not (out / "results.json").exists()
    resume = [] if sig == "SIGTERM" else ["resume=true"]  # no preemption marker after SIGKILL: asked explicitly
    proc = run_cli([*LOGGED, "trainer.max_epochs=3", *resume, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stdout + proc.stderr
    got = _log_rows(out)
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        assert got[key].keys() == values.keys(), key
        for column, value in values.items():
            assert got[key][column] == pytest.approx(value, abs=1e-6, nan_ok=True), (key, column)


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below ``pid``."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            out.append((child, cmd))
            todo.append(child)
    return out


def test_submitit_requeues_a_preempted_job_and_it_continues(tmp_path):
    """A sweep under submitit's local launcher: its preemption signal (SIGUSR2) mid-training. The job saves at the
    step boundary, submitit resubmits it (exit code 144 -> requeue), the requeued job continues the checkpoint."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    job = sweep / "0_mmoe_equal_seed3"
    longer = [*BASE, "trainer.max_epochs=3", "batch_size=16"]  # signalled in epoch 1 of 3
    args = [*longer, "hydra/launcher=submitit_local"]
    ref_args = longer
    ref = tmp_path / "ref16"
    proc = run_cli([*ref_args, f"hydra.run.dir={ref}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    p = subprocess.Popen(
        [sys.executable, "-m", "mtlbench.cli.train", "-m", *args, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not (job / "checkpoints" / "last.ckpt").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # the first epoch's checkpoint: the job is training its second epoch
    tasks = [pid for pid, cmd in _descendants(p.pid) if "submitit.core._submit" in cmd]
    assert len(tasks) == 1, _descendants(p.pid)
    os.kill(tasks[0], signal.SIGUSR2)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-3000:]

    logs = "".join(f.read_text() for f in sweep.glob(".submitit/*/*_log.*"))
    assert "stopped by SIGUSR2: saved" in logs  # at a step boundary, before submitit's requeue
    assert "Requeued job" in logs
    assert "resuming from" in logs and "stopped by a signal" in logs  # the requeued job continued
    _same_numbers(ref, job)


def test_resume_refuses_a_checkpoint_of_another_version(tmp_path):
    out = tmp_path / "run"
    small = [*BASE, "trainer.max_epochs=1"]
    assert run_cli([*small, f"hydra.run.dir={out}"], cwd=tmp_path).returncode == 0
    last = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["mtlbench_version"]  # every checkpoint records the version that wrote it
    ckpt["mtlbench_version"] = "0.0.1"
    torch.save(ckpt, last)
    before = (out / "results.json").read_text()

    proc = run_cli([*small, f"hydra.run.dir={out}", "resume=true"], cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mtlbench: error:")]
    assert len(errors) == 1 and "written by mtlbench 0.0.1" in errors[0] and str(last) in errors[0], proc.stderr
    assert (out / "results.json").read_text() == before  # refused before anything was touched

    # a requeued job (no resume=true) does not continue it either: it says why in one line and starts over
    (out / "checkpoints" / "preempted.json").write_text("{}")
    proc = run_cli([*small, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [line for line in (proc.stdout + proc.stderr).splitlines() if "not continuing" in line]
    assert len(warned) == 1 and "written by mtlbench 0.0.1" in warned[0]
    assert "resuming from" not in proc.stdout + proc.stderr
    assert torch.load(last, weights_only=True)["mtlbench_version"] != "0.0.1"
