"""Bar charts as inline SVG, written by hand: deterministic text (no matplotlib version, font or date in it), so
a page that embeds them can be compared byte for byte.

The y-axis does not zoom on the bars: AUC-type metrics start at 0.5, the random guesser's value, so a bar's height is
AUC - 0.5 and two bars' ratio is 1 + RelaImpr (STAN Eq. 15); every other metric starts at 0 (or below, for negative
values). A 0.001 difference therefore looks like one. Each chart carries its legend: the colours (best, second,
other) and what the error bars are.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from mtlbench.report import stats

#: bar colours by rank in the column (1 = best in the metric's direction)
BEST, SECOND, OTHER = "#c44e52", "#dd8452", "#4c72b0"
BAR, GAP, PLOT_H, LEFT, TOP, RIGHT = 18, 6, 180, 56, 34, 12
CHAR_W = 5.6  # width of a character of the 10px labels, for the layout
LEGEND = ("best", "second", "other models")
ERROR_BAR = "± std over seeds"


@dataclass
class Bar:
    """One bar: a model's mean and std over seeds, its rank in the column (1 = best) and its seed count."""

    label: str
    mean: float | None
    std: float
    rank: int | None
    n: int


def _f(x: float) -> str:
    """Coordinates with one decimal: stable text."""
    return f"{x:.1f}"


