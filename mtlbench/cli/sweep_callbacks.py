"""Hydra callbacks of a sweep on the terminal: ``run i/N`` and an ETA before each job, the mean ± std table at the end
(every sweep) and the written report.

They run in the launching process; what they print is the command's output, so they live with the command line
(the report itself is built by :mod:`mtlbench.report`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mtlbench.report.summary import board_summary, collect, mean_std_table
from mtlbench.report.tables import settings_from, to_markdown
from mtlbench.report.write import write_report

#: the logger of Hydra's basic (sequential) launcher: its "Launching N jobs" and "#i : overrides" lines, replaced
#: by :class:`SweepProgress`'s "run i/N" lines unless ``verbose``
BASIC_LAUNCHER_LOGGER = "hydra._internal.core_plugins.basic_launcher"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def sweep_jobs(config: DictConfig) -> tuple[int | None, list[str]]:
    """The number of jobs of a sweep and the keys it sweeps, as far as they are known before it runs.

    Hydra's basic sweeper runs the product of the sweep values of its ``params`` and the command line (the command
    line wins for a key); a sweeper with ``n_trials`` (Optuna) runs that many. Otherwise: (None, []).
    """
    sweeper = config.hydra.sweeper
    params = {str(k): str(v) for k, v in (OmegaConf.select(sweeper, "params") or {}).items()}
    if OmegaConf.select(sweeper, "n_trials") is not None:
        return int(sweeper.n_trials), sorted(params)
    if not str(OmegaConf.select(sweeper, "_target_") or "").endswith("BasicSweeper"):
        return None, []
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:  # Hydra reports a bad override itself
        return None, []
    counts: dict[str, int] = {}
    for o in overrides:
        counts[o.get_key_element()] = len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
    return math.prod(counts.values()), [k for k, n in counts.items() if n > 1]


class SweepProgress(Callback):
    """Before each job of a sweep that runs in this process (Hydra's basic launcher runs them one after another):
    ``run i/N: <the job's sweep values>``, the time so far and an ETA (the mean time of the jobs done so far times
    the jobs left); at the end, the sweep's wall time. Jobs run by other processes (parallel or Slurm launchers)
    are left to their launcher's output. Unless ``verbose``, these lines replace the basic launcher's own."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.total: int | None = None
        self.keys: list[str] = []
        self.started: float | None = None
        self.durations: list[float] = []
        self._job_start: float | None = None
        self._launcher_level: int | None = None

    def _here(self) -> bool:
        return self.pid == os.getpid()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.pid = os.getpid()
        self.total, self.keys = sweep_jobs(config)
        self.started = time.perf_counter()
        self.durations = []
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
        if launcher.endswith("BasicLauncher") and not OmegaConf.select(config, "verbose", default=False):
            logger = logging.getLogger(BASIC_LAUNCHER_LOGGER)
            self._launcher_level = logger.level
            logger.setLevel(logging.WARNING)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._here():
            return
        now = self._job_start = time.perf_counter()
        i = int(config.hydra.job.num) + 1
        task = [str(o) for o in config.hydra.overrides.task]
        shown = [o for o in task if o.split("=", 1)[0].lstrip("+~") in self.keys] if self.keys else task
        line = f"run {i}/{self.total}" if self.total else f"run {i}"
        if shown:
            line += ": " + " ".join(shown)
        done = len(self.durations)
        if done and self.started is not None:
            line += f" · {_duration(now - self.started)} so far"
            if self.total:
                mean = sum(self.durations) / done
                line += f", ETA {_duration(mean * max(0, self.total - done))}"
        print(line, flush=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self._here() and self._job_start is not None:
            self.durations.append(time.perf_counter() - self._job_start)
            self._job_start = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._launcher_level is not None:
            logging.getLogger(BASIC_LAUNCHER_LOGGER).setLevel(self._launcher_level)
            self._launcher_level = None
        if self._here() and self.durations and self.started is not None:
            n = len(self.durations)
            print(f"sweep: {n} run{'s' if n > 1 else ''} in {_duration(time.perf_counter() - self.started)}")


class PrintSummary(Callback):
    """Hydra callback: after a multirun, print the mean ± std table of its test metrics (one per task: the
    monitored metric; :func:`~mtlbench.report.summary.mean_std_table`)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        runs, incomplete = collect(config.hydra.sweep.dir)
        sweep = config.hydra.sweep.dir
        print(
            f"\nTest metrics, mean ± std over seeds ({len(runs)} complete runs in {sweep}; all metrics and tables: "
            f"mtlbench-report {sweep} --out <dir>):"
        )
        print(mean_std_table(runs))
        if incomplete:
            print(f"incomplete runs (no results.json, not counted): {', '.join(map(str, incomplete))}")


class WriteReport(Callback):
    """After a multirun: collect the sweep directory and write the report into ``out``.

    ``out`` defaults to ``<sweep dir>/report``; every other keyword is a
    :class:`~mtlbench.report.tables.ReportSettings` field (metrics, scenario_metrics, base, test, ...),
    so an experiment config states how its table is made. ``echo``: print the report's Markdown (``true`` /
    ``"full"``), one metric per task (``"compact"``: :func:`~mtlbench.report.summary.board_summary`) or nothing.
    """

    def __init__(self, out: str | None = None, html: bool = True, echo: bool | str = True, **settings: Any) -> None:
        if echo not in (True, False, "full", "compact"):
            raise ValueError(f"WriteReport echo must be true / 'full' (every table), 'compact' or false, got {echo!r}")
        self.out = out
        self.html = html
        self.echo = "full" if echo is True else echo
        self.settings = settings_from(**settings)  # fail early on a bad setting, before any training

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        out = Path(self.out) if self.out else sweep / "report"
        board = write_report([sweep], out, self.settings, html=self.html)
        if self.echo == "full":
            print("\n" + to_markdown(board))
        elif self.echo == "compact":
            print(f"\n{self.settings.title}: test, mean ± std over seeds (every table: the report)")
            print(board_summary(board))
        n = sum(len(g.runs) for s in board.sections for g in s.section.groups)
        kinds = "md,csv,tex,html" if self.html else "md,csv,tex"
        print(f"report of {n} complete run(s) ({len(board.incomplete)} incomplete): {out}/leaderboard.{{{kinds}}}")
