"""Leaderboards as the seed papers print them: models as rows, one column per task and metric.

Each cell is mean ± std over seeds; per column the best value is bold and the second underlined
(in the direction of the metric class's ``higher_is_better``); RelaImpr against a base model follows
STAN Eq. 15 (AUC-type) and Eq. 16 (NDCG); the best model of each column is tested against the best of
the other models (the "best baseline") over seeds, and marked ``*`` (p < 0.05) or ``**`` (p < 0.01). With
``against`` (e.g. ``{weighting: equal}``) every row is tested instead against its *reference*: the row with the same
other coordinates (model, variant) and the configured value of the named ones, paired by seed; the overall table gets
the mean over tasks per metric, and a significance table per table ranks the rows within their family (the rows
that share a reference) by that mean, with each cell's difference to the reference and its p-value.
Per-group metrics (``auc@scenario=s``, ``auc@stage=Wander``) get their own tables ("Per scenario", "Per
stage"), one column per task and group. With a base, a candidate and ``gap_metrics``, the report adds
candidate - base per data cell (section) with intervals over seeds and test users (:mod:`mtlbench.report.gap`).

Writers: Markdown, CSV (long format: one line per group and column, with the p-values) and LaTeX
(booktabs); the HTML page is in :mod:`mtlbench.report.html`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtlbench.errors import ConfigError
from mtlbench.report import stats
from mtlbench.report.collect import (
    IGNORED_KEYS,
    NAMED_COORDINATES,
    Group,
    Section,
    coordinate_text,
    coordinates,
    find_group,
    find_runs,
    group_label,
    group_runs,
    pair_key,
    weighting_varies,
)
from mtlbench.report.gap import Gap, compute_gap
from mtlbench.report.gap import to_markdown as gap_markdown

METRIC_NAMES = {"auc": "AUC", "gauc": "GAUC", "sgauc": "S-GAUC", "logloss": "LogLoss"}
#: per-group tables: the group key of results keys (``auc@<key>=<group>``) -> (ReportSettings field listing the
#: metrics shown, table title)
GROUP_TABLES = {
    "scenario": ("scenario_metrics", "Per scenario"),
    "stage": ("stage_metrics", "Per stage"),
    "rule_stage": ("rule_stage_metrics", "Per rule stage"),  # STAN §2.1's stages; Stage_Single's comparison
}
#: the task of a mean-over-tasks column (``against``); its cells average the tasks of ``Column.mean_of``
MEAN_TASK = "mean"


@dataclass
class ReportSettings:
    """What a report shows; every field is a flag of ``mtlbench-report`` and a key of the report callback."""

    metrics: list[str] = field(default_factory=lambda: ["auc", "gauc", "ndcg@5"])
    scenario_metrics: list[str] = field(default_factory=lambda: ["auc"])
    stage_metrics: list[str] = field(default_factory=lambda: ["auc"])
    rule_stage_metrics: list[str] = field(default_factory=lambda: ["auc"])
    split: str = "test"
    base: str | None = "single_task"
    test: str = "ttest"
    candidate: str | None = None
    tasks: list[str] | None = None
    task_labels: dict[str, str] = field(default_factory=dict)
    model_labels: dict[str, str] = field(default_factory=dict)
    models: list[str] | None = None
    ignore: list[str] = field(default_factory=lambda: list(IGNORED_KEYS))
    title: str = "Leaderboard"
    # candidate - base per data cell (section) and task (mtlbench.report.gap): the metrics of the gap table, those
    # of its per-stage breakdown (auc -> auc@stage=<name>), the grid's config keys (default: the dataset settings
    # that differ between sections), the paired user bootstrap (resamples, 0 = t over seeds only; its seed) and
    # the intervals' confidence
    gap_metrics: list[str] = field(default_factory=list)
    gap_stage_metrics: list[str] = field(default_factory=list)
    grid: list[str] | None = None
    bootstrap: int = 1000
    bootstrap_seed: int = 0
    confidence: float = 0.95
    # test every row against its reference instead of the best against the best baseline: the row with the same
    # other coordinates and these values of the named ones (model, weighting or a variant's config key), e.g.
    # {weighting: equal}: each weighting against equal weighting of the same model, paired by seed
    against: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.split not in ("valid", "test"):
            raise ConfigError(f"report split must be 'valid' or 'test', not {self.split!r}")
        if self.test not in stats.TESTS:
            raise ConfigError(f"unknown significance test {self.test!r}; known: {', '.join(stats.TESTS)}")
        for m in self.metrics:
            for key, (setting, _) in GROUP_TABLES.items():
                if f"@{key}" in m:
                    raise ConfigError(
                        f"report metric {m!r}: list per-{key} metrics as {setting} "
                        f"(e.g. {setting}=[{stats.base_metric(m)}])"
                    )
        if (self.gap_metrics or self.gap_stage_metrics) and not (self.base and self.candidate):
            raise ConfigError(
                "gap_metrics / gap_stage_metrics need a base and a candidate (the gap is candidate - base)"
            )
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap (resamples) must be >= 0, got {self.bootstrap}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.against is not None and (
            not isinstance(self.against, dict)
            or not self.against
            or not all(isinstance(k, str) and k for k in self.against)
            or any(isinstance(v, dict | list | tuple) or v is None for v in self.against.values())
        ):
            raise ConfigError(
                f"against must map row coordinates to their reference values, e.g. {{weighting: equal}}, "
                f"got {self.against!r}"
            )


def metric_name(metric: str) -> str:
    base = stats.base_metric(metric)
    return METRIC_NAMES.get(base) or (base.upper() if base.startswith("ndcg") else base)


@dataclass
class Column:
    task: str  # MEAN_TASK for the mean over the tasks of ``mean_of``
    metric: str  # key in results.json, e.g. "auc", "auc@scenario=2" or "auc@stage=Wander"
    header: str
    mean_of: tuple[str, ...] = ()


@dataclass
class Cell:
    mean: float
    std: float
    n: int
    relaimpr: float | None = None
    rank: int | None = None
    mark: str = ""
    p: float | None = None
    test: stats.TestResult | None = None  # ``against``: the test against the reference row's cell
    diff: float | None = None  # ``against``: the mean difference to the reference (see stats.RowTests.diff)

    @property
    def empty(self) -> bool:
        return self.n == 0


@dataclass
class Peers:
    """A row's place in the tests against a reference (``against``): its family (the rows that share its other
    coordinates), the family's reference row and the row's rank in the family by the ranking column."""

    family: int  # the family's position in the table (the order of their first rows)
    reference: str | None  # the reference row's label; None: the family has no reference row
    is_reference: bool
    rank: int | None  # 1 = best; None without a value in the ranking column
    score: Cell  # the row's cell of the ranking column


@dataclass
class Row:
    group: Group
    label: str
    cells: list[Cell]
    peers: Peers | None = None  # ``against`` only


@dataclass
class Comparison:
    """The significance test of one column: ``best`` (the tested model: the configured candidate, or the best model
    of the column; ``role`` says which) against ``baseline`` (the best of the other models)."""

    column: Column
    best: str
    baseline: str
    result: stats.TestResult
    role: str = "best"  # "candidate" or "best"
    diff: float = math.nan  # mean of the tested model - mean of the baseline
    better: bool = True  # the tested model is better than the baseline in the metric's direction

    @property
    def verdict(self) -> str:
        """The mark of the test (``*``, ``**``), saying so when the tested model is the worse one, or the note."""
        if not self.result.mark:
            return self.result.note
        return self.result.mark if self.better else f"{self.result.mark} (worse)"


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[Row]
    show_relaimpr: bool
    comparisons: list[Comparison]
    against: bool = False  # cells are tested against their reference rows (``against``), not compared best/baseline


@dataclass
class SectionBoard:
    section: Section
    base_label: str | None
    tables: list[Table]
    rows: list[Row]  # the rows of the first table (labels, speed, params)
    speed: dict[str, float | None]
    params: dict[str, int | None]
    ranked_by: Column | None = None  # ``against``: the column that ranks rows within their families


@dataclass
class Leaderboard:
    settings: ReportSettings
    sections: list[SectionBoard]
    incomplete: list[Path]
    missing_models: list[str] = field(default_factory=list)
    gap: Gap | None = None
    files: list[Path] = field(default_factory=list)  # the files write_report wrote, in order

    @property
    def runs(self) -> int:
        """Complete runs counted in the tables."""
        return sum(len(g.runs) for s in self.sections for g in s.section.groups)


# -- building ------------------------------------------------------------------------------------------
def build(paths: Sequence[str | Path], settings: ReportSettings | None = None) -> Leaderboard:
    """Collect the runs under ``paths`` and compute every table of the report."""
    settings = settings or ReportSettings()
    runs, incomplete = find_runs(paths)
    sections = group_runs(runs, settings.ignore)
    if settings.against and sections:
        known = {*NAMED_COORDINATES, *(k for s in sections for g in s.groups for k in g.variant)}
        unknown = sorted(set(settings.against) - known)
        if unknown:
            raise ConfigError(
                f"report against: {unknown} are not coordinates of the rows; they are {sorted(known)} (model, "
                "weighting and the config keys that tell rows of one model and weighting apart)"
            )
    boards = [_section_board(s, settings) for s in sections]
    present = {name for s in sections for g in s.groups for name in (g.model, pair_key(g))}
    missing = [m for m in (settings.models or []) if m not in present]
    board = Leaderboard(settings, boards, incomplete, missing)
    if (settings.gap_metrics or settings.gap_stage_metrics) and sections:
        assert settings.base and settings.candidate  # ReportSettings checks it
        board.gap = compute_gap(
            [(s, _tasks(s.groups, settings), _task_labels(s.groups, settings.task_labels)) for s in sections],
            candidate=settings.candidate,
            base=settings.base,
            metrics=settings.gap_metrics,
            stage_metrics=settings.gap_stage_metrics,
            grid=settings.grid,
            split=settings.split,
            resamples=settings.bootstrap,
            seed=settings.bootstrap_seed,
            confidence=settings.confidence,
        )
    return board


def _order(groups: list[Group], settings: ReportSettings) -> list[Group]:
    order = list(settings.models or [])
    if settings.base and settings.base not in order:
        order.insert(0, settings.base)

    def key(g: Group) -> tuple:
        name = pair_key(g) if pair_key(g) in order else g.model
        idx = order.index(name) if name in order else len(order)
        return idx, g.label

    return sorted(groups, key=key)


def _task_roles(groups: list[Group]) -> dict[str, str]:
    """``role:<role>`` -> task, as the runs' datasets declare them (results.json ``task_roles``)."""
    return {
        f"role:{role}": task
        for g in groups
        for r in g.runs
        for role, task in (r.results.get("task_roles") or {}).items()
    }