def _decimals(step: float) -> int:
    for d in range(8):
        if abs(round(step, d) - step) < step * 1e-9:
            return d
    return 8


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about ``ticks`` intervals over ``span``."""
    raw = max(span, 1e-12) / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * power >= raw * (1 - 1e-9):
            return m * power
    return 10.0 * power


def axis(metric: str, bars: Sequence[Bar]) -> tuple[float, float, float, str]:
    """(bottom, top, tick step, note): the bottom is 0.5 for AUC-type metrics (the random guess), else 0 (or a round
    value below the lowest bar); the top is a round value above the highest bar plus its std."""
    values = [(b.mean, b.std) for b in bars if b.mean is not None and math.isfinite(b.mean)]
    chance = stats.is_auc_like(metric)
    floor = 0.5 if chance else 0.0
    name = stats.base_metric(metric).upper()
    note = f"the y-axis starts at 0.5 (random guess): bar height = {name} - 0.5" if chance else "the y-axis starts at 0"
    if not values:
        return floor, floor + 1.0, 0.2 if not chance else 0.1, note
    lo = min(m - s for m, s in values)
    hi = max(m + s for m, s in values)
    if lo < floor:
        step = nice_step(max(hi, floor) - lo)
        floor = math.floor(lo / step) * step
        note = f"the y-axis starts at {floor:.{_decimals(step)}f}"
    step = nice_step(max(hi - floor, 1e-6))
    top = floor + math.ceil((hi - floor) / step - 1e-9) * step
    if top <= floor:
        top = floor + step
    return floor, top, step, note


def bar_chart(
    title: str, metric: str, bars: Sequence[Bar], higher_is_better: bool = True, description: str | None = None
) -> str:
    """One panel as an ``<svg>`` element: a bar per model (mean) with its std as error bar, colour by rank, a y-axis
    from 0.5 (AUC-type) or 0, and a legend. ``title`` is drawn; ``description`` (default: the title) is the SVG's
    accessible name."""
    e = html.escape
    name = description or title
    bottom, top, step, note = axis(metric, bars)
    d = _decimals(step)
    longest = max([len(b.label) for b in bars] + [4])
    label_w = longest * CHAR_W * 0.72  # labels at -45 degrees: as wide as high
    label_h = label_w + 14
    left = max(LEFT, label_w + 4 - GAP - BAR / 2)  # room for the first bar's label
    plot_right = left + len(bars) * (BAR + GAP) + GAP
    legend_w = sum(14 + len(n) * CHAR_W + 12 for n in LEGEND) + 12 + len(ERROR_BAR) * CHAR_W
    width = max(plot_right + RIGHT, left + max(legend_w, len(note) * CHAR_W) + RIGHT, len(title) * CHAR_W * 1.1 + 20)
    legend_y = TOP + PLOT_H + label_h + 16
    height = legend_y + 46

    def y(v: float) -> float:
        return TOP + PLOT_H * (1 - (v - bottom) / (top - bottom))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="bar-chart" width="{_f(width)}" height="{_f(height)}" '
        f'viewBox="0 0 {_f(width)} {_f(height)}" role="img" aria-label="{e(name)}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="10">',
        f"<title>{e(name)}</title>",
        f'<text x="{_f(width / 2)}" y="14" text-anchor="middle" font-size="11">{e(title)}</text>',
    ]
    n_ticks = round((top - bottom) / step)
    for i in range(n_ticks + 1):
        v = bottom + i * step
        yy = y(v)
        out.append(
            f'<line x1="{_f(left)}" y1="{_f(yy)}" x2="{_f(plot_right)}" y2="{_f(yy)}" stroke="#ddd" '
            'stroke-width="0.5"/>'
        )
        out.append(f'<text x="{_f(left - 4)}" y="{_f(yy + 3)}" text-anchor="end">{v:.{d}f}</text>')
    out.append(
        f'<line x1="{_f(left)}" y1="{_f(TOP)}" x2="{_f(left)}" y2="{_f(TOP + PLOT_H)}" stroke="#444" stroke-width="1"/>'
    )
    direction = "higher is better" if higher_is_better else "lower is better"
    out.append(
        f'<text x="12" y="{_f(TOP + PLOT_H / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 12 {_f(TOP + PLOT_H / 2)})">{e(f"mean ± std ({direction})")}</text>'
    )
    for i, b in enumerate(bars):
        x = left + GAP + i * (BAR + GAP)
        cx = x + BAR / 2
        if b.mean is not None and math.isfinite(b.mean):
            colour = BEST if b.rank == 1 else SECOND if b.rank == 2 else OTHER
            y0, y1 = y(max(min(b.mean, top), bottom)), y(bottom)
            tip = f"{b.label}: {b.mean:.4f} ± {b.std:.4f} (n={b.n})"
            out.append(
                f'<rect class="bar" x="{_f(x)}" y="{_f(min(y0, y1))}" width="{BAR}" height="{_f(abs(y1 - y0))}" '
                f'fill="{colour}"><title>{e(tip)}</title></rect>'
            )
            if b.std > 0:
                lo, hi = y(max(b.mean - b.std, bottom)), y(min(b.mean + b.std, top))
                out.append(
                    f'<path d="M{_f(cx)} {_f(lo)}V{_f(hi)}M{_f(cx - 4)} {_f(lo)}H{_f(cx + 4)}'
                    f'M{_f(cx - 4)} {_f(hi)}H{_f(cx + 4)}" stroke="#222" stroke-width="1" fill="none"/>'
                )
        ly = TOP + PLOT_H + 10
        out.append(
            f'<text x="{_f(cx)}" y="{_f(ly)}" text-anchor="end" transform="rotate(-45 {_f(cx)} {_f(ly)})">'
            f"{e(b.label)}</text>"
        )
    out.append(
        f'<line x1="{_f(left)}" y1="{_f(TOP + PLOT_H)}" x2="{_f(plot_right)}" y2="{_f(TOP + PLOT_H)}" '
        'stroke="#444" stroke-width="1"/>'
    )
    x = left
    for colour, name in zip((BEST, SECOND, OTHER), LEGEND):
        out.append(f'<rect x="{_f(x)}" y="{_f(legend_y - 8)}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{_f(x + 14)}" y="{_f(legend_y + 1)}">{name}</text>')
        x += 14 + len(name) * CHAR_W + 12
    out.append(
        f'<path d="M{_f(x + 4)} {_f(legend_y - 8)}V{_f(legend_y + 2)}" stroke="#222" stroke-width="1" fill="none"/>'
    )
    out.append(f'<text x="{_f(x + 12)}" y="{_f(legend_y + 1)}">{ERROR_BAR}</text>')
    out.append(f'<text x="{_f(left)}" y="{_f(legend_y + 20)}" fill="#555">{e(note)}</text>')
    out.append("</svg>")
    return "".join(out)
