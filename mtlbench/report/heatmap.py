"""The gap heat-map: grid cells on the axes, colour = candidate - base, the numbers and intervals in the cells.

One panel per task; rows are the values of the grid's first axis, columns the values of the others (joined);
one colour bar for all panels, symmetric around 0 (blue: the candidate higher, red: lower). Each cell shows the
mean difference over seeds with the t-test's mark, the paired-bootstrap interval over test users and the paired t
interval over seeds. Rendered with matplotlib (Agg) to PNG bytes, which the HTML report embeds and
``write_report`` also saves.
"""

from __future__ import annotations

import io

import numpy as np

from mtlbench.report.gap import Gap, GapCell, axis_name, fmt_diff, has_bootstrap, metric_label


def _layout(gap: Gap) -> tuple[list[str], list[str], str, str]:
    """Row labels, column labels and the two axis titles."""
    names = [axis_name(a) for a in gap.axes]
    if not names:
        return [""], [""], "", ""
    if len(names) == 1:
        return [""], gap.values(0), "", names[0]
    cols = list(dict.fromkeys(", ".join(c.coords[1:]) for c in gap.cells))
    return gap.values(0), cols, names[0], ", ".join(names[1:])


def _where(c: GapCell, rows: list[str], cols: list[str], n_axes: int) -> tuple[int, int]:
    if n_axes == 0:
        return 0, 0
    if n_axes == 1:
        return 0, cols.index(c.coords[0])
    return rows.index(c.coords[0]), cols.index(", ".join(c.coords[1:]))


def _cell_text(c: GapCell) -> str:
    lines = [fmt_diff(c.diff.mean) + c.diff.test.mark]
    if c.boot is not None:
        lines.append(f"users [{fmt_diff(c.boot.low)}, {fmt_diff(c.boot.high)}]")
    if c.diff.low is not None and c.diff.high is not None:
        lines.append(f"seeds [{fmt_diff(c.diff.low)}, {fmt_diff(c.diff.high)}]")
    return "\n".join(lines)


def gap_heatmap(gap: Gap, metric: str = "auc") -> bytes | None:
    """PNG of the gap in ``metric`` (a results key such as ``auc``); None when no cell has it."""
    cells = [c for c in gap.cells if c.metric == metric]
    if not cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    rows, cols, row_title, col_title = _layout(gap)
    tasks = list(dict.fromkeys(c.task_label for c in cells))
    vmax = max([abs(c.diff.mean) for c in cells if np.isfinite(c.diff.mean)] + [1e-4])
    fig, axes = plt.subplots(
        1,
        len(tasks),
        figsize=(1.2 + 2.3 * len(cols) * len(tasks), 1.4 + 1.05 * len(rows)),
        squeeze=False,
    )
    colours = ScalarMappable(Normalize(-vmax, vmax), cmap="RdBu")  # symmetric around 0, shared by the panels
    for ax, task in zip(axes[0], tasks):
        grid = np.full((len(rows), len(cols)), np.nan)
        for c in (c for c in cells if c.task_label == task):
            i, j = _where(c, rows, cols, len(gap.axes))
            grid[i, j] = c.diff.mean
            shade = abs(c.diff.mean) > 0.6 * vmax
            ax.text(j, i, _cell_text(c), ha="center", va="center", fontsize=7, color="white" if shade else "black")
        ax.imshow(grid, cmap=colours.cmap, norm=colours.norm, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_xlabel(col_title, fontsize=8)
        ax.set_ylabel(row_title, fontsize=8)
        ax.set_title(f"{task} {metric_label(metric)}", fontsize=9)
    bar = fig.colorbar(colours, ax=axes[0].tolist(), shrink=0.9)
    bar.set_label(f"{gap.candidate} - {gap.base} {metric_label(metric)} (mean over seeds)", fontsize=8)
    fig.suptitle(f"{gap.candidate} - {gap.base}: {metric_label(metric)} ({gap.split})", fontsize=10)
    pct = f"{gap.confidence:.0%}"
    users = (
        f"users: {pct} paired bootstrap over test users (B = {gap.resamples}, seeds pooled); "
        if has_bootstrap(gap)
        else ""
    )
    fig.text(
        0.01,
        -0.02,
        f"Cell: mean over seeds (* p < 0.05, ** p < 0.01: paired t-test); {users}seeds: {pct} paired t interval.",
        fontsize=7,
        ha="left",
        va="top",
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def caption(gap: Gap, metric: str = "auc") -> str:
    """The figure's legend: what the colour and the three numbers of a cell are."""
    pct = f"{gap.confidence:.0%}"
    users = (
        f"'users': the {pct} paired-bootstrap interval over test users (B = {gap.resamples}, seeds pooled), "
        if has_bootstrap(gap)
        else ""
    )
    return (
        f"{gap.candidate} - {gap.base} {metric_label(metric)} per data cell ({gap.split} split). Colour: the mean "
        f"difference over seeds, symmetric scale around 0 (blue: {gap.candidate} higher). In each cell: the mean "
        f"(* p < 0.05, ** p < 0.01, paired t-test over seeds), {users}'seeds': the {pct} paired t interval over "
        "seeds."
    )
