"""A self-contained ``leaderboard.html``: the tables plus plots embedded in the page.

Plots: a bar chart per task with mean ± std error bars for every metric of the overall table, as inline SVG
(:mod:`mtlbench.report.svg`: the y-axis from 0.5 for AUC-type metrics, else 0, and a legend); validation curves per
model (mean over seeds per epoch, matplotlib PNG) read from each run's CSV log ``<run>/logs/metrics.csv``; and the
images the runs saved themselves (e.g. STAN's stage t-SNE), from the first seed of every group; with a gap
(candidate - base per data cell), its tables and heat-maps (:mod:`mtlbench.report.heatmap`). No file outside the page
is referenced.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from mtlbench.report import gap as gaps
from mtlbench.report import stats, svg
from mtlbench.report.collect import Group
from mtlbench.report.heatmap import caption, gap_heatmap
from mtlbench.report.tables import (
    Cell,
    Comparison,
    Leaderboard,
    SectionBoard,
    Table,
    against_header,
    against_legend,
    against_rows,
    against_title,
    against_untested,
    fmt_p,
    fmt_params,
    fmt_relaimpr,
    fmt_speed,
    fmt_value,
    legend,
    metric_name,
    significance_header,
    split_comparisons,
    tested_label,
    untested_line,
    versus_parts,
)
from mtlbench.report.tables import fmt_diff as fmt_signed
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
table.sortable th { cursor: pointer; } th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; } svg.bar-chart { margin-right: .5em; }
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
    """One figure per task of the overall table: an inline SVG panel per metric, one bar per model (mean) with its
    std as error bar, the y-axis from 0.5 (AUC-type) or 0, and a legend (:mod:`mtlbench.report.svg`)."""
    if not sb.tables:
        return []
    table = sb.tables[0]
    tasks = list(dict.fromkeys(c.task for c in table.columns))
    figures = []
    for task in tasks:
        panels = []
        for i, col in enumerate(table.columns):
            if col.task != task:
                continue
            bars = [
                svg.Bar(
                    r.label,
                    None if r.cells[i].empty else r.cells[i].mean,
                    r.cells[i].std,
                    r.cells[i].rank,
                    r.cells[i].n,
                )
                for r in table.rows
            ]
            desc = f"bar chart {col.header} ({sb.section.title})"
            panels.append(svg.bar_chart(col.header, col.metric, bars, stats.higher_is_better(col.metric), desc))
        name = "mean over tasks" if any(c.mean_of for c in table.columns if c.task == task) else task
        figures.append(
            f'<figure class="bars" data-task="{html.escape(task)}">{"".join(panels)}'
            f"<figcaption>{html.escape(sb.section.title)}: {html.escape(name)}, mean ± std over seeds per model"
            "</figcaption></figure>"
        )
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


def _sort_key(v: float | int | None) -> str:
    """The ``data-sort`` attribute of a numeric cell (stable text; none for a missing value)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f' data-sort="{v:.6f}"' if isinstance(v, float) else f' data-sort="{v}"'


def _td(cell: Cell, seeds: int) -> str:
    cls = "num best" if cell.rank == 1 else "num second" if cell.rank == 2 else "num"
    mark = f'<sup class="sig">{cell.mark}</sup>' if cell.mark else ""
    title = f' title="p = {fmt_p(cell.p)}"' if cell.p is not None else ""
    sort = "" if cell.empty else _sort_key(cell.mean)
    return f'<td class="{cls}"{title}{sort}>{html.escape(fmt_value(cell, seeds))}{mark}</td>'


