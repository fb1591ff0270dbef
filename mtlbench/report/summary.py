"""Terminal tables: one run's metrics, and mean ± std over seeds for a sweep."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

METRICS = ("auc", "gauc", "ndcg@5")


def format_run(results: dict[str, Any], metrics: tuple[str, ...] = METRICS) -> str:
    rows = [f"{results['model']} on {results['dataset']} (seed {results['seed']}), "
            f"{results['train']['samples_per_second']:,.0f} train samples/s"]
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


def mean_std_table(runs: list[dict[str, Any]], split: str = "test",
                   metrics: tuple[str, ...] = METRICS) -> str:
    """Markdown-style table: a row per (dataset, model, weighting), mean ± std over seeds per task metric."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["dataset"], r["model"], r["weighting"])].append(r)
    if not groups:
        return "(no complete runs)"
    tasks = list(next(iter(groups.values()))[0]["metrics"][split])
    head = ["dataset", "model", "weighting", "seeds"] + [f"{t} {m}" for t in tasks for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (ds, model, weighting), rs in groups.items():
        cells = [ds, model, weighting, str(len(rs))]
        for t in tasks:
            for m in metrics:
                vals = np.array([r["metrics"][split][t].get(m) for r in rs], dtype=float)
                vals = vals[~np.isnan(vals)]
                cells.append(f"{vals.mean():.4f} ± {vals.std(ddof=1) if len(vals) > 1 else 0.0:.4f}"
                             if len(vals) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class PrintSummary(Callback):
    """Hydra callback: after a multirun, print the mean ± std table of its test metrics."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        runs, incomplete = collect(config.hydra.sweep.dir)
        sweep = config.hydra.sweep.dir
        print(f"\nTest metrics, mean ± std over seeds ({len(runs)} complete runs in {sweep}):")
        print(mean_std_table(runs))
        if incomplete:
            print(f"incomplete runs (no results.json, not counted): {', '.join(map(str, incomplete))}")
