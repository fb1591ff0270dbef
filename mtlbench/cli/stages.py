"""Stage recovery on finished runs: rebuild each run from its config and best checkpoint, print the analysis.

``python -m mtlbench.cli.stages RUN_DIR ... [--max-users N] [--tsne-users N] [--no-shift] [--shift-representation
R]``: any model with towers (e.g. vanilla ``ple`` for the STAN paper's STAN-vs-PLE comparison); the stage recovery
and the stage shift over time (STAN Fig. 7; on STAN's y~, else on the backbone, unless ``--shift-representation``
says otherwise; ``stage_shift.png`` in the run directory); see :mod:`mtlbench.analysis.stages`.

``python -m mtlbench.cli.stages --stage-single SWEEP_DIR ...``: STAN's Stage_Single (Fig. 5) table from finished
runs (``experiment=stan_stage_single`` prints it at the end of its sweep): each run with a ``subset`` (one
stage's rows, :mod:`mtlbench.data.subset`) beside the run with the same config and no ``subset`` (the all-data
model) on the same test rows: the latter's ``auc@rule_stage=<stage>`` (``auc@stage=<stage>`` for a
``true_stage`` subset), mean ± std over seeds, the mean paired difference and a paired t-test over the seeds both
have.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mtlbench.analysis.stages import SHIFT_REPRESENTATIONS, stage_analysis, stage_shift
from mtlbench.cli.errors import USER_ERRORS, one_line
from mtlbench.errors import ConfigError
from mtlbench.report import stats
from mtlbench.report.collect import Run, comparable_config, find_runs
from mtlbench.rundir import CONFIG_FILE, RESULTS_FILE
from mtlbench.training.run import build_components

#: a ``subset`` key -> the group key of the per-stage metric that evaluates the all-data model on that stage's rows
SUBSET_METRIC_KEYS = {"rule_stage": "rule_stage", "true_stage": "stage"}
STAGE_SINGLE_FILE = "stage_single.md"


def analyse_run(
    run_dir: str | Path, shift: bool = True, shift_representation: str | None = None, **settings: Any
) -> dict[str, Any]:
    """Rebuild a finished run from its ``config.yaml`` and best checkpoint and run :func:`stage_analysis` (and,
    with ``shift``, :func:`stage_shift` on ``shift_representation``; None: STAN's ``preference``, else
    ``backbone``)."""
    if shift_representation is not None and shift_representation not in SHIFT_REPRESENTATIONS:
        raise ConfigError(
            f"shift representation must be one of {', '.join(SHIFT_REPRESENTATIONS)}, got {shift_representation!r}"
        )
    run_dir = Path(run_dir)
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    cfg = OmegaConf.load(run_dir / CONFIG_FILE)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{run_dir / CONFIG_FILE}: not a run config (expected a mapping, got a list)")
    dm, module = build_components(cfg)
    ckpt = results["train"].get("best_checkpoint")
    if ckpt:
        state = torch.load(run_dir / ckpt, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    out = stage_analysis(module, dm, run_dir, **settings)
    if shift:
        if shift_representation is None:
            shift_representation = "preference" if getattr(module.model, "outputs_preference", False) else "backbone"
        keep = {k: settings[k] for k in ("max_users", "stage_field") if k in settings}
        out.update(stage_shift(module, dm, run_dir, shift_representation, **keep))
    return out


# -- Stage_Single (STAN Fig. 5) ----------------------------------------------------------------------------------
def stage_single_rows(paths: list[Path], metric: str = "auc", split: str = "test") -> list[dict[str, Any]]:
    """One row per (Stage_Single runs of one config and stage, task): the stage models' ``metric`` on their
    stage's test rows beside the all-data runs' (same config without ``subset``) on the same rows, over the seeds
    both have (all seeds of each when they share none)."""
    runs, _ = find_runs(paths)
    everything: dict[tuple, list[Run]] = {}
    singles: dict[tuple, list[Run]] = {}
    for r in runs:
        cfg = comparable_config(r.results.get("config") or {})
        subset = tuple(sorted((k.split(".", 1)[1], v) for k, v in cfg.items() if k.startswith("subset.")))
        rest = tuple(sorted((k, v) for k, v in cfg.items() if not k.startswith("subset.")))
        if not subset:
            everything.setdefault(rest, []).append(r)
        elif len(subset) == 1 and subset[0][0] in SUBSET_METRIC_KEYS:
            singles.setdefault((rest, subset), []).append(r)
    rows = []
    for (rest, subset), stage_runs in singles.items():
        prefix = f"{metric}@{SUBSET_METRIC_KEYS[subset[0][0]]}="
        results = stage_runs[0].results
        for task, values in results["metrics"].get(split, {}).items():
            keys = [k for k in values if k.startswith(prefix)]
            if len(keys) != 1:  # a stage run's test rows are one stage's: one key (none without the metric)
                continue
            single = _by_seed(stage_runs, split, task, keys[0])
            full = _by_seed(everything.get(rest, []), split, task, keys[0])
            paired = sorted(set(single) & set(full))
            if paired:  # the seeds both have (the experiment runs the same seeds for both)
                single, full = {k: single[k] for k in paired}, {k: full[k] for k in paired}
            test = stats.significance(single, full, "ttest")
            rows.append(
                {
                    "model": results["model"],
                    "weighting": results["weighting"],
                    "subset": subset[0][0],
                    "stage": keys[0][len(prefix) :],
                    "task": task,
                    "metric": metric,
                    "stage_single": stats.mean_std(list(single.values())),
                    "all_data": stats.mean_std(list(full.values())),
                    "difference": sum(single[s] - full[s] for s in paired) / len(paired) if paired else None,
                    "p": test.p,
                    "paired_seeds": len(paired),
                }
            )
    return rows


def _by_seed(runs: list[Run], split: str, task: str, key: str) -> dict[int, float]:
    out = {}
    for r in runs:
        v = r.metric(split, task, key)
        if v is not None and v == v:
            out[r.seed] = v
    return out


def stage_single_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`stage_single_rows` as a Markdown table."""

    def ms(v: tuple[float, float, int]) -> str:
        mean, std, n = v
        return "" if n == 0 else f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"

    head = [
        "| model | stage | task | Stage_Single | all data, same rows | Δ (paired) | p (paired t) | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def num(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    body = [
        f"| {r['model']} + {r['weighting']} | {r['subset']}={r['stage']} | {r['task']} | {ms(r['stage_single'])} | "
        f"{ms(r['all_data'])} | {num(r['difference'], '+.4f')} | {num(r['p'], '.3g')} | {r['paired_seeds']} |"
        for r in rows
    ]
    return "\n".join(head + body) if body else "no Stage_Single runs (runs with a subset) found"