def html_table(
    sb: SectionBoard, table: Table, with_extra: bool, css_class: str = "leaderboard", table_id: str | None = None
) -> str:
    """One table of a section; numeric cells carry ``data-sort`` (their value) for :data:`SORT_JS`."""
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
        tds = [f"<td>{e(row.label)}</td>", f'<td class="num"{_sort_key(seeds)}>{seeds}</td>']
        for cell in row.cells:
            tds.append(_td(cell, seeds))
            if table.show_relaimpr:
                is_base = row.label == sb.base_label
                sort = "" if is_base else _sort_key(cell.relaimpr)
                tds.append(f'<td class="num"{sort}>{e(fmt_relaimpr(cell, is_base))}</td>')
        if with_extra:
            tds += [
                f'<td class="num"{_sort_key(sb.speed[row.label])}>{fmt_speed(sb.speed[row.label])}</td>',
                f'<td class="num"{_sort_key(sb.params[row.label])}>{fmt_params(sb.params[row.label])}</td>',
            ]
        rows.append(f'<tr data-model="{e(row.group.model)}">' + "".join(tds) + "</tr>")
    ident = f' id="{e(table_id)}"' if table_id else ""
    return (
        f'<div class="scroll"><table class="{css_class}"{ident} data-section="{e(sb.section.title)}" '
        f'data-table="{e(table.title)}"><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


#: plain JavaScript that sorts every ``table.sortable`` by a click on a column header (numbers by ``data-sort``,
#: else by text; missing values last; a second click reverses); ``#sort=<table id>:<column>:<asc|desc>`` in the
#: address sorts on load. No library, no network. Sets ``data-sortable`` on <body> to the number of tables.
SORT_JS = """
(function () {
  "use strict";
  function key(cell) {
    if (!cell) { return null; }
    var v = cell.getAttribute("data-sort");
    if (v !== null) { var x = parseFloat(v); return isNaN(x) ? null : x; }
    var t = cell.textContent.trim();
    return (t === "" || t === "-" || t === "n/a") ? null : t.toLowerCase();
  }
  function compare(a, b, ascending) {
    if (a.k === null || b.k === null) {
      return a.k === b.k ? a.i - b.i : (a.k === null ? 1 : -1);
    }
    var na = typeof a.k === "number", nb = typeof b.k === "number";
    var c = na && nb ? a.k - b.k : na ? -1 : nb ? 1 : (a.k < b.k ? -1 : a.k > b.k ? 1 : 0);
    if (!ascending) { c = -c; }
    return c !== 0 ? c : a.i - b.i;
  }
  function sortTable(table, column, ascending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
      return {row: row, i: i, k: key(row.cells[column])};
    });
    rows.sort(function (a, b) { return compare(a, b, ascending); });
    rows.forEach(function (r) { body.appendChild(r.row); });
    var heads = table.tHead.rows[0].cells;
    for (var j = 0; j < heads.length; j++) { heads[j].removeAttribute("aria-sort"); }
    heads[column].setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, column) {
      th.setAttribute("title", "sort");
      th.addEventListener("click", function () {
        var state = th.getAttribute("aria-sort");
        var first = table.tBodies[0].rows.length ? key(table.tBodies[0].rows[0].cells[column]) : null;
        var ascending = state ? state === "descending" : typeof first !== "number";
        sortTable(table, column, ascending);
      });
    });
  });
  var m = /^#sort=([^:]+):(\\d+):(asc|desc)$/.exec(window.location.hash);
  if (m) {
    var t = document.getElementById(decodeURIComponent(m[1]));
    if (t && t.tHead && Number(m[2]) < t.tHead.rows[0].cells.length) { sortTable(t, Number(m[2]), m[3] === "asc"); }
  }
  document.body.setAttribute("data-sortable", String(tables.length));
})();
"""


def gap_html(gap: gaps.Gap, heatmaps: bool = True, table_class: str = "gap") -> list[str]:
    """The gap section: its table, a heat-map per metric (``heatmaps``) and the per-stage breakdown."""
    e = html.escape
    title = f"{gap.candidate} - {gap.base}"
    pct = f"{gap.confidence:.0%}"
    out = [f"<h2>Gap: {e(title)}</h2>", f'<p class="legend">{e(gaps.legend(gap))}</p>']
    axes = [gaps.axis_name(a) for a in gap.axes]
    if gap.cells:
        with_boot = gaps.has_bootstrap(gap)
        rows = []
        for c in gap.cells:
            boot = gaps.fmt_interval(c.boot.low, c.boot.high) if c.boot is not None else "-"
            mark = f'<sup class="sig">{c.diff.test.mark}</sup>' if c.diff.test.mark else ""
            tds = [*(f"<td>{e(v)}</td>" for v in (*c.coords, c.task_label, gaps.metric_label(c.metric)))]
            tds += [
                f'<td class="num">{c.diff.test.n}</td>',
                f'<td class="num" data-sort="{c.diff.mean:.6f}">{gaps.fmt_diff(c.diff.mean)}{mark}</td>',
            ]
            intervals = (
                (boot, gaps.fmt_interval(c.diff.low, c.diff.high))
                if with_boot
                else (gaps.fmt_interval(c.diff.low, c.diff.high),)
            )
            tds += [f'<td class="num">{e(v)}</td>' for v in intervals]
            tds.append(f'<td class="num">{fmt_p(c.diff.test.p)}</td>')
            rows.append("<tr>" + "".join(tds) + "</tr>")
        out.append(
            f'<div class="scroll"><table class="{table_class}"><thead><tr>'
            + "".join(f"<th>{e(h)}</th>" for h in gaps.header(gap))
            + f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )
        for metric in dict.fromkeys(c.metric for c in gap.cells) if heatmaps else ():
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


def significance_html(comps: list[Comparison], board: Leaderboard, table_class: str = "significance") -> list[str]:
    """The significance block: a row per tested column, one line for the columns without a test."""
    e = html.escape
    tested, untested = split_comparisons(comps)
    out = ["<h3>Significance</h3>"] if comps else []
    if tested:
        rows = "".join(
            f"<tr><td>{e(c.column.header)}</td><td>{e(tested_label(c, board.settings))}</td><td>{e(c.baseline)}</td>"
            f'<td class="num" data-sort="{c.diff:.6f}">{fmt_signed(c.diff)}</td>'
            f"<td>{e(stats.TESTS[c.result.test])}</td><td class='num'>{c.result.n}</td>"
            f"<td class='num'>{fmt_p(c.result.p)}</td><td>{e(c.verdict)}</td></tr>"
            for c in tested
        )
        head = "".join(f"<th>{e(h)}</th>" for h in significance_header(board.settings))
        out.append(f"<table class='{table_class}'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    if untested:
        out.append(f'<p class="untested">{e(untested_line(untested))}</p>')
    return out


def against_html(sb: SectionBoard, board: Leaderboard, table_class: str = "against") -> list[str]:
    """A section's significance tables against the reference (``against``): per table, its rows by family and rank
    with each cell's difference to the reference, mark and p-value; one line for the rows without a test."""
    e = html.escape
    out: list[str] = []
    for table in (t for t in sb.tables if t.against):
        out.append(f"<h3>{e(against_title(board, table, not out))}</h3>")
        if len(out) == 1:
            out.append(f'<p class="legend">{e(against_legend(board, sb, "html"))}</p>')
        rows = []
        for row in against_rows(table):  # a loop over table rows
            peers = row.peers
            assert peers is not None
            seeds = len(row.group.runs)
            tds = [
                f'<td class="num"{_sort_key(peers.rank)}>{"-" if peers.rank is None else peers.rank}</td>',
                f"<td>{e(row.label)}</td>",
                f'<td class="num"{_sort_key(seeds)}>{seeds}</td>',
                f'<td class="num"{"" if peers.score.empty else _sort_key(peers.score.mean)}>'
                f"{e(fmt_value(peers.score, seeds))}</td>",
            ]
            for c in row.cells:
                head, tail = versus_parts(c, row)
                mark = f'<sup class="sig">{c.mark}</sup>' if c.mark else ""
                title = f' title="p = {fmt_p(c.p)}"' if c.p is not None else ""
                tds.append(f'<td class="num"{title}{_sort_key(c.diff)}>{e(head)}{mark}{e(tail)}</td>')
            rows.append(f'<tr data-model="{e(row.group.model)}">' + "".join(tds) + "</tr>")
        head = "".join(f"<th>{e(h)}</th>" for h in against_header(board, sb, table))
        out.append(
            f'<div class="scroll"><table class="{table_class}" data-section="{e(sb.section.title)}" '
            f'data-table="{e(table.title)}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        )
        line = against_untested(table, board)
        if line:
            out.append(f'<p class="untested">{e(line)}</p>')
    return out


def to_html(board: Leaderboard) -> str:
    e = html.escape
    s = board.settings
    body = [f"<h1>{e(s.title)}</h1>", f'<p class="legend">{e(legend(board, "html"))}</p>']
    if not board.sections:
        body.append("<p>(no complete runs)</p>")
    curve_metric = s.metrics[0] if s.metrics else "auc"
    for sb in board.sections:
        body.append(f"<h2>{e(sb.section.title)}</h2>")
        for table in sb.tables:
            body.append(f"<h3>{e(table.title)}</h3>")
            body.append(html_table(sb, table, table is sb.tables[0], "leaderboard sortable"))
        body += significance_html([c for t in sb.tables for c in t.comparisons], board, "significance sortable")
        body += against_html(sb, board, "against sortable")
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
        f"<title>{e(s.title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + f"\n<script>{SORT_JS}</script>\n</body></html>\n"
    )
