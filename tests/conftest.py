"""Shared fixtures: a tiny dataset config, an isolated cache, the path of ../shared/data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from mtlbench.config import register_configs

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FAST = ["trainer.max_epochs=1", "batch_size=512", "trainer.enable_progress_bar=false", "logger=none"]
TINY = ["dataset.n_rows=12000", "dataset.n_users=400", "dataset.n_items=300", *FAST]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")


def compose_cfg(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    register_configs()
    with initialize_config_module("mtlbench.configs", version_base="1.3"):
        return compose(config_name, overrides=list(overrides or []))


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed ``mtlbench`` command the way a user does."""
    env = dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "mtlbench.cli.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"../shared/data/{name} is not present (tests that need real data samples skip)")
    return path