def _tasks(groups: list[Group], settings: ReportSettings) -> list[str]:
    found: dict[str, None] = {}
    for g in groups:
        for r in g.runs:
            for t in r.results["metrics"].get(settings.split, {}):
                found[t] = None
    if settings.tasks:
        roles = _task_roles(groups)
        wanted = [roles.get(t, t) for t in settings.tasks]
        unknown = [t for t, w in zip(settings.tasks, wanted) if w not in found]
        if unknown:
            raise ConfigError(
                f"report tasks {unknown} are not in the runs; their tasks are {list(found)}"
                f" and task roles {sorted(roles) or 'none'}"
            )
        return wanted
    return list(found)


def _task_labels(groups: list[Group], labels: dict[str, str]) -> dict[str, str]:
    """Column labels by task; a label keyed ``role:<role>`` applies to the task that plays the role."""
    out = {task: labels[role] for role, task in _task_roles(groups).items() if role in labels}
    return out | {t: v for t, v in labels.items() if not t.startswith("role:")}


def _group_label(groups: list[Group], key: str, value: str) -> str:
    """A group's name in a column header: a name as is (``auc@stage=Wander``); an id by the runs' dataset
    (results.json ``<key>_labels``, e.g. ``scenario_labels``: B1), else ``#id``."""
    if not value.lstrip("-").isdigit():
        return value
    for g in groups:
        for r in g.runs:
            names = r.results.get(f"{key}_labels") or []
            if 0 <= int(value) < len(names):
                return names[int(value)]
    return f"#{value}"


