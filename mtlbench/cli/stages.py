"""Stage recovery on finished runs: rebuild each run from its config and best checkpoint, print the analysis.

``python -m mtlbench.cli.stages RUN_DIR ... [--max-users N] [--tsne-users N]``: any model with towers (e.g. vanilla
``ple`` for the STAN paper's STAN-vs-PLE comparison); see :mod:`mtlbench.analysis.stages`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mtlbench.analysis.stages import stage_analysis
from mtlbench.errors import ConfigError
from mtlbench.rundir import CONFIG_FILE, RESULTS_FILE
from mtlbench.training.run import build_components


def analyse_run(run_dir: str | Path, **settings: Any) -> dict[str, Any]:
    """Rebuild a finished run from its ``config.yaml`` and best checkpoint and run :func:`stage_analysis`."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    cfg = OmegaConf.load(run_dir / CONFIG_FILE)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{run_dir / CONFIG_FILE}: not a run config (expected a mapping, got a list)")
    dm, module = build_components(cfg)
    ckpt = results["train"].get("best_checkpoint")
    if ckpt:
        state = torch.load(run_dir / ckpt, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    return stage_analysis(module, dm, run_dir, **settings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mtlbench.cli.stages", description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--max-users", type=int, default=5000)
    parser.add_argument("--tsne-users", type=int, default=0, help="0 = no picture")
    args = parser.parse_args(argv)
    for d in args.run_dirs:
        res = analyse_run(d, max_users=args.max_users, tsne_users=args.tsne_users)
        print(json.dumps({"run": str(d), **res}, indent=1))


if __name__ == "__main__":
    main()
