"""Write a leaderboard's files: Markdown, CSV, LaTeX (mtlbench.report.tables) and HTML (mtlbench.report.html); with a
gap, gap.csv and a heat-map per gap metric (gap_<metric>.png)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mtlbench.report import gap
from mtlbench.report.heatmap import gap_heatmap
from mtlbench.report.html import to_html
from mtlbench.report.tables import Leaderboard, ReportSettings, build, to_csv, to_latex, to_markdown
from mtlbench.rundir import write_text

FORMATS = {"md": to_markdown, "csv": to_csv, "tex": to_latex, "html": to_html}


def write_report(
    paths: Sequence[str | Path],
    out: str | Path,
    settings: ReportSettings | None = None,
    html: bool = True,
    echo: bool = False,
) -> Leaderboard:
    """Write leaderboard.{md,csv,tex,html} for the runs under ``paths`` into ``out`` (and the gap's files).

    The paths written are in the returned board's ``files``; ``echo`` also prints the Markdown to stdout (off by
    default: the files are the report).
    """
    board = build(paths, settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for kind, render in FORMATS.items():
        if html or kind != "html":
            write_text(out / f"leaderboard.{kind}", render(board))  # atomic: a file is complete or absent
            board.files.append(out / f"leaderboard.{kind}")
    if board.gap is not None:
        write_text(out / "gap.csv", gap.to_csv(board.gap))
        board.files.append(out / "gap.csv")
        for metric in dict.fromkeys(c.metric for c in board.gap.cells):
            png = gap_heatmap(board.gap, metric) if html else None
            if png is not None:
                write_bytes(out / f"gap_{metric}.png", png)
                board.files.append(out / f"gap_{metric}.png")
    if echo:
        print(to_markdown(board))
    return board


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically, like :func:`mtlbench.rundir.write_text`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