def _group_values(groups: list[Group], split: str, metric: str, key: str) -> list[str]:
    """The groups of ``<metric>@<key>=<group>`` keys in the runs: ids in numeric order, then names in the order
    the runs give them (a dataset's stage order)."""
    prefix = f"{metric}@{key}="
    found: dict[str, None] = {}
    for g in groups:
        for r in g.runs:
            for vals in r.results["metrics"].get(split, {}).values():
                found.update((k[len(prefix) :], None) for k in vals if k.startswith(prefix))
    seen = list(found)
    return sorted(seen, key=lambda s: (0, int(s), 0) if s.lstrip("-").isdigit() else (1, 0, seen.index(s)))


def _has(groups: list[Group], split: str, task: str, metric: str) -> bool:
    return any(g.values(split, task, metric) for g in groups)


def _values(g: Group, split: str, col: Column) -> dict[int, float]:
    """Seed -> the value of a column; for a mean column, the mean over its tasks of the runs that have them all."""
    if not col.mean_of:
        return g.values(split, col.task, col.metric)
    x = np.array(
        [[np.nan if (v := r.metric(split, t, col.metric)) is None else v for t in col.mean_of] for r in g.runs],
        dtype=float,
    ).reshape(len(g.runs), len(col.mean_of))
    means = x.mean(axis=1)  # NaN where a task is missing: that seed has no mean
    return {r.seed: float(m) for r, m in zip(g.runs, means) if np.isfinite(m)}


def _mean_columns(groups: list[Group], tasks: list[str], settings: ReportSettings) -> list[Column]:
    """One mean-over-tasks column per metric that more than one task has."""
    out = []
    for m in settings.metrics:
        have = tuple(t for t in tasks if _has(groups, settings.split, t, m))
        if len(have) > 1:
            out.append(Column(MEAN_TASK, m, f"mean {metric_name(m)}", have))
    return out


def _families(groups: list[Group], against: dict[str, Any]) -> tuple[list[int], list[int | None]]:
    """Per group: its family (groups with the same coordinates but those ``against`` names, numbered in order of
    appearance) and its reference (the index of the family's group with the configured values; None if none)."""
    want = {k: coordinate_text(v) for k, v in against.items()}
    coords = [coordinates(g) for g in groups]
    keys = [tuple(sorted((k, v) for k, v in c.items() if k not in want)) for c in coords]
    number = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    refs: dict[tuple, int] = {}
    for i, (k, c) in enumerate(zip(keys, coords)):
        if all(c.get(a) == v for a, v in want.items()):
            refs.setdefault(k, i)
    return [number[k] for k in keys], [refs.get(k) for k in keys]


def _rank_peers(sb: SectionBoard, families: list[int], refs: list[int | None]) -> None:
    """Rank each row within its family by the overall table's first mean column (else its first column) and set
    ``peers`` on the rows of every table."""
    if not sb.tables or not sb.tables[0].columns:
        return
    overall = sb.tables[0]
    k = next((j for j, c in enumerate(overall.columns) if c.mean_of), 0)
    sb.ranked_by = overall.columns[k]
    scores = [row.cells[k] for row in overall.rows]
    higher = stats.higher_is_better(sb.ranked_by.metric)
    fam = np.array(families)
    rank: list[int | None] = [None] * len(scores)
    for f in np.unique(fam):  # a loop over families; ranks within one by stats.ranks
        idx = np.flatnonzero(fam == f)
        for i, r in zip(idx, stats.ranks([scores[i].mean for i in idx], higher)):
            rank[i] = r
    labels = [row.label for row in overall.rows]
    peers = [
        Peers(f, None if ref is None else labels[ref], ref == i, rank[i], scores[i])
        for i, (f, ref) in enumerate(zip(families, refs))
    ]
    for table in sb.tables:
        for row, p in zip(table.rows, peers):
            row.peers = p


