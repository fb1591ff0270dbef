"""Hydra callbacks that end a sweep on the terminal: the mean ± std table (every sweep) and the written report.

They run in the launching process, after every job; what they print is the command's output, so they live with
the command line (the report itself is built by :mod:`mtlbench.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mtlbench.report.summary import collect, mean_std_table
from mtlbench.report.tables import settings_from, to_markdown
from mtlbench.report.write import write_report


class PrintSummary(Callback):
    """Hydra callback: after a multirun, print the mean ± std table of its test metrics."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        runs, incomplete = collect(config.hydra.sweep.dir)
        sweep = config.hydra.sweep.dir
        print(f"\nTest metrics, mean ± std over seeds ({len(runs)} complete runs in {sweep}):")
        print(mean_std_table(runs))
        if incomplete:
            print(f"incomplete runs (no results.json, not counted): {', '.join(map(str, incomplete))}")


class WriteReport(Callback):
    """After a multirun: collect the sweep directory and write the report into ``out``.

    ``out`` defaults to ``<sweep dir>/report``; every other keyword is a
    :class:`~mtlbench.report.tables.ReportSettings` field (metrics, scenario_metrics, base, test, ...),
    so an experiment config states how its table is made. The Markdown table is printed too.
    """

    def __init__(self, out: str | None = None, html: bool = True, echo: bool = True, **settings: Any) -> None:
        self.out = out
        self.html = html
        self.echo = echo
        self.settings = settings_from(**settings)  # fail early on a bad setting, before any training

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        out = Path(self.out) if self.out else sweep / "report"
        board = write_report([sweep], out, self.settings, html=self.html)
        if self.echo:
            print("\n" + to_markdown(board))
        n = sum(len(g.runs) for s in board.sections for g in s.section.groups)
        kinds = "md,csv,tex,html" if self.html else "md,csv,tex"
        print(f"report of {n} complete run(s) ({len(board.incomplete)} incomplete): {out}/leaderboard.{{{kinds}}}")
