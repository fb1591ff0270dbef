"""The ``mtlbench`` command: a Hydra app, e.g. ``mtlbench model=ple seed=3`` or ``mtlbench -m model=mmoe,ple``."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mtlbench.cli import errors
from mtlbench.config import register_configs
from mtlbench.registry import load_plugins


@hydra.main(config_path="pkg://mtlbench.configs", config_name="train", version_base="1.3")
def _app(cfg: DictConfig) -> float | None:
    from mtlbench.training.run import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    results = train(cfg, run_dir)
    if results:
        if cfg.print_summary and HydraConfig.get().mode.name == "RUN":
            from mtlbench.report.summary import format_run

            print(format_run(results))
        return results["metrics"]["valid"] and _valid_objective(results, cfg.monitor)
    return None


def _valid_objective(results: dict, metric: str) -> float:
    """Mean validation metric over tasks: the value sweepers optimise (never a test metric)."""
    valid = results["metrics"]["valid"]
    return sum(v[metric] for v in valid.values()) / len(valid)


def main() -> None:
    register_configs()
    load_plugins()
    errors.install()
    _app()


if __name__ == "__main__":
    main()