def _section_board(section: Section, settings: ReportSettings) -> SectionBoard:
    multi_weighting = weighting_varies(section.groups)
    for g in section.groups:
        g.label = group_label(g, multi_weighting, settings.model_labels)
    groups = _order(section.groups, settings)
    tasks = _tasks(groups, settings)
    tl = _task_labels(groups, settings.task_labels)

    base = _base_group(groups, settings.base)
    families, refs = _families(groups, settings.against) if settings.against else ([], None)
    tables = []
    main = [
        Column(t, m, f"{tl.get(t, t)} {metric_name(m)}")
        for t in tasks
        for m in settings.metrics
        if _has(groups, settings.split, t, m)
    ]
    if main and settings.against:
        main += _mean_columns(groups, tasks, settings)
    if main:
        tables.append(_table("Overall", main, groups, base, settings, base is not None, refs))
    for key, (setting, title) in GROUP_TABLES.items():
        for gm in getattr(settings, setting):
            values = _group_values(groups, settings.split, gm, key)
            cols = [
                Column(t, f"{gm}@{key}={v}", f"{tl.get(t, t)} {_group_label(groups, key, v)}")
                for t in tasks
                for v in values
                if _has(groups, settings.split, t, f"{gm}@{key}={v}")
            ]
            if cols:
                tables.append(_table(f"{title}: {metric_name(gm)}", cols, groups, base, settings, False, refs))
    rows = tables[0].rows if tables else [Row(g, g.label, []) for g in groups]
    speed = {}
    params = {}
    for g in groups:
        sps = [r.results.get("train", {}).get("samples_per_second") for r in g.runs]
        sps = [s for s in sps if s is not None]
        speed[g.label] = sum(sps) / len(sps) if sps else None
        params[g.label] = g.runs[0].results.get("params")
    board = SectionBoard(section, base.label if base else None, tables, rows, speed, params)
    if refs is not None:
        _rank_peers(board, families, refs)
    return board


def _base_group(groups: list[Group], base: str | None) -> Group | None:
    return find_group(groups, base)


def _table(
    title: str,
    columns: list[Column],
    groups: list[Group],
    base: Group | None,
    settings: ReportSettings,
    show_relaimpr: bool,
    refs: list[int | None] | None = None,
) -> Table:
    """A table's cells; its tests: each row against its reference (``refs``: the index of each group's reference,
    with ``against``), else the best model against the best baseline per column."""
    split = settings.split
    rows = [Row(g, g.label, []) for g in groups]
    comparisons = []
    for col in columns:
        values = [_values(g, split, col) for g in groups]
        cells = [Cell(*stats.mean_std(list(v.values()))) for v in values]
        higher = stats.higher_is_better(col.metric)
        for cell, rank in zip(cells, stats.ranks([c.mean for c in cells], higher)):
            cell.rank = rank
        if base is not None:
            b = cells[groups.index(base)].mean
            for g, cell in zip(groups, cells):
                if g is not base and not cell.empty:
                    cell.relaimpr = stats.relaimpr(col.metric, cell.mean, b)
        if refs is not None:
            _test_against(cells, values, refs, settings.test)
        elif (comp := _compare(col, groups, cells, values, settings)) is not None:
            comparisons.append(comp)
        for row, cell in zip(rows, cells):
            row.cells.append(cell)
    return Table(title, columns, rows, show_relaimpr, comparisons, against=refs is not None)


def _test_against(cells: list[Cell], values: list[dict[int, float]], refs: list[int | None], test: str) -> None:
    """Test every row's cell of one column against its reference row's, all rows at once (seeds as columns of a
    matrix, NaN where a row has no value); sets each tested cell's test, difference, p-value and mark."""
    pairs = [(i, r) for i, r in enumerate(refs) if r is not None and r != i]
    if not pairs:
        return
    rows, ref_rows = [i for i, _ in pairs], [r for _, r in pairs]
    seeds = sorted({s for v in values for s in v})
    m = np.array([[v.get(s, np.nan) for s in seeds] for v in values], dtype=float).reshape(len(values), len(seeds))
    res = stats.tests_against(m[rows], m[ref_rows], test)
    need = f"needs {stats.MIN_SEEDS_FOR_TEST}"
    for k, i in enumerate(rows):  # one TestResult per table row
        n, p, t = int(res.n[k]), float(res.p[k]), float(res.statistic[k])
        if math.isfinite(p):
            note = stats.CONSTANT if res.constant[k] else ""
            result = stats.TestResult(test, n, p, t if math.isfinite(t) else None, note)
        elif test == "ttest":
            result = stats.TestResult(test, n, None, note=f"no test: {n} seed(s) paired with the reference, {need}")
        else:
            result = stats.TestResult(test, n, None, note=f"no test: {n} seed(s) on one side, {need}")
        cell = cells[i]
        cell.test, cell.p, cell.mark = result, result.p, result.mark
        cell.diff = float(res.diff[k]) if math.isfinite(res.diff[k]) else None


def _compare(
    col: Column, groups: list[Group], cells: list[Cell], values: list[dict[int, float]], settings: ReportSettings
) -> Comparison | None:
    """Test the best model (or the configured candidate) against the best of the other models."""
    higher = stats.higher_is_better(col.metric)
    scored = [i for i, c in enumerate(cells) if not c.empty]
    if len(scored) < 2:
        return None
    sign = 1.0 if higher else -1.0
    chosen = find_group([groups[i] for i in scored], settings.candidate)
    best = next((i for i in scored if groups[i] is chosen), max(scored, key=lambda i: sign * cells[i].mean))
    others = [i for i in scored if i != best]
    baseline = max(others, key=lambda i: sign * cells[i].mean)
    result = stats.significance(values[best], values[baseline], settings.test)
    diff = cells[best].mean - cells[baseline].mean
    cells[best].p = result.p
    if sign * diff > 0:
        cells[best].mark = result.mark
    role = "candidate" if chosen is not None and groups[best] is chosen else "best"
    return Comparison(col, groups[best].label, groups[baseline].label, result, role, diff, sign * diff > 0)


# -- formatting ----------------------------------------------------------------------------------------
def fmt_value(c: Cell, seeds: int) -> str:
    if c.empty:
        return "n/a"
    text = stats.format_mean_std(c.mean, c.std, c.n)
    if c.n < seeds:
        text += f" (n={c.n})"
    return text


def fmt_relaimpr(c: Cell, is_base: bool) -> str:
    if is_base:
        return "-"
    return "n/a" if c.relaimpr is None else f"{c.relaimpr:.2f}%"


def fmt_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "-"
    return f"{p:.2g}" if p < 1e-3 else f"{p:.4f}"


