"""Runs that survive faults: resume after a kill, non-finite losses, safe checkpoint loading."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.slow

BASE = [
    "dataset.n_rows=60000",
    "dataset.n_users=800",
    "dataset.n_items=400",
    "trainer.max_epochs=4",
    "callbacks.early_stopping_patience=null",
    "batch_size=512",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "model=mmoe",
    "seed=4",
]


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    ref = tmp_path / "ref"
    proc = run_cli([*BASE, f"hydra.run.dir={ref}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "mtlbench.cli.train", *BASE, f"hydra.run.dir={out}"]
    p = subprocess.Popen(
        args,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        start_new_session=True,
    )
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # mid-training: after the first epoch's checkpoint
    p.wait()
    assert last.exists() and not (out / "results.json").exists()
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert killed_at < 3, "the run finished before it could be killed; make it longer"

    proc = run_cli([*BASE, f"hydra.run.dir={out}", "resume=true"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stdout
    a = json.loads((ref / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    for split in ("valid", "test"):
        for task, m in a["metrics"][split].items():
            for metric in ("auc", "logloss", "gauc"):
                assert b["metrics"][split][task][metric] == pytest.approx(m[metric], abs=1e-6), (split, task)


def test_resume_refuses_a_different_config(tmp_path):
    out = tmp_path / "run"
    small = [*BASE[:3], "dataset.n_rows=8000", "trainer.max_epochs=1", *BASE[5:]]
    assert run_cli([*small, f"hydra.run.dir={out}"], cwd=tmp_path).returncode == 0
    proc = run_cli([*small, "seed=5", f"hydra.run.dir={out}", "resume=true"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "different config" in proc.stderr and "seed" in proc.stderr


def test_checkpoints_load_with_weights_only(tmp_path):
    out = tmp_path / "run"
    small = [*BASE[:3], "dataset.n_rows=8000", "trainer.max_epochs=1", *BASE[5:]]
    assert run_cli([*small, f"hydra.run.dir={out}"], cwd=tmp_path).returncode == 0
    best, last = (torch.load(out / "checkpoints" / name, weights_only=True) for name in ("best.ckpt", "last.ckpt"))
    assert "state_dict" in last and "optimizer_states" in last  # the full training state: resume
    assert "state_dict" in best and "optimizer_states" not in best  # the weights the final validate/test read
    assert best["state_dict"].keys() == last["state_dict"].keys()


def test_non_finite_loss_stops_the_run_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    small = [*BASE[:3], "dataset.n_rows=8000", "trainer.max_epochs=1", *BASE[5:]]
    proc = run_cli(["-m", *small, "optimizer.lr=1e30,1e-3", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mtlbench: error:")]
    assert len(errors) == 1 and "non-finite loss at step" in errors[0] and "task click" in errors[0]
    results = list(sweep.rglob("results.json"))
    assert len(results) == 1  # the diverged run wrote none; the next run of the sweep still ran
    assert json.loads(results[0].read_text())["config"]["optimizer"]["lr"] == pytest.approx(1e-3)


def test_non_finite_loss_without_a_host_sync_per_step_names_the_first_bad_step():
    """On an accelerator the loss is not checked on the host every step (a sync per step): the first non-finite
    step is kept on the device and the run stops at the next logging step naming it (forced here on the CPU)."""
    import pytorch_lightning as pl

    from mtlbench.errors import TrainingError
    from mtlbench.training.run import build_components

    from conftest import compose_cfg

    small = ["dataset.n_rows=6000", "dataset.n_users=60", "optimizer.lr=1e30", "trainer.log_every_n_steps=3"]
    dm, module = build_components(compose_cfg(small))
    module.sync_each_step = False
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        log_every_n_steps=3,
        enable_model_summary=False,
    )
    with pytest.raises(TrainingError, match=r"non-finite loss at step (\d+) .*found at step 2\)") as info:
        trainer.fit(module, datamodule=dm)
    first = int(info.value.args[0].split("step ")[1].split()[0])
    assert 0 <= first <= 2


def test_last_checkpoint_is_written_after_every_epoch_best_only_when_it_improves(tmp_path):
    """last.ckpt follows every epoch (resume loses at most one), best.ckpt only the monitored peak."""
    import pytorch_lightning as pl

    from mtlbench.training.run import build_callbacks

    from conftest import compose_cfg

    seen = []

    class Logs(pl.LightningModule):  # validation AUC 0.6, 0.5, 0.4: the best stays at epoch 0
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            return (self.w - 1).pow(2).sum()

        def validation_step(self, batch, i) -> None:
            pass

        def on_validation_epoch_end(self) -> None:
            self.log("valid/auc_mean", 0.6 - 0.1 * self.current_epoch)

        def on_train_epoch_start(self) -> None:
            last = tmp_path / "checkpoints" / "last.ckpt"
            seen.append(torch.load(last, weights_only=True)["epoch"] if last.exists() else None)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cfg = compose_cfg(["callbacks.checkpoint_every_n_steps=null"])
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=build_callbacks(cfg, tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2)))
    trainer.fit(Logs(), train_dataloaders=data, val_dataloaders=data)
    assert seen == [None, 0, 1]  # at the start of epochs 0, 1, 2: the state saved at the end of the one before
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == 0 and "optimizer_states" not in best
