"""The ``mtlbench`` command: a Hydra app, e.g. ``mtlbench model=ple seed=3`` or ``mtlbench -m model=mmoe,ple``
(a sweep).

Sweeps are resumable: a job of a multirun whose run directory already holds a ``results.json`` for the
identical resolved config (and package version) is skipped and its results reused, so running an
interrupted sweep again with the same command finishes only what is missing. Runs left incomplete by
the interruption (config.yaml, no results.json) are redone from scratch, except runs a signal stopped
(preemption: ``checkpoints/preempted.json``), which continue from their checkpoint.

One process runs a job directory at a time: the job holds a lock on ``<run dir>/.lock`` while it runs, so a sweep
launched twice into the same directory waits for the job the other launch is running and then reuses its
results instead of training it a second time.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mtlbench.cli import checks, errors
from mtlbench.cli import help as app_help
from mtlbench.cli.resume import resume_argv
from mtlbench.config import register_configs
from mtlbench.log import rank
from mtlbench.registry import load_plugins
from mtlbench.rundir import CHECKPOINT_DIR, LOCK_FILE, NO_SPACE, PREEMPTED_FILE, exclusive, write_error

#: config keys that change only what is printed or how a run gets to its end, never its results: a run
#: that differs from a complete one only in these is still skipped
SKIP_IGNORED = (
    "print_summary",
    "resume",
    "skip_complete",
    "verbose",
    "callbacks.checkpoint_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)
#: what a redone run must not inherit from an interrupted attempt in the same directory
STALE_OUTPUTS = ("checkpoints", "logs")


register_configs()  # at import: a launcher's worker process unpickles _app without running main()


# -- resumable sweeps -----------------------------------------------------------------------------------
def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    from mtlbench.report.collect import flatten
    from mtlbench.rundir import jsonable

    flat = flatten(json.loads(json.dumps(jsonable(config))))  # as stored in results.json
    return {k: v for k, v in flat.items() if k not in SKIP_IGNORED}


def completed_results(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The results.json in ``run_dir`` if it was produced by this exact resolved config, else None."""
    from mtlbench.rundir import RESULTS_FILE
    from mtlbench.version import __version__

    path = run_dir / RESULTS_FILE
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if stored.get("version") != __version__:
        return None
    current = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))  # a DictConfig gives a dict
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
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if rank() != 0:  # a DDP process of a run its rank 0 holds the lock for
        return _job(cfg, run_dir, multirun)

    def waiting() -> None:
        print(f"mtlbench: {run_dir} is being run by another process: waiting for it", file=sys.stderr)

    with exclusive(run_dir / LOCK_FILE, on_wait=waiting, remove=True):
        return _job(cfg, run_dir, multirun)


def _job(cfg: DictConfig, run_dir: Path, multirun: bool) -> float | None:
    from mtlbench.training import tracking
    from mtlbench.training.preemption import Preempted
    from mtlbench.training.run import train

    results = completed_results(cfg, run_dir) if multirun and skip_complete_enabled(cfg) else None
    if results is not None:
        print(f"mtlbench: {run_dir} already has results for this config: skipped (reused)", file=sys.stderr)
    else:
        preempted = (run_dir / CHECKPOINT_DIR / PREEMPTED_FILE).exists()  # a requeued job continues
        if multirun and not cfg.get("resume", False) and not preempted:  # resume=true: from checkpoints/last.ckpt
            clear_stale(run_dir)
        ok = False
        no_space: OSError | None = None
        start = time.perf_counter()
        try:
            results = train(cfg, run_dir)
            if results:
                tracking.log_results(results)
            ok = True
        except Preempted as stop:
            if rank() == 0:
                print(f"mtlbench: preempted: {stop}", file=sys.stderr)
            raise
        except OSError as e:  # a write that found no space outside mtlbench's writers (e.g. a logger's)
            if e.errno not in NO_SPACE or isinstance(e, errors.USER_ERRORS):
                raise
            no_space = write_error(e.filename or f"a file under {run_dir}", e)
        finally:
            tracking.finish(exit_code=0 if ok else 1)
        if no_space is not None:
            raise no_space  # one line naming the file (outside the handler: no chained messages)
        if results:
            _print_run(results, run_dir, time.perf_counter() - start, table=bool(cfg.print_summary) and not multirun)
    if results:
        return results["metrics"]["valid"] and _valid_objective(results, cfg.monitor)
    return None


def _print_run(results: dict[str, Any], run_dir: Path, seconds: float, table: bool) -> None:
    """A finished run on stdout: its metrics table (a single run with ``print_summary``), then one line with its
    headline test metric per task, wall time and run directory."""
    from mtlbench.report.summary import format_run, run_line

    if table:
        print(format_run(results))
    try:
        shown = run_dir.resolve().relative_to(Path.cwd().resolve())  # as the user would type it
    except ValueError:
        shown = run_dir
    print(run_line(results, shown, seconds), flush=True)


def _valid_objective(results: dict, metric: str) -> float:
    """Mean validation metric over tasks: the value sweepers optimise (never a test metric)."""
    values = [v.get(metric) for v in results["metrics"]["valid"].values()]
    values = [v for v in values if v is not None and v == v]
    return sum(values) / len(values) if values else float("nan")


#: flags that only print Hydra's or our help
HELP_FLAGS = frozenset({"--help", "-h", "--hydra-help"})


def main() -> None:
    """The ``mtlbench`` command: check the command line (one line and exit 2 on a mistake), then run Hydra."""
    errors.install()
    app_help.install()
    sys.argv = resume_argv(sys.argv)  # resume=true / resume=<dir>: the run dir, before Hydra makes a new one
    argv = sys.argv[1:]
    command_line = errors.report(lambda: checks.safely(checks.check_command_line, argv, load_plugins))
    if HELP_FLAGS.isdisjoint(argv):  # the help lists config folders: it needs no components (no torch import)
        load_plugins()
    if command_line is not None:
        errors.report(lambda: checks.safely(checks.check_added_settings, command_line))
    _app()


if __name__ == "__main__":
    main()
