"""Candidate - base per cell of a grid of data settings: the gap table and its per-stage breakdown.

A *cell* is a section of the report: the runs on one data setting (e.g. one (task_conflict, label_noise) point of
``experiment=stan_dose_response``); its coordinates are its values of the grid's config keys (the dataset settings
that vary between sections, or the report's ``grid``). In each cell the candidate's and the base's runs are paired
by seed, and per task and metric the gap is the mean over seeds of candidate - base with

* the paired t interval and t-test over seeds (:func:`mtlbench.report.stats.paired_difference`), and
* for AUC and GAUC, the paired bootstrap over test users from the runs' predictions
  (:func:`mtlbench.report.bootstrap.paired_bootstrap`).

The per-stage breakdown is the t side for the per-stage metrics of results.json (``auc@stage=<name>``).
Renderers: Markdown and CSV here; the HTML table and the heat-map in :mod:`mtlbench.report.html` and
:mod:`mtlbench.report.heatmap`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mtlbench.errors import ConfigError
from mtlbench.report import bootstrap, stats
from mtlbench.report.collect import Group, Section, find_group
from mtlbench.rundir import PREDICTIONS_FILE


@dataclass
class GapCell:
    """Candidate - base in one cell, task and metric."""

    coords: tuple[str, ...]
    section: str
    task: str
    task_label: str
    metric: str  # results key: "auc", "gauc", "auc@stage=Wander"
    diff: stats.PairedDifference
    boot: bootstrap.Interval | None = None


@dataclass
class Gap:
    """Every cell's gap, in grid order, and what could not be computed."""

    candidate: str
    base: str
    axes: list[str]
    cells: list[GapCell]
    stages: list[GapCell]
    split: str
    confidence: float
    resamples: int
    notes: list[str] = field(default_factory=list)

    def values(self, axis: int) -> list[str]:
        """The coordinates of one axis, in grid order."""
        return list(dict.fromkeys(c.coords[axis] for c in self.cells + self.stages))


def grid_axes(sections: Sequence[Section], grid: Sequence[str] | None) -> list[str]:
    """The grid's config keys: ``grid`` as given, else the dataset settings whose values differ between sections."""
    if grid:
        return list(grid)
    flats = [s.groups[0].runs[0].flat for s in sections if s.groups and s.groups[0].runs]
    keys = sorted({k for f in flats for k in f if k.startswith("dataset.")})
    return [k for k in keys if len({f.get(k) for f in flats}) > 1]


def _text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return "[" + ",".join(_text(x) for x in v) + "]"
    return str(v)


def _coord(section: Section, key: str) -> str:
    """The section's value of a grid key (its runs share the data, so one value for dataset keys)."""
    return "/".join(sorted({_text(g.runs[0].flat.get(key)) for g in section.groups if g.runs}))


def _order_key(coords: tuple[str, ...]) -> tuple:
    def one(v: str) -> tuple:
        try:
            return (0, float(v), "")
        except ValueError:
            return (1, 0.0, v)

    return tuple(one(v) for v in coords)


def _stage_keys(groups: Sequence[Group], split: str, task: str, metric: str) -> list[str]:
    prefix = f"{metric}@stage="
    found: dict[str, None] = {}
    for g in groups:
        for r in g.runs:
            found.update((k, None) for k in r.results["metrics"].get(split, {}).get(task, {}) if k.startswith(prefix))
    return list(found)


def _bootstrap(
    cand: Group, base: Group, tasks: list[str], metrics: list[str], resamples: int, seed: int, confidence: float
) -> dict[tuple[str, str], bootstrap.Interval]:
    """The user bootstrap of the seeds both groups have, from their runs' predictions files."""
    by_seed = {r.seed: r for r in base.runs}
    pairs = [(r, by_seed[r.seed]) for r in cand.runs if r.seed in by_seed]
    preds = [
        (
            bootstrap.read_predictions(c.path / PREDICTIONS_FILE, tasks),
            bootstrap.read_predictions(b.path / PREDICTIONS_FILE, tasks),
        )
        for c, b in pairs
    ]
    return bootstrap.paired_bootstrap(preds, tasks, metrics, resamples, seed, confidence)


