"""The ``mtlbench`` command: a Hydra app, e.g. ``mtlbench model=ple seed=3`` or ``mtlbench -m model=mmoe,ple``
(a sweep).

Sweeps are resumable: a job of a multirun whose run directory already holds a ``results.json`` for the
identical resolved config (and package version) is skipped and its results reused, so running an
interrupted sweep again with the same command finishes only what is missing. Runs left incomplete by
the interruption (config.yaml, no results.json) are redone from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from mtlbench.cli import errors
from mtlbench.config import register_configs
from mtlbench.errors import ConfigError
from mtlbench.registry import load_plugins

#: config keys that change only what is printed or how a run gets to its end, never its results: a run
#: that differs from a complete one only in these is still skipped
SKIP_IGNORED = ("print_summary", "resume", "skip_complete", "trainer.enable_progress_bar",
                "trainer.enable_model_summary")
#: what a redone run must not inherit from an interrupted attempt in the same directory
STALE_OUTPUTS = ("checkpoints", "logs")


# -- experiments: sweep over the models that exist ----------------------------------------------------------
_reported_missing: set[tuple[str, ...]] = set()


def _names(args: tuple[Any, ...]) -> list[str]:
    out: list[str] = []
    for a in args:
        if isinstance(a, ListConfig | list | tuple):
            out += _names(tuple(a))
        else:
            out += [s.strip() for s in str(a).split(",") if s.strip()]
    return out


def model_available(name: str) -> bool:
    """A model can be swept when it is registered and ships ``configs/model/<name>.yaml``.

    ``<protocol>/<name>`` is a protocol's variant of a model (e.g. ``sfpnet_table4/mmoe``: MMoE per scenario),
    a config that inherits the model's own and changes what the protocol states.
    """
    from mtlbench.registry import MODELS

    config = resources.files("mtlbench.configs").joinpath("model", *f"{name}.yaml".split("/"))
    return name.rsplit("/", 1)[-1] in MODELS and config.is_file()


def available_models(*wanted: Any) -> str:
    """OmegaConf resolver ``${available_models:[a, b, c]}``: the sweep value ``a,c`` of the models that exist.

    Experiments list the models of a paper's table; models that have not landed yet are left out of the
    sweep (and named once on stderr) instead of failing it.
    """
    names = _names(wanted)
    present = [n for n in names if model_available(n)]
    missing = tuple(n for n in names if n not in present)
    if missing and missing not in _reported_missing:
        _reported_missing.add(missing)
        print(f"mtlbench: models not available (yet), left out of the sweep: {', '.join(missing)}",
              file=sys.stderr)
    if not present:
        raise ConfigError(f"none of the models {names} is available; registered models with a config: "
                          "see `mtlbench --help`")
    return ",".join(present)


OmegaConf.register_new_resolver("available_models", available_models, replace=True)


# -- resumable sweeps -----------------------------------------------------------------------------------
def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    from mtlbench.report.collect import flatten
    from mtlbench.training.results import _jsonable

    flat = flatten(json.loads(json.dumps(_jsonable(config))))  # as stored in results.json
    return {k: v for k, v in flat.items() if k not in SKIP_IGNORED}


def completed_results(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The results.json in ``run_dir`` if it was produced by this exact resolved config, else None."""
    import mtlbench
    from mtlbench.training.results import RESULTS_FILE

    path = run_dir / RESULTS_FILE
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if stored.get("version") != mtlbench.__version__:
        return None
    current = OmegaConf.to_container(cfg, resolve=True)
    return stored if _comparable(stored.get("config") or {}) == _comparable(current) else None


def clear_stale(run_dir: Path) -> None:
    """Remove checkpoints and logs an interrupted attempt left behind, so the redone run starts clean."""
    for name in STALE_OUTPUTS:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)


def skip_complete_enabled(cfg: DictConfig) -> bool:
    """Skipping complete runs is on unless ``skip_complete=false`` or ``MTLBENCH_SKIP_COMPLETE=0``."""
    if os.environ.get("MTLBENCH_SKIP_COMPLETE", "1").lower() in ("0", "false", "no"):
        return False
    return bool(cfg.get("skip_complete", True)) if "skip_complete" in cfg else True


# -- the task function ----------------------------------------------------------------------------------
@hydra.main(config_path="pkg://mtlbench.configs", config_name="train", version_base="1.3")
def _app(cfg: DictConfig) -> float | None:
    from mtlbench.training import tracking
    from mtlbench.training.run import train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode.name == "MULTIRUN"
    results = completed_results(cfg, run_dir) if multirun and skip_complete_enabled(cfg) else None
    if results is not None:
        print(f"mtlbench: {run_dir} already has results for this config: skipped (reused)", file=sys.stderr)
    else:
        if multirun and not cfg.get("resume", False):  # resume=true continues from checkpoints/last.ckpt
            clear_stale(run_dir)
        ok = False
        try:
            results = train(cfg, run_dir)
            if results:
                tracking.log_results(results)
            ok = True
        finally:
            tracking.finish(exit_code=0 if ok else 1)
    if results:
        if cfg.print_summary and not multirun:
            from mtlbench.report.summary import format_run

            print(format_run(results))
        return results["metrics"]["valid"] and _valid_objective(results, cfg.monitor)
    return None


def _valid_objective(results: dict, metric: str) -> float:
    """Mean validation metric over tasks: the value sweepers optimise (never a test metric)."""
    values = [v.get(metric) for v in results["metrics"]["valid"].values()]
    values = [v for v in values if v is not None and v == v]
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    register_configs()
    load_plugins()
    errors.install()
    _app()


if __name__ == "__main__":
    main()
