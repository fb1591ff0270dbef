"""Terminal output: one run's line and metrics, and mean ± std over seeds for a sweep (one metric per task by
default; the written report, :mod:`mtlbench.report.write`, has every table)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtlbench.report.collect import NAMED_KEYS, comparable_config
from mtlbench.report.stats import format_mean_std, mean_std

if TYPE_CHECKING:
    from mtlbench.report.tables import Leaderboard

METRICS = ("auc", "gauc", "ndcg@5")


def headline_metric(results: dict[str, Any]) -> str:
    """The metric of a run's one-line summary: its monitored metric (``monitor``), else AUC."""
    return str((results.get("config") or {}).get("monitor") or "auc")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def run_name(results: dict[str, Any]) -> str:
    """``model`` (``model + weighting`` unless the weighting is ``equal``) and the seed."""
    model = (
        results["model"]
        if results.get("weighting", "equal") == "equal"
        else f"{results['model']} + {results['weighting']}"
    )
    return f"{model} seed {results['seed']}"


def run_line(results: dict[str, Any], run_dir: str | Path, seconds: float) -> str:
    """One line per finished run: its name, the test value of the headline metric per task, the wall time and the
    run directory, e.g. ``mmoe seed 0 · test auc: click 0.7012, purchase 0.7301 · 41.2 s · outputs/...``."""
    metric = headline_metric(results)
    test = results["metrics"].get("test") or {}
    values = ", ".join(
        f"{task} {vals[metric]:.4f}" if isinstance(vals.get(metric), float | int) else f"{task} n/a"
        for task, vals in test.items()
    )
    return f"{run_name(results)} · test {metric}: {values or 'n/a'} · {_duration(seconds)} · {run_dir}"


def format_run(results: dict[str, Any], metrics: tuple[str, ...] = METRICS) -> str:
    """A single run's validation and test metrics per task (the end of ``mtlbench`` without a sweep)."""
    rows = [
        f"{results['model']} on {results['dataset']} (seed {results['seed']}), "
        f"{results['train']['samples_per_second']:,.0f} train samples/s"
    ]
    for split in ("valid", "test"):
        for task, vals in results["metrics"][split].items():
            cells = "  ".join(f"{m}={vals[m]:.4f}" for m in metrics if vals.get(m) is not None)
            rows.append(f"  {split:5s} {task:12s} {cells}")
    return "\n".join(rows)


def collect(root: str | Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """All complete runs under ``root`` and the run directories that have no results.json."""
    from mtlbench.report.collect import find_runs

    runs, incomplete = find_runs([root])
    return [r.results for r in runs], incomplete


def mean_std_table(runs: list[dict[str, Any]], split: str = "test", metrics: tuple[str, ...] | None = None) -> str:
    """Markdown-style table: a row per group of runs that differ only in the seed (the report's grouping,
    ``comparable_config``), mean ± std over seeds per task and metric (default: one metric per task, the runs'
    monitored metric). The weighting column is shown when it differs between rows; a ``setting`` column, when
    rows of the same model differ in other config values, names those values (explained under the table)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[json.dumps(comparable_config(r["config"]), sort_keys=True, default=str)].append(r)
    if not groups:
        return "(no complete runs)"
    if metrics is None:
        metrics = tuple(dict.fromkeys(headline_metric(r) for r in runs))
    configs = {key: json.loads(key) for key in groups}

    def setting(key: str) -> str:
        """The values in which this group differs from the other groups of the same model and weighting."""
        c = configs[key]
        peers = [o for o in configs.values() if all(o.get(k) == c.get(k) for k in NAMED_KEYS)]
        keys = sorted({k for o in peers for k in (*o, *c) if o.get(k) != c.get(k) and k not in NAMED_KEYS})
        return ", ".join(f"{k}={c.get(k)}" for k in keys)

    settings = {key: setting(key) for key in groups}
    show_setting = any(settings.values())
    show_weighting = len({rs[0]["weighting"] for rs in groups.values()}) > 1
    tasks = list(next(iter(groups.values()))[0]["metrics"][split])
    head = ["dataset", "model"] + (["weighting"] if show_weighting else []) + (["setting"] if show_setting else [])
    head += ["seeds"] + [f"{t} {m}" for t in tasks for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, rs in groups.items():
        cells = [rs[0]["dataset"], rs[0]["model"]]
        cells += [rs[0]["weighting"]] if show_weighting else []
        cells += [settings[key] or "–"] if show_setting else []
        cells.append(str(len(rs)))
        for t in tasks:
            for m in metrics:
                vals = np.array([r["metrics"][split].get(t, {}).get(m) for r in rs], dtype=float)
                mean, std, n = mean_std(vals[~np.isnan(vals)])
                cells.append(format_mean_std(mean, std, n) if n else "–")
        lines.append("| " + " | ".join(cells) + " |")
    if show_setting:
        lines.append("setting: the config values in which rows of the same model differ (all else is equal)")
    return "\n".join(lines)


def board_summary(board: Leaderboard, metric: str | None = None) -> str:
    """A leaderboard as the terminal shows it at the end of a sweep: per section (data), a row per model with
    one metric per task (default: the report's first metric), mean ± std over seeds; the written report has
    every table, RelaImpr and the significance tests."""
    from mtlbench.report.tables import fmt_value

    metric = metric or (board.settings.metrics[0] if board.settings.metrics else "auc")
    out: list[str] = []
    for sb in board.sections:
        table = next((t for t in sb.tables if any(c.metric == metric for c in t.columns)), None)
        if table is None:
            continue
        cols = [(i, c) for i, c in enumerate(table.columns) if c.metric == metric]
        if len(board.sections) > 1:
            out.append(f"{sb.section.title}:")
        head = ["model", "seeds"] + [c.header for _, c in cols]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in table.rows:
            seeds = len(row.group.runs)
            cells = [row.label, str(seeds)] + [fmt_value(row.cells[i], seeds) for i, _ in cols]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) if out else "(no complete runs)"