def compute_gap(
    sections: Sequence[tuple[Section, list[str], dict[str, str]]],
    *,
    candidate: str,
    base: str,
    metrics: Sequence[str],
    stage_metrics: Sequence[str],
    grid: Sequence[str] | None = None,
    split: str = "test",
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Gap:
    """The gap of every section (with its tasks and task labels) that has both the candidate and the base."""
    axes = grid_axes([s for s, _, _ in sections], grid)
    boot_metrics = [m for m in metrics if m in bootstrap.METRICS] if resamples > 0 else []
    cells: list[GapCell] = []
    stage_cells: list[GapCell] = []
    notes: list[str] = []
    if boot_metrics and split != "test":
        notes.append(f"no user bootstrap on the {split} split (predictions files hold the test rows)")
        boot_metrics = []
    labels = ("", "")
    for section, tasks, task_labels in sorted(sections, key=lambda s: _order_key(tuple(_coord(s[0], k) for k in axes))):
        coords = tuple(_coord(section, k) for k in axes)
        cand, ref = find_group(section.groups, candidate), find_group(section.groups, base)
        if cand is None or ref is None:
            missing = " and ".join(n for n, g in ((candidate, cand), (base, ref)) if g is None)
            notes.append(f"{section.title}: no gap ({missing}: no runs in this cell)")
            continue
        if cand is ref:
            notes.append(f"{section.title}: no gap (candidate {candidate!r} and base {base!r} name the same runs)")
            continue
        labels = (cand.label, ref.label)
        boot: dict[tuple[str, str], bootstrap.Interval] = {}
        if boot_metrics:
            try:
                boot = _bootstrap(cand, ref, tasks, boot_metrics, resamples, seed, confidence)
            except ConfigError as e:
                notes.append(f"{section.title}: no user bootstrap ({e})")
        for task in tasks:
            for m in metrics:
                d = stats.paired_difference(cand.values(split, task, m), ref.values(split, task, m), confidence)
                if d is not None:
                    cells.append(
                        GapCell(coords, section.title, task, task_labels.get(task, task), m, d, boot.get((task, m)))
                    )
            for sm in stage_metrics:
                for key in _stage_keys([cand, ref], split, task, sm):
                    d = stats.paired_difference(cand.values(split, task, key), ref.values(split, task, key), confidence)
                    if d is not None:
                        stage_cells.append(GapCell(coords, section.title, task, task_labels.get(task, task), key, d))
    return Gap(labels[0] or candidate, labels[1] or base, axes, cells, stage_cells, split, confidence, resamples, notes)


# -- formatting ----------------------------------------------------------------------------------------
def axis_name(key: str) -> str:
    """``dataset.task_conflict.Wander`` -> ``task_conflict.Wander``."""
    return key.split(".", 1)[1] if key.startswith("dataset.") else key


def fmt_diff(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:+.4f}"


def fmt_interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{fmt_diff(low)}, {fmt_diff(high)}]"


def metric_label(metric: str) -> str:
    base = stats.base_metric(metric)
    return {"auc": "AUC", "gauc": "GAUC"}.get(base, base)


def has_bootstrap(gap: Gap) -> bool:
    """True when some cell has the user bootstrap (resamples > 0 and the runs' predictions were found)."""
    return any(c.boot is not None for c in gap.cells)


def legend(gap: Gap) -> str:
    """The gap table's caption; the user bootstrap is named only when a cell has it."""
    pct = f"{gap.confidence:.0%}"
    boot = (
        f"{pct} interval over test users: paired bootstrap (users resampled with replacement, "
        f"B = {gap.resamples}, the same draws for every seed, per-seed differences averaged; AUC and GAUC); "
        if has_bootstrap(gap)
        else ""
    )
    return (
        f"{gap.candidate} - {gap.base} on the {gap.split} split per data cell and task: mean over seeds of the "
        f"paired differences; {boot}{pct} interval over seeds: paired t; p: paired t-test over seeds "
        f"(* p < 0.05, ** p < 0.01; none with fewer than {stats.MIN_SEEDS_FOR_TEST} seeds)."
    )


