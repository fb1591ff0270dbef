"""A self-contained ``leaderboard.html``: the tables plus plots embedded as base64 PNGs.

Plots (matplotlib, Agg backend): a bar chart per task with mean ± std error bars for every metric of the
overall table; validation curves per model (mean over seeds per epoch) read from each run's CSV log
``<run>/logs/metrics.csv``; and the images the runs saved themselves (e.g. STAN's stage t-SNE), from the
first seed of every group; with a gap (candidate - base per data cell), its tables and heat-maps
(:mod:`mtlbench.report.heatmap`). No file outside the page is referenced.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from mtlbench.report import gap as gaps
from mtlbench.report import stats
from mtlbench.report.collect import Group
from mtlbench.report.heatmap import caption, gap_heatmap
from mtlbench.report.tables import (
    Cell,
    Leaderboard,
    SectionBoard,
    Table,
    fmt_p,
    fmt_params,
    fmt_relaimpr,
    fmt_speed,
    fmt_value,
    legend,
    metric_name,
)
from mtlbench.rundir import CHECKPOINT_DIR, LOG_DIR, WANDB_DIR

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
}
MAX_IMAGE_BYTES = 5 * 2**20
METRICS_LOG = Path(LOG_DIR) / "metrics.csv"

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
div.scroll { overflow-x: auto; }
td.best { font-weight: bold; } td.second { text-decoration: underline; }
sup.sig { color: #b00; } p.legend { color: #555; max-width: 70em; }
figure { display: inline-block; margin: 1em 1em 1em 0; vertical-align: top; }
figcaption { font-size: .85em; color: #555; } img.plot { max-width: 100%; border: 1px solid #eee; }
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(b64: str, alt: str, caption: str, kind: str, mime: str = "image/png") -> str:
    return (
        f'<figure class="{kind}"><img class="plot" alt="{html.escape(alt)}" '
        f'src="data:{mime};base64,{b64}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def bar_charts(sb: SectionBoard) -> list[str]:
    """One figure per task: a panel per metric, one bar per model with its std as error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not sb.tables:
        return []
    table = sb.tables[0]
    tasks = list(dict.fromkeys(c.task for c in table.columns))
    figures = []
    for task in tasks:
        cols = [(i, c) for i, c in enumerate(table.columns) if c.task == task]
        fig, axes = plt.subplots(1, len(cols), figsize=(2.2 + 1.1 * len(table.rows) * len(cols), 3.6), squeeze=False)
        for ax, (i, col) in zip(axes[0], cols):
            cells: list[Cell] = [r.cells[i] for r in table.rows]
            means = np.array([c.mean if not c.empty else np.nan for c in cells])
            errs = np.array([c.std if not c.empty else 0.0 for c in cells])
            x = np.arange(len(cells))
            colors = ["#c44e52" if c.rank == 1 else "#dd8452" if c.rank == 2 else "#4c72b0" for c in cells]
            ax.bar(x, means, yerr=errs, capsize=4, color=colors)
            finite = means[np.isfinite(means)]
            if len(finite):
                lo = float(np.min(finite - errs[np.isfinite(means)]))
                hi = float(np.max(finite + errs[np.isfinite(means)]))
                pad = max((hi - lo) * 0.3, 1e-3)
                ax.set_ylim(max(lo - pad, 0.0), hi + pad)
            ax.set_xticks(x, [r.label for r in table.rows], rotation=35, ha="right", fontsize=8)
            ax.set_title(col.header, fontsize=10)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"{sb.section.title}: {task} (mean ± std over seeds)", fontsize=10)
        fig.tight_layout()
        figures.append(_figure(_png(fig), f"bar chart {task}", f"{task}: mean ± std over seeds", "bars"))
    return figures


def read_metrics_log(path: Path) -> dict[str, dict[int, float]]:
    """Lightning CSV log -> column -> epoch -> value (the first value logged in each epoch).

    The validation of the selected checkpoint after training is logged at the step of the test metrics;
    it is not a point of the validation curve and is left out.
    """
    out: dict[str, dict[int, float]] = defaultdict(dict)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    test_steps = {r.get("step") for r in rows if any(k.startswith("test/") and v for k, v in r.items() if k)}
    for row in rows:
        epoch = row.get("epoch")
        if not epoch:
            continue
        e = int(float(epoch))
        after_fit = row.get("step") in test_steps
        for k, v in row.items():
            if k in ("epoch", "step") or v in ("", None) or (after_fit and k.startswith("valid/")):
                continue
            try:
                out[k].setdefault(e, float(v))
            except ValueError:
                continue
    return out


