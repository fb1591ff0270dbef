"""Hydra callback that ends a sweep by writing its report (leaderboard.md/.csv/.tex/.html)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class WriteReport(Callback):
    """After a multirun: collect the sweep directory and write the report into ``out``.

    ``out`` defaults to ``<sweep dir>/report``; every other keyword is a
    :class:`~mtlbench.report.tables.ReportSettings` field (metrics, scenario_metrics, base, test, ...),
    so an experiment config states how its table is made. The Markdown table is printed too.
    """

    def __init__(self, out: str | None = None, html: bool = True, echo: bool = True, **settings: Any) -> None:
        from mtlbench.report.tables import settings_from

        self.out = out
        self.html = html
        self.echo = echo
        self.settings = settings_from(**settings)  # fail early on a bad setting, before any training

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mtlbench.report.tables import to_markdown, write_report

        sweep = Path(str(config.hydra.sweep.dir))
        out = Path(self.out) if self.out else sweep / "report"
        board = write_report([sweep], out, self.settings, html=self.html)
        if self.echo:
            print("\n" + to_markdown(board))
        n = sum(len(g.runs) for s in board.sections for g in s.section.groups)
        kinds = "md,csv,tex,html" if self.html else "md,csv,tex"
        print(f"report of {n} complete run(s) ({len(board.incomplete)} incomplete): {out}/leaderboard.{{{kinds}}}")