def fmt_speed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def fmt_params(v: int | None) -> str:
    return "n/a" if v is None else f"{v:,}"


def candidate_label(settings: ReportSettings) -> str | None:
    """The candidate's display name (its ``model_labels`` entry, else the setting as written)."""
    if not settings.candidate:
        return None
    return settings.model_labels.get(settings.candidate, settings.candidate)


def tested_what(settings: ReportSettings) -> str:
    """Who is tested against whom in the significance table (candidate vs best)."""
    cand = candidate_label(settings)
    if cand:
        return f"{cand} (the candidate) against the best other model per column"
    return "the best model against the best baseline (the best of the other models) per column"


def legend(board: Leaderboard, markup: str = "md") -> str:
    """The caption of the tables: says what they show and nothing else (RelaImpr only where a column has it, the
    significance marks only where a column was tested)."""
    settings = board.settings
    test = stats.TESTS[settings.test]
    best, second = ("**best**", "<u>second</u>") if markup == "md" else ("best in bold", "second underlined")
    star = "\\*" if markup == "md" else "*"
    parts = [f"Split: {settings.split}; cells are mean ± std over seeds (sample std)", f"{best}, {second} per column"]
    if settings.base:
        base = settings.model_labels.get(settings.base, settings.base)
        with_base = [
            sb for sb in board.sections if sb.base_label is not None and any(t.show_relaimpr for t in sb.tables)
        ]
        if with_base:
            where = (
                "" if len(with_base) == len(board.sections) else f" (in the {len(with_base)} section(s) where it ran)"
            )
            parts.append(
                f"RelaImpr against {base}{where}: STAN Eq. 15 for AUC-type metrics (relative to 0.5), Eq. 16 for NDCG"
            )
        elif board.sections:
            parts.append(f"no RelaImpr column: the base {base!r} has no runs here")
    comps = [c for sb in board.sections for t in sb.tables for c in t.comparisons]
    if settings.against:
        if any(against_tests(sb) for sb in board.sections):
            where = "table" if all(len(sb.tables) == 1 for sb in board.sections) else "tables"
            parts.append(
                f"significance of {against_who(board)}, per column: {test} over seeds, {star} p < 0.05, "
                f"{star}{star} p < 0.01 in either direction (differences, p-values and the ranking: the significance "
                f"{where} against {against_text(settings)})"
            )
        elif board.sections:
            need = stats.MIN_SEEDS_FOR_TEST
            parts.append(f"no significance test: no row has {need} seeds paired with its reference row")
    elif any(c.result.p is not None for c in comps):
        parts.append(
            f"significance of {tested_what(settings)}: {test} over seeds, {star} p < 0.05, {star}{star} p < 0.01"
        )
    elif comps:
        parts.append(f"no significance test: fewer than {stats.MIN_SEEDS_FOR_TEST} seeds per model")
    return "; ".join(parts) + "."


def split_comparisons(comps: Sequence[Comparison]) -> tuple[list[Comparison], list[Comparison]]:
    """The tested columns and those not tested (fewer than :data:`stats.MIN_SEEDS_FOR_TEST` seeds)."""
    return [c for c in comps if c.result.p is not None], [c for c in comps if c.result.p is None]


def not_tested_line(why: dict[str, Sequence[str]], tests: Iterable[str]) -> str:
    """The report's one line for what was not tested: ``Not tested (<why>): <what>[; ...]. Test: <test>.``"""
    parts = [f"Not tested ({reason}): {', '.join(items)}" for reason, items in why.items() if items]
    return "; ".join(parts) + f". Test: {', '.join(sorted(set(tests)))}."


def untested_line(untested: Sequence[Comparison]) -> str:
    """One line for every column without a test."""
    return not_tested_line(
        {f"fewer than {stats.MIN_SEEDS_FOR_TEST} seeds": [c.column.header for c in untested]},
        (stats.TESTS[c.result.test] for c in untested),
    )


# -- against: each row tested against its reference row ----------------------------------------------------------
def against_text(settings: ReportSettings) -> str:
    """The reference's values of the named coordinates, e.g. ``weighting=equal``."""
    return ", ".join(f"{k}={v}" for k, v in (settings.against or {}).items())


def family_axes(board: Leaderboard) -> list[str]:
    """The coordinates a row shares with its reference: model or weighting (whichever ``against`` does not name) and
    the config keys of the rows' variants."""
    named = board.settings.against or {}
    variant = sorted({k for sb in board.sections for g in sb.section.groups for k in g.variant} - set(named))
    return [k for k in NAMED_COORDINATES if k not in named] + variant


def against_who(board: Leaderboard) -> str:
    """Who is tested against whom, e.g. ``each row against the row with weighting=equal and the same model``."""
    axes = family_axes(board)
    same = f" and the same {' and '.join(axes)}" if axes else ""
    return f"each row against the row with {against_text(board.settings)}{same}"


def rank_header(board: Leaderboard) -> str:
    """The rank column of a significance table against a reference, e.g. ``rank in model``."""
    axes = family_axes(board)
    return f"rank in {' and '.join(axes)}" if axes else "rank"


def against_rows(table: Table) -> list[Row]:
    """A table's rows in its significance table: by family, then by rank (unranked last; ties in table order)."""

    def key(r: Row) -> tuple:
        return (r.peers.family, r.peers.rank is None, r.peers.rank or 0) if r.peers else ()

    return sorted(table.rows, key=key)


def against_tests(sb: SectionBoard) -> list[Cell]:
    """The cells of a section that were tested against their reference."""
    return [c for t in sb.tables for row in t.rows for c in row.cells if c.test is not None and c.test.p is not None]