def validation_curves(sb: SectionBoard, metric: str) -> list[str]:
    """Validation ``metric`` per epoch, one line per model (mean over seeds), one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    logs: dict[str, list[dict[str, dict[int, float]]]] = {}
    for row in sb.rows:
        found = [read_metrics_log(r.path / METRICS_LOG) for r in row.group.runs if (r.path / METRICS_LOG).exists()]
        if found:
            logs[row.label] = found
    if not logs:
        return []
    tasks = list(dict.fromkeys(c.task for t in sb.tables[:1] for c in t.columns))
    tasks = [t for t in tasks if any(f"valid/{t}/{metric}" in lg for ls in logs.values() for lg in ls)]
    if not tasks:
        return []
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        key = f"valid/{task}/{metric}"
        for label, ls in logs.items():
            per_epoch: dict[int, list[float]] = defaultdict(list)
            for lg in ls:
                for e, v in lg.get(key, {}).items():
                    per_epoch[e].append(v)
            if not per_epoch:
                continue
            epochs = sorted(per_epoch)
            mean = np.array([np.mean(per_epoch[e]) for e in epochs])
            std = np.array([np.std(per_epoch[e]) for e in epochs])
            xs = np.array(epochs) + 1
            (line,) = ax.plot(xs, mean, marker="o", label=label)
            if any(len(per_epoch[e]) > 1 for e in epochs):
                ax.fill_between(xs, mean - std, mean + std, alpha=0.15, color=line.get_color())
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"valid {task} {metric_name(metric)}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{sb.section.title}: validation curves (mean over seeds)", fontsize=10)
    return [_figure(_png(fig), f"validation curves {metric}", f"validation {metric_name(metric)} per epoch", "curves")]


def run_images(group: Group) -> list[str]:
    """Images saved by the first run of a group (e.g. a t-SNE of STAN's stage vectors)."""
    run = group.runs[0]
    figures = []
    for p in sorted(run.path.rglob("*")):
        rel = p.relative_to(run.path)
        if p.suffix.lower() not in IMAGE_TYPES or not p.is_file():
            continue
        if any(part.startswith(".") or part in (CHECKPOINT_DIR, WANDB_DIR) for part in rel.parts):
            continue
        if p.stat().st_size > MAX_IMAGE_BYTES:
            continue
        b64 = base64.b64encode(p.read_bytes()).decode("ascii")
        caption = f"{group.label} (seed {run.seed}): {rel}"
        mime = IMAGE_TYPES[p.suffix.lower()]
        figures.append(_figure(b64, f"{group.label} {rel}", caption, "run-image", mime))
    return figures


def _td(cell: Cell, seeds: int) -> str:
    cls = "num best" if cell.rank == 1 else "num second" if cell.rank == 2 else "num"
    mark = f'<sup class="sig">{cell.mark}</sup>' if cell.mark else ""
    title = f' title="p = {fmt_p(cell.p)}"' if cell.p is not None else ""
    return f'<td class="{cls}"{title}>{html.escape(fmt_value(cell, seeds))}{mark}</td>'


def html_table(sb: SectionBoard, table: Table, with_extra: bool) -> str:
    e = html.escape
    head = ["<th>model</th>", "<th>seeds</th>"]
    for col in table.columns:
        head.append(f"<th>{e(col.header)}</th>")
        if table.show_relaimpr:
            head.append("<th>RelaImpr</th>")
    if with_extra:
        head += ["<th>train samples/s</th>", "<th>params</th>"]
    rows = []
    for row in table.rows:
        seeds = len(row.group.runs)
        tds = [f"<td>{e(row.label)}</td>", f'<td class="num">{seeds}</td>']
        for cell in row.cells:
            tds.append(_td(cell, seeds))
            if table.show_relaimpr:
                tds.append(f'<td class="num">{e(fmt_relaimpr(cell, row.label == sb.base_label))}</td>')
        if with_extra:
            tds += [
                f'<td class="num">{fmt_speed(sb.speed[row.label])}</td>',
                f'<td class="num">{fmt_params(sb.params[row.label])}</td>',
            ]
        rows.append(f'<tr data-model="{e(row.group.model)}">' + "".join(tds) + "</tr>")
    return (
        f'<div class="scroll"><table class="leaderboard" data-section="{e(sb.section.title)}" '
        f'data-table="{e(table.title)}"><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def gap_html(gap: gaps.Gap) -> list[str]:
    """The gap section: its table, a heat-map per metric and the per-stage breakdown."""
    e = html.escape
    title = f"{gap.candidate} - {gap.base}"
    pct = f"{gap.confidence:.0%}"
    out = [f"<h2>Gap: {e(title)}</h2>", f'<p class="legend">{e(gaps.legend(gap))}</p>']
    axes = [gaps.axis_name(a) for a in gap.axes]
    if gap.cells:
        head = [*axes, "task", "metric", "seeds", title, f"{pct} CI users (bootstrap)", f"{pct} CI seeds (t)", "p"]
        rows = []
        for c in gap.cells:
            boot = gaps.fmt_interval(c.boot.low, c.boot.high) if c.boot is not None else "-"
            mark = f'<sup class="sig">{c.diff.test.mark}</sup>' if c.diff.test.mark else ""
            tds = [*(f"<td>{e(v)}</td>" for v in (*c.coords, c.task_label, gaps.metric_label(c.metric)))]
            tds += [f'<td class="num">{c.diff.test.n}</td>', f'<td class="num">{gaps.fmt_diff(c.diff.mean)}{mark}</td>']
            tds += [f'<td class="num">{e(v)}</td>' for v in (boot, gaps.fmt_interval(c.diff.low, c.diff.high))]
            tds.append(f'<td class="num">{fmt_p(c.diff.test.p)}</td>')
            rows.append("<tr>" + "".join(tds) + "</tr>")
        out.append(
            '<div class="scroll"><table class="gap"><thead><tr>'
            + "".join(f"<th>{e(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )
        for metric in dict.fromkeys(c.metric for c in gap.cells):
            png = gap_heatmap(gap, metric)
            if png is not None:
                b64 = base64.b64encode(png).decode("ascii")
                out.append(_figure(b64, f"gap heat-map {metric}", caption(gap, metric), "gap-heatmap"))
    if gap.stages:
        stages = list(dict.fromkeys(c.metric for c in gap.stages))
        head = [*axes, "task", *(f"{gaps.metric_label(s)} {s.split('=', 1)[1]}" for s in stages)]
        by_row: dict[tuple, dict[str, gaps.GapCell]] = {}
        for c in gap.stages:
            by_row.setdefault((c.coords, c.task_label), {})[c.metric] = c
        rows = []
        for (coords, task), cells in by_row.items():
            tds = [f"<td>{e(v)}</td>" for v in (*coords, task)]
            for s in stages:
                cell = cells.get(s)
                text = "n/a"
                if cell is not None:
                    text = f"{gaps.fmt_diff(cell.diff.mean)} {gaps.fmt_interval(cell.diff.low, cell.diff.high)}"
                mark = (
                    f'<sup class="sig">{cell.diff.test.mark}</sup>' if cell is not None and cell.diff.test.mark else ""
                )
                tds.append(f'<td class="num">{e(text)}{mark}</td>')
            rows.append("<tr>" + "".join(tds) + "</tr>")
        out.append(
            f"<h3>Gap per stage: {e(title)}</h3><p class='legend'>Mean over seeds [{pct} paired t interval].</p>"
            '<div class="scroll"><table class="gap-stages"><thead><tr>'
            + "".join(f"<th>{e(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )
    if gap.notes:
        out.append("<ul class='gap-notes'>" + "".join(f"<li>{e(n)}</li>" for n in gap.notes) + "</ul>")
    return out


def to_html(board: Leaderboard) -> str:
    e = html.escape
    s = board.settings
    body = [f"<h1>{e(s.title)}</h1>", f'<p class="legend">{e(legend(s, "html"))}</p>']
    if not board.sections:
        body.append("<p>(no complete runs)</p>")
    curve_metric = s.metrics[0] if s.metrics else "auc"
    for sb in board.sections:
        body.append(f"<h2>{e(sb.section.title)}</h2>")
        for table in sb.tables:
            body.append(f"<h3>{e(table.title)}</h3>")
            body.append(html_table(sb, table, table is sb.tables[0]))
        comps = [c for t in sb.tables for c in t.comparisons]
        if comps:
            rows = "".join(
                f"<tr><td>{e(c.column.header)}</td><td>{e(c.best)}</td><td>{e(c.baseline)}</td>"
                f"<td>{e(stats.TESTS[c.result.test])}</td><td class='num'>{c.result.n}</td>"
                f"<td class='num'>{fmt_p(c.result.p)}</td><td>{e(c.result.mark or c.result.note)}</td></tr>"
                for c in comps
            )
            head = "".join(f"<th>{h}</th>" for h in ("column", "best", "best baseline", "test", "seeds", "p-value", ""))
            body.append(
                f"<h3>Significance</h3><table class='significance'><thead><tr>{head}</tr></thead>"
                f"<tbody>{rows}</tbody></table>"
            )
        body.append("<h3>Plots</h3>")
        body += bar_charts(sb)
        body += validation_curves(sb, curve_metric)
        images = [f for row in sb.rows for f in run_images(row.group)]
        if images:
            body.append("<h3>Images saved by the runs</h3>")
            body += images
    if board.gap is not None:
        body += gap_html(board.gap)
    if board.missing_models:
        missing = e(", ".join(board.missing_models))
        body.append(
            f"<p>Models of this experiment without complete runs here (not available yet, or not run): {missing}.</p>"
        )
    if board.incomplete:
        items = "".join(f"<li><code>{e(str(p))}</code></li>" for p in board.incomplete)
        body.append(
            f'<h2>Incomplete runs</h2><p>No results.json; listed, not counted.</p><ul class="incomplete">{items}</ul>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(s.title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