class StageSingleReport(Callback):
    """Hydra callback (``experiment=stan_stage_single``): after the sweep, print the Stage_Single table and write it
    to ``<sweep dir>/stage_single.md``."""

    def __init__(self, metric: str = "auc") -> None:
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        md = stage_single_markdown(stage_single_rows([sweep], self.metric))
        (sweep / STAGE_SINGLE_FILE).write_text(md + "\n")
        print(f"\nStage_Single (STAN Fig. 5), test {self.metric}: {sweep / STAGE_SINGLE_FILE}\n{md}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mtlbench.cli.stages", description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument(
        "--stage-single", action="store_true", help="print the Stage_Single table of the runs under the directories"
    )
    parser.add_argument("--max-users", type=int, default=5000)
    parser.add_argument("--tsne-users", type=int, default=0, help="0 = no picture")
    parser.add_argument("--no-shift", action="store_true", help="leave out the stage shift over time (Fig. 7)")
    parser.add_argument(
        "--shift-representation",
        choices=SHIFT_REPRESENTATIONS,
        default=None,
        help="clustered for the stage shift (default: STAN's preference, else backbone)",
    )
    args = parser.parse_args(argv)
    if args.stage_single:
        try:
            print(stage_single_markdown(stage_single_rows(args.run_dirs)))
        except USER_ERRORS as ex:
            sys.stderr.write(f"python -m mtlbench.cli.stages: error: {one_line(ex)}\n")
            sys.exit(2)
        return
    for d in args.run_dirs:
        try:
            res = analyse_run(
                d,
                shift=not args.no_shift,
                shift_representation=args.shift_representation,
                max_users=args.max_users,
                tsne_users=args.tsne_users,
            )
        except USER_ERRORS as ex:
            sys.stderr.write(f"python -m mtlbench.cli.stages: error: {d}: {one_line(ex)}\n")
            sys.exit(2)
        print(json.dumps({"run": str(d), **res}, indent=1))


if __name__ == "__main__":
    main()