def versus_parts(cell: Cell, row: Row) -> tuple[str, str]:
    """A cell of a significance table against a reference, in two parts with the significance mark between them:
    the difference and `` (p=...)`` (``, n=2`` when fewer seeds than the row has were paired), or the difference and
    `` (untested)``, or ``reference`` in the reference row."""
    if row.peers is not None and row.peers.is_reference:
        return "reference", ""
    if cell.test is None or cell.diff is None:
        return "n/a", ""
    if cell.test.p is None:
        return fmt_diff(cell.diff), " (untested)"
    n = f", n={cell.test.n}" if cell.test.n < len(row.group.runs) else ""
    return fmt_diff(cell.diff), f" (p={fmt_p(cell.test.p)}{n})"


def fmt_versus(cell: Cell, row: Row, mark: str = "") -> str:
    """:func:`versus_parts` with ``mark`` (the cell's mark as the format writes it) after the difference."""
    head, tail = versus_parts(cell, row)
    return f"{head}{mark}{tail}"


def against_legend(board: Leaderboard, sb: SectionBoard, markup: str = "md") -> str:
    """The paragraph over a section's significance tables against the reference: the test, what a cell holds, the
    ranking, and the number of tests with the multiple-comparison caveat (no correction is applied)."""
    s = board.settings
    how = (
        "over the seeds both rows have; a cell is the mean over those seeds of row - reference"
        if s.test == "ttest"
        else "of all the seeds of each row (unpaired); a cell is the difference of their means, row - reference"
    )
    axes = family_axes(board)
    within = f" within each {' and '.join(axes)}" if axes else ""
    ranked = sb.ranked_by.header if sb.ranked_by else "?"
    n = len(against_tests(sb))
    star = "\\*" if markup == "md" else "*"
    who = against_who(board)
    return (
        f"{who[0].upper()}{who[1:]}, per column: {stats.TESTS[s.test]} {how}, and the p-value (two-sided); "
        f"{star} p < 0.05, {star}{star} p < 0.01, in either direction. Rows are ranked{within} by {ranked} "
        f"(1 = best). {n} test{'s' if n != 1 else ''}, no multiple-comparison correction: a row that does not "
        f"differ from its reference still has p < 0.05 in 1 test in 20 (about {0.05 * n:.1f} of these {n} if no row "
        "differed)."
    )


def against_untested(table: Table, board: Leaderboard) -> str | None:
    """One line for the rows (and columns) of a table without a test against their reference, by reason."""
    few, alone = [], []
    for row in table.rows:  # a loop over table rows
        if row.peers is None or row.peers.is_reference:
            continue
        if row.peers.reference is None:
            alone.append(row.label)
            continue
        missing = [(col, c) for col, c in zip(table.columns, row.cells) if c.test is None or c.test.p is None]
        if len(missing) == len(table.columns):
            n = min(c.test.n if c.test else 0 for _, c in missing)
            few.append(f"{row.label} ({n} seed{'s' if n != 1 else ''})")
        elif missing:
            few.append(f"{row.label} ({', '.join(col.header for col, _ in missing)})")
    if not (few or alone):
        return None
    s = board.settings
    paired = "paired with the reference" if s.test == "ttest" else "on a side"
    axes = family_axes(board)
    same = f" and the same {' and '.join(axes)}" if axes else ""
    return not_tested_line(
        {
            f"fewer than {stats.MIN_SEEDS_FOR_TEST} seeds {paired}": few,
            f"no row with {against_text(s)}{same}": alone,
        },
        [stats.TESTS[s.test]],
    )


def against_header(board: Leaderboard, sb: SectionBoard, table: Table) -> list[str]:
    """Column names of a significance table against the reference."""
    ranked = sb.ranked_by.header if sb.ranked_by else "score"
    return [rank_header(board), "model", "seeds", ranked, *(f"Δ {c.header}" for c in table.columns)]


def against_title(board: Leaderboard, table: Table, first: bool) -> str:
    """``Significance against weighting=equal`` (and the table's title after the section's first table)."""
    title = f"Significance against {against_text(board.settings)}"
    return title if first else f"{title}: {table.title}"


def significance_header(settings: ReportSettings) -> list[str]:
    """Column names of the significance table: candidate vs best other model, or best vs best baseline."""
    if settings.candidate:
        return ["column", "candidate", "best other model", "difference", "test", "seeds", "p-value", ""]
    return ["column", "best", "best baseline", "difference", "test", "seeds", "p-value", ""]


def tested_label(c: Comparison, settings: ReportSettings) -> str:
    """The tested model's cell: with a candidate set, a column where it has no value tests the best instead."""
    if settings.candidate and c.role != "candidate":
        return f"{c.best} (best; the candidate has no value)"
    return c.best


def fmt_diff(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:+.4f}"


def to_markdown(board: Leaderboard) -> str:
    s = board.settings
    out = [f"# {s.title}", "", legend(board), ""]
    if not board.sections:
        out += ["(no complete runs)", ""]
    for sb in board.sections:
        out += [f"## {sb.section.title}", ""]
        for table in sb.tables:
            out += [f"### {table.title}", ""]
            out += _md_table(sb, table, with_extra=table is sb.tables[0])
            out.append("")
        tested, untested = split_comparisons([c for t in sb.tables for c in t.comparisons])
        if tested or untested:
            out += ["### Significance", ""]
        if tested:
            out += [
                "| " + " | ".join(significance_header(s)) + " |",
                "|---|---|---|---:|---|---:|---:|---|",
            ]
            for c in tested:
                r = c.result
                out.append(
                    f"| {c.column.header} | {tested_label(c, s)} | {c.baseline} | {fmt_diff(c.diff)} | "
                    f"{stats.TESTS[r.test]} | {r.n} | {fmt_p(r.p)} | {_md_escape(c.verdict)} |"
                )
            out.append("")
        if untested:
            out += [untested_line(untested), ""]
        out += _md_against(board, sb)
    if board.gap is not None:
        out += gap_markdown(board.gap)
    if board.missing_models:
        out += [
            f"Models of this experiment without complete runs here (not available yet, or not run): "
            f"{', '.join(board.missing_models)}.",
            "",
        ]
    if board.incomplete:
        out += ["Incomplete runs (no results.json; listed, not counted):", ""]
        out += [f"- `{p}`" for p in board.incomplete]
        out.append("")
    return "\n".join(out)