def header(gap: Gap) -> list[str]:
    """Column names of the gap table (the bootstrap column only when a cell has it)."""
    pct = f"{gap.confidence:.0%}"
    boot = [f"{pct} CI users (bootstrap)"] if has_bootstrap(gap) else []
    title = f"{gap.candidate} - {gap.base}"
    return [*(axis_name(a) for a in gap.axes), "task", "metric", "seeds", title, *boot, f"{pct} CI seeds (t)", "p"]


def _boot_text(c: GapCell) -> str:
    return fmt_interval(c.boot.low, c.boot.high) if c.boot is not None else "-"


def to_markdown(gap: Gap) -> list[str]:
    """The gap table and the per-stage breakdown, as Markdown lines."""
    title = f"{gap.candidate} - {gap.base}"
    axes = [axis_name(a) for a in gap.axes]
    pct = f"{gap.confidence:.0%}"
    out = [f"## Gap: {title}", "", legend(gap), ""]
    if gap.cells:
        boot = has_bootstrap(gap)
        out += [
            "| " + " | ".join(header(gap)) + " |",
            "|" + "---|" * len(axes) + "---|---|---:|---:|" + "---:|" * (3 if boot else 2),
        ]
        for c in gap.cells:
            mark = c.diff.test.mark.replace("*", "\\*")
            cells = [*c.coords, c.task_label, metric_label(c.metric), str(c.diff.test.n), fmt_diff(c.diff.mean) + mark]
            cells += [_boot_text(c)] if boot else []
            cells += [fmt_interval(c.diff.low, c.diff.high), _fmt_p(c.diff.test.p)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if gap.stages:
        stages = list(dict.fromkeys(c.metric for c in gap.stages))
        out += [f"### Gap per stage: {title}", "", f"Mean over seeds [{pct} paired t interval]; * p < 0.05.", ""]
        head = [*axes, "task", *(f"{metric_label(s)} {s.split('=', 1)[1]}" for s in stages)]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * (len(axes) + 1) + "---:|" * len(stages)]
        rows: dict[tuple, dict[str, GapCell]] = {}
        for c in gap.stages:
            rows.setdefault((c.coords, c.task_label), {})[c.metric] = c
        for (coords, task), by_stage in rows.items():
            cells = [_stage_text(by_stage.get(s)) for s in stages]
            out.append("| " + " | ".join([*coords, task, *cells]) + " |")
        out.append("")
    out += [f"- {n}" for n in gap.notes]
    if gap.notes:
        out.append("")
    return out


def _stage_text(c: GapCell | None) -> str:
    if c is None:
        return "n/a"
    return (
        f"{fmt_diff(c.diff.mean)} {fmt_interval(c.diff.low, c.diff.high)}{c.diff.test.mark.replace('*', chr(92) + '*')}"
    )


def _fmt_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "-"
    return f"{p:.2g}" if p < 1e-3 else f"{p:.4f}"


CSV_FIELDS = [
    "section",
    "axes",
    "coords",
    "task",
    "metric",
    "candidate",
    "base",
    "seeds",
    "mean",
    "boot_low",
    "boot_high",
    "boot_resamples",
    "boot_users",
    "t_low",
    "t_high",
    "p_value",
    "confidence",
]


def to_csv(gap: Gap) -> str:
    """One line per cell, task and metric (per-stage metrics included), with both intervals."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for c in gap.cells + gap.stages:
        w.writerow(
            {
                "section": c.section,
                "axes": " ".join(gap.axes),
                "coords": " ".join(c.coords),
                "task": c.task,
                "metric": c.metric,
                "candidate": gap.candidate,
                "base": gap.base,
                "seeds": c.diff.test.n,
                "mean": repr(c.diff.mean),
                "boot_low": repr(c.boot.low) if c.boot else "",
                "boot_high": repr(c.boot.high) if c.boot else "",
                "boot_resamples": c.boot.resamples if c.boot else "",
                "boot_users": c.boot.users if c.boot else "",
                "t_low": "" if c.diff.low is None else repr(c.diff.low),
                "t_high": "" if c.diff.high is None else repr(c.diff.high),
                "p_value": "" if c.diff.test.p is None else repr(c.diff.test.p),
                "confidence": gap.confidence,
            }
        )
    return buf.getvalue()
