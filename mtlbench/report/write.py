"""Write a leaderboard's files: Markdown, CSV, LaTeX (mtlbench.report.tables) and HTML (mtlbench.report.html)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mtlbench.report.html import to_html
from mtlbench.report.tables import Leaderboard, ReportSettings, build, to_csv, to_latex, to_markdown
from mtlbench.rundir import write_text

FORMATS = {"md": to_markdown, "csv": to_csv, "tex": to_latex, "html": to_html}


def write_report(
    paths: Sequence[str | Path], out: str | Path, settings: ReportSettings | None = None, html: bool = True
) -> Leaderboard:
    """Write leaderboard.{md,csv,tex,html} for the runs under ``paths`` into ``out``."""
    board = build(paths, settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for kind, render in FORMATS.items():
        if html or kind != "html":
            write_text(out / f"leaderboard.{kind}", render(board))  # atomic: a file is complete or absent
    return board
