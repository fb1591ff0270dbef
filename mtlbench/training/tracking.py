"""Weights & Biases logger that stays offline unless the user has configured wandb.

``logger=wandb`` logs the resolved config once, then everything the LightningModule logs: per-step
``train/loss``, ``train/loss_<task>``, ``train/weight_<task>`` and per-epoch ``valid/<task>/<metric>``;
:func:`log_results` adds the final results (test and validation metrics of the selected checkpoint,
speed, parameter count) to the run summary, and :func:`finish` closes the run so that the next job of a
sweep (in the same process) starts its own. Runs of one sweep share a group: the sweep directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def wandb_configured() -> bool:
    """True when the user set up wandb: an API key in the environment or a ``wandb login`` entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def resolve_mode(mode: str | None = None) -> str:
    """The wandb mode: the one asked for, else ``$WANDB_MODE``, else online only if wandb is configured."""
    return mode or os.environ.get("WANDB_MODE") or ("online" if wandb_configured() else "offline")


def sweep_group() -> str | None:
    """The sweep directory of the running Hydra multirun job (None for a single run or outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hc.mode is None or hc.mode.name != "MULTIRUN":
        return None
    return str(hc.sweep.dir)


def wandb_logger(
    run_dir: Path,
    config: dict[str, Any],
    project: str = "mtlbench",
    entity: str | None = None,
    group: str | None = None,
    mode: str | None = None,
) -> Any:
    """A Lightning ``WandbLogger`` writing into ``run_dir/wandb``; offline unless wandb is configured."""
    from pytorch_lightning.loggers import WandbLogger

    mode = resolve_mode(mode)
    if group is None:
        group = sweep_group() or f"{config['dataset']['name']}-{run_dir.parent.name}"
    tags = [str(config["dataset"]["name"]), str(config["model"]["name"]), str(config["weighting"]["name"])]
    logger = WandbLogger(
        project=project,
        entity=entity,
        group=group,
        save_dir=str(run_dir),
        mode=mode,
        name=run_dir.name,
        job_type=str(config["model"]["name"]),
        tags=tags,
    )
    logger.log_hyperparams(config)
    return logger


def _active_run() -> Any:
    wandb = sys.modules.get("wandb")  # only if a wandb logger was created in this process
    return getattr(wandb, "run", None) if wandb is not None else None


def flat_results(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a results.json as flat ``final/...`` keys."""
    out: dict[str, Any] = {}
    for split, tasks in results.get("metrics", {}).items():
        for task, metrics in tasks.items():
            for name, value in metrics.items():
                out[f"final/{split}/{task}/{name}"] = value
    train = results.get("train", {})
    for key in ("samples_per_second", "seconds", "epochs"):
        if key in train:
            out[f"final/train/{key}"] = train[key]
    if "params" in results:
        out["final/params"] = results["params"]
    return out


def log_results(results: dict[str, Any]) -> bool:
    """Put a run's final results into the summary of the active wandb run; False when there is none."""
    run = _active_run()
    if run is None:
        return False
    run.summary.update(flat_results(results))
    return True


def finish(exit_code: int = 0) -> None:
    """Close the active wandb run, if any (a no-op for the CSV logger)."""
    run = _active_run()
    if run is not None:
        run.finish(exit_code=exit_code)
