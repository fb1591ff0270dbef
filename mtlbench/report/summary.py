"""Terminal tables: one run's metrics, and mean ± std over seeds for a sweep."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mtlbench.report.collect import NAMED_KEYS, comparable_config

METRICS = ("auc", "gauc", "ndcg@5")


def format_run(results: dict[str, Any], metrics: tuple[str, ...] = METRICS) -> str:
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


def mean_std_table(runs: list[dict[str, Any]], split: str = "test", metrics: tuple[str, ...] = METRICS) -> str:
    """Markdown-style table: a row per group of runs that differ only in the seed (the report's grouping,
    ``comparable_config``), mean ± std over seeds per task metric; ``setting`` names the values that
    separate groups of the same model."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[json.dumps(comparable_config(r["config"]), sort_keys=True, default=str)].append(r)
    if not groups:
        return "(no complete runs)"
    configs = {key: json.loads(key) for key in groups}
    varying = sorted(
        {
            k
            for c in configs.values()
            for k, v in c.items()
            if any(o.get(k) != v for o in configs.values()) and k not in NAMED_KEYS
        }
    )
    tasks = list(next(iter(groups.values()))[0]["metrics"][split])
    head = ["dataset", "model", "weighting", "setting", "seeds"] + [f"{t} {m}" for t in tasks for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, rs in groups.items():
        setting = ", ".join(f"{k}={configs[key].get(k)}" for k in varying if not k.startswith("model."))
        cells = [rs[0]["dataset"], rs[0]["model"], rs[0]["weighting"], setting or "–", str(len(rs))]
        for t in tasks:
            for m in metrics:
                vals = np.array([r["metrics"][split].get(t, {}).get(m) for r in rs], dtype=float)
                vals = vals[~np.isnan(vals)]
                cells.append(
                    f"{vals.mean():.4f} ± {vals.std(ddof=1) if len(vals) > 1 else 0.0:.4f}" if len(vals) else "–"
                )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