def _md_against(board: Leaderboard, sb: SectionBoard) -> list[str]:
    """A section's significance tables against the reference (one per table), under one paragraph."""
    out: list[str] = []
    for table in (t for t in sb.tables if t.against):
        out += [f"### {against_title(board, table, not out)}", ""]
        if len(out) == 2:
            out += [against_legend(board, sb), ""]
        head = against_header(board, sb, table)
        out += ["| " + " | ".join(head) + " |", "|---:|---|---:|" + "---:|" * (len(head) - 3)]
        for row in against_rows(table):  # a loop over table rows
            peers = row.peers
            assert peers is not None
            seeds = len(row.group.runs)
            cells = [
                "-" if peers.rank is None else str(peers.rank),
                row.label,
                str(seeds),
                fmt_value(peers.score, seeds),
                *(fmt_versus(c, row, _md_escape(c.mark)) for c in row.cells),
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        line = against_untested(table, board)
        if line:
            out += [line, ""]
    return out


def _md_escape(text: str) -> str:
    return text.replace("*", "\\*")


def _md_cell(c: Cell, text: str) -> str:
    if c.rank == 1:
        text = f"**{text}**"
    elif c.rank == 2:
        text = f"<u>{text}</u>"
    return text + _md_escape(c.mark)


def _md_table(sb: SectionBoard, table: Table, with_extra: bool) -> list[str]:
    head = ["model", "seeds"]
    align = ["---", "---:"]
    for col in table.columns:
        head.append(col.header)
        align.append("---:")
        if table.show_relaimpr:
            head.append("RelaImpr")
            align.append("---:")
    if with_extra:
        head += ["train samples/s", "params"]
        align += ["---:", "---:"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for row in table.rows:
        seeds = len(row.group.runs)
        cells = [row.label, str(seeds)]
        for cell in row.cells:
            cells.append(_md_cell(cell, fmt_value(cell, seeds)))
            if table.show_relaimpr:
                cells.append(fmt_relaimpr(cell, row.label == sb.base_label))
        if with_extra:
            cells += [fmt_speed(sb.speed[row.label]), fmt_params(sb.params[row.label])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


CSV_FIELDS = [
    "dataset",
    "section",
    "table",
    "label",
    "model",
    "weighting",
    "variant",
    "task",
    "metric",
    "seeds",
    "n",
    "mean",
    "std",
    "relaimpr_pct",
    "rank",
    "test",
    "compared_with",
    "p_value",
    "mark",
    "note",
    "params",
    "train_samples_per_second",
    "difference",  # the tested cell's mean - compared_with's (against: the mean paired difference)
    "against_rank",  # against: the row's rank within its family (the rows that share its reference)
]


def to_csv(board: Leaderboard, digits: int | None = None) -> str:
    """The long CSV; ``digits`` rounds the floats to that many significant digits (default: exact ``repr``).

    A tested cell names its test, the row it was compared with, the difference, the p-value and the mark: the best
    model's cell against the best baseline, or (``against``) every row's cell against its reference row's.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for sb in board.sections:
        for table in sb.tables:
            comps = {c.column.header: c for c in table.comparisons}
            for row in table.rows:
                g = row.group
                for col, cell in zip(table.columns, row.cells):
                    comp = comps.get(col.header)
                    tested = comp if comp is not None and comp.best == row.label else None
                    test = tested.result if tested else cell.test
                    peers = row.peers
                    note = test.note if test else ""
                    if peers is not None and (peers.is_reference or peers.reference is None):
                        note = "reference" if peers.is_reference else f"no row with {against_text(board.settings)}"
                    diff = tested.diff if tested else cell.diff
                    compared = tested.baseline if tested else (peers.reference or "") if test and peers else ""
                    w.writerow(
                        {
                            "dataset": g.dataset,
                            "section": sb.section.title,
                            "table": table.title,
                            "label": row.label,
                            "model": g.model,
                            "weighting": g.weighting,
                            "variant": json.dumps(g.variant, sort_keys=True) if g.variant else "",
                            "task": col.task,
                            "metric": col.metric,
                            "seeds": " ".join(map(str, g.seeds)),
                            "n": cell.n,
                            "mean": _num(cell.mean, digits),
                            "std": _num(cell.std, digits),
                            "relaimpr_pct": _num(cell.relaimpr, digits),
                            "rank": cell.rank or "",
                            "test": test.test if test else "",
                            "compared_with": compared,
                            "p_value": _num(test.p, digits) if test else "",
                            "mark": cell.mark,
                            "note": note,
                            "params": sb.params[row.label] if sb.params[row.label] is not None else "",
                            "train_samples_per_second": _num(sb.speed[row.label], digits),
                            "difference": _num(diff, digits),
                            "against_rank": peers.rank if peers is not None and peers.rank is not None else "",
                        }
                    )
    return buf.getvalue()


def _num(v: float | None, digits: int | None = None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return repr(float(v)) if digits is None else f"{float(v):.{digits}g}"


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX_ESCAPES[m.group()], text)


def _tex_cell(c: Cell, seeds: int) -> str:
    if c.empty:
        return "n/a"
    body = f"{c.mean:.4f}" if c.n == 1 else f"{c.mean:.4f} \\pm {c.std:.4f}"
    if c.rank == 1:
        text = f"$\\mathbf{{{body}}}$"
    elif c.rank == 2:
        text = f"\\underline{{${body}$}}"
    else:
        text = f"${body}$"
    if c.mark:
        text += f"$^{{{c.mark}}}$"
    if c.n < seeds:
        text += f" ($n={c.n}$)"
    return text


def to_latex(board: Leaderboard) -> str:
    """One booktabs table per section and table (needs ``\\usepackage{booktabs}``)."""
    s = board.settings
    out = [f"% {s.title}: generated by mtlbench-report. Needs \\usepackage{{booktabs}}.", f"% {legend(board, 'tex')}"]
    for sb in board.sections:
        for table in sb.tables:
            extra = table is sb.tables[0]
            ncols = len(table.columns) * (2 if table.show_relaimpr else 1) + (2 if extra else 0)
            head = ["Model", "Seeds"]
            for col in table.columns:
                head.append(tex_escape(col.header))
                if table.show_relaimpr:
                    head.append("RelaImpr")
            if extra:
                head += ["Samples/s", "Params"]
            caption = (
                f"{tex_escape(s.title)}: {tex_escape(sb.section.title)}, {tex_escape(table.title)} "
                f"({s.split}). Mean $\\pm$ std over seeds; best in bold, second underlined"
            )
            if table.show_relaimpr:
                base = s.model_labels.get(s.base or "", s.base or "")
                caption += f"; RelaImpr against {tex_escape(base)} (STAN Eq. 15-16)"
            if any(c.result.p is not None for c in table.comparisons):
                caption += (
                    f"; $^{{*}}$ p $<$ 0.05, $^{{**}}$ p $<$ 0.01 ({stats.TESTS[s.test]} of "
                    f"{tex_escape(tested_what(s))})"
                )
            elif any(c.test is not None and c.test.p is not None for row in table.rows for c in row.cells):
                caption += (
                    f"; $^{{*}}$ p $<$ 0.05, $^{{**}}$ p $<$ 0.01 ({stats.TESTS[s.test]} of "
                    f"{tex_escape(against_who(board))}, in either direction)"
                )
            caption += "."
            out += [
                "",
                "\\begin{table}[t]",
                "\\centering",
                "\\small",
                f"\\caption{{{caption}}}",
                f"\\begin{{tabular}}{{lr{'r' * ncols}}}",
                "\\toprule",
                " & ".join(head) + " \\\\",
                "\\midrule",
            ]
            for row in table.rows:
                seeds = len(row.group.runs)
                cells = [tex_escape(row.label), str(seeds)]
                for cell in row.cells:
                    cells.append(_tex_cell(cell, seeds))
                    if table.show_relaimpr:
                        cells.append(tex_escape(fmt_relaimpr(cell, row.label == sb.base_label)))
                if extra:
                    cells += [
                        fmt_speed(sb.speed[row.label]).replace(",", "{,}"),
                        fmt_params(sb.params[row.label]).replace(",", "{,}"),
                    ]
                out.append(" & ".join(cells) + " \\\\")
            out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        out += _tex_against(board, sb)
    return "\n".join(out) + "\n"


def _tex_versus(cell: Cell, row: Row) -> str:
    head, tail = versus_parts(cell, row)
    mark = f"$^{{{cell.mark}}}$" if cell.mark else ""
    return f"{tex_escape(head)}{mark}{tex_escape(tail)}"


def _tex_against(board: Leaderboard, sb: SectionBoard) -> list[str]:
    """A section's significance tables against the reference, as booktabs tables (one per table)."""
    out: list[str] = []
    for i, table in enumerate(t for t in sb.tables if t.against):
        title = against_title(board, table, i == 0)
        caption = f"{tex_escape(board.settings.title)}: {tex_escape(sb.section.title)}, {tex_escape(title)}. "
        caption += tex_escape(against_legend(board, sb, "tex")).replace("<", "$<$")
        line = against_untested(table, board)
        if line:
            caption += " " + tex_escape(line)
        head = [tex_escape(h).replace("Δ", "$\\Delta$") for h in against_header(board, sb, table)]
        out += [
            "",
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{{caption}}}",
            f"\\begin{{tabular}}{{rlrr{'r' * len(table.columns)}}}",
            "\\toprule",
            " & ".join(head) + " \\\\",
            "\\midrule",
        ]
        for row in against_rows(table):  # a loop over table rows
            peers = row.peers
            assert peers is not None
            seeds = len(row.group.runs)
            cells = [
                "-" if peers.rank is None else str(peers.rank),
                tex_escape(row.label),
                str(seeds),
                _tex_cell(Cell(peers.score.mean, peers.score.std, peers.score.n), seeds),  # no bold, no mark
                *(_tex_versus(c, row) for c in row.cells),
            ]
            out.append(" & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return out


NULLABLE = ("base", "candidate", "tasks", "models", "grid", "against")


def settings_from(**kwargs: Any) -> ReportSettings:
    """ReportSettings from config values (lists/dicts may be OmegaConf containers; None keeps a default)."""
    from omegaconf import OmegaConf

    clean = {}
    for k, v in kwargs.items():
        if OmegaConf.is_config(v):
            v = OmegaConf.to_container(v, resolve=True)
        if v is not None or k in NULLABLE:
            clean[k] = v
    unknown = set(clean) - set(ReportSettings.__dataclass_fields__)
    if unknown:
        raise ConfigError(
            f"unknown report setting(s) {sorted(unknown)}; known: {sorted(ReportSettings.__dataclass_fields__)}"
        )
    for k in ("base", "candidate", "against"):
        if clean.get(k) in ("none", "null", ""):
            clean[k] = None
    return ReportSettings(**clean)
