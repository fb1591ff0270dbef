"""Weights & Biases logger that stays offline unless the user has configured wandb."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def wandb_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_logger(run_dir: Path, config: dict[str, Any], project: str = "mtlbench", entity: str | None = None,
                 group: str | None = None, mode: str | None = None) -> Any:
    from pytorch_lightning.loggers import WandbLogger

    mode = mode or os.environ.get("WANDB_MODE") or ("online" if wandb_configured() else "offline")
    if group is None:
        group = f"{config['dataset']['name']}-{run_dir.parent.name}"
    logger = WandbLogger(project=project, entity=entity, group=group, save_dir=str(run_dir), mode=mode,
                         name=run_dir.name)
    logger.log_hyperparams(config)
    return logger
