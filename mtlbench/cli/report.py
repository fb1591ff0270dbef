"""``mtlbench-report RUN_OR_SWEEP_DIR... --out DIR``: leaderboard.md/.csv/.tex/.html from finished runs.

Every ``results.json`` under the given directories is a complete run; a run directory without one is
listed as incomplete and never counted. Runs that differ only in their seed form one row. With ``--gap-metrics``,
the candidate - base gap per data cell also goes to gap.csv and gap_<metric>.png. It prints the paths written
(``--echo`` also prints the Markdown).

``mtlbench-report leaderboards [--root leaderboards] [--check]`` regenerates the committed leaderboard pages
(:mod:`mtlbench.report.leaderboards`).
"""

from __future__ import annotations

import argparse
import sys

from mtlbench.errors import MtlbenchError
from mtlbench.report import stats
from mtlbench.report.collect import IGNORED_KEYS
from mtlbench.report.tables import ReportSettings
from mtlbench.report.write import write_report


def _list(text: str) -> list[str]:
    return [] if text.lower() in ("", "none") else [s.strip() for s in text.split(",") if s.strip()]


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise MtlbenchError(f"{flag} expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtlbench-report",
        description="Turn run and sweep directories into paper-style leaderboards "
        "(leaderboard.md, .csv, .tex and a self-contained .html).",
    )
    p.add_argument("dirs", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="run directories or sweep directories")
    p.add_argument("--out", required=True, help="directory for the leaderboard files")
    p.add_argument(
        "--metrics",
        default="auc,gauc,ndcg@5",
        help="overall columns per task, comma-separated (default: auc,gauc,ndcg@5)",
    )
    p.add_argument(
        "--scenario-metrics",
        default="auc",
        help="metrics with a per-scenario table when runs report them (default: auc; 'none' for none)",
    )
    p.add_argument(
        "--stage-metrics",
        default="auc",
        help="metrics with a per-stage table when runs report them, e.g. auc@stage=Wander on the simulator "
        "(default: auc; 'none' for none)",
    )
    p.add_argument(
        "--rule-stage-metrics",
        default="auc",
        help="metrics with a per-rule-stage table (STAN section 2.1's stages, e.g. auc@rule_stage=Wander: the "
        "Stage_Single comparison) when runs report them (default: auc; 'none' for none)",
    )
    p.add_argument("--split", default="test", choices=("test", "valid"), help="which split (default: test)")
    p.add_argument(
        "--base",
        default="single_task",
        help="base model of RelaImpr, STAN Eq. 15-16 (default: single_task; 'none' for no RelaImpr)",
    )
    p.add_argument(
        "--test",
        default="ttest",
        choices=sorted(stats.TESTS),
        help="significance test of the best model against the best baseline: paired t-test "
        "(STAN) or Mann-Whitney U (SFPNet); default: ttest",
    )
    p.add_argument(
        "--candidate",
        default=None,
        help="test this model (a label, model+weighting or model) against the best other model (default: the best "
        "model per column); the gap's candidate",
    )
    p.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="COORDINATE=REFERENCE",
        help="test every row against the row that differs only in this coordinate, set to REFERENCE, paired by "
        "seed, e.g. weighting=equal: each weighting against equal weighting of the same model (repeatable; "
        "replaces the test of the best model against the best baseline)",
    )
    p.add_argument("--tasks", default="", help="tasks to show, comma-separated (default: all)")
    p.add_argument(
        "--task-label",
        action="append",
        default=[],
        metavar="TASK=LABEL",
        help="display name of a task, e.g. purchase=CTCVR (repeatable)",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="MODEL=LABEL",
        help="display name of a model, e.g. single_task=MLP_Single, or of a model with one weighting, e.g. "
        "stan+equal=STAN (equal weighting) (repeatable)",
    )
    p.add_argument(
        "--models", default="", help="row order, comma-separated model names (default: base first, then by name)"
    )
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="KEY",
        help="another config key (glob) that does not separate groups (repeatable)",
    )
    p.add_argument(
        "--gap-metrics",
        default="none",
        help="candidate - base per data cell and task, e.g. auc,gauc: paired t over seeds and, for AUC and GAUC, a "
        "paired bootstrap over test users; needs --base and --candidate (default: none)",
    )
    p.add_argument(
        "--gap-stage-metrics",
        default="none",
        help="the gap's per-stage breakdown, e.g. auc for auc@stage=<name> (default: none)",
    )
    p.add_argument(
        "--grid",
        default="",
        help="config keys of the gap's cells (heat-map rows, then columns), e.g. "
        "dataset.task_conflict.Wander,dataset.label_noise.New (default: the dataset settings that differ)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples of the user bootstrap (0: none; 1000)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the user bootstrap (default: 0)")
    p.add_argument("--confidence", type=float, default=0.95, help="level of the gap's intervals (default: 0.95)")
    p.add_argument("--title", default="Leaderboard")
    p.add_argument("--no-html", action="store_true", help="skip leaderboard.html (and its plots)")
    p.add_argument("--echo", action="store_true", help="also print the Markdown report to stdout")
    p.add_argument("--quiet", action="store_true", help="print only the one-line summary (not the paths written)")
    return p


def leaderboards_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtlbench-report leaderboards",
        description="Regenerate every leaderboard page (README.md, leaderboard.csv) under ROOT from its page.yaml and "
        "runs/*/results.json, and ROOT/index.html across the pages.",
    )
    p.add_argument("--root", default="leaderboards", help="the leaderboards folder (default: leaderboards)")
    p.add_argument(
        "--check", action="store_true", help="write nothing; list the generated files that differ and exit 1 if any"
    )
    return p


def leaderboards_main(argv: list[str]) -> int:
    """``mtlbench-report leaderboards``: regenerate (or ``--check``) the pages under ``--root``."""
    from mtlbench.report import leaderboards

    args = leaderboards_parser().parse_args(argv)
    try:
        if args.check:
            stale = leaderboards.check(args.root)
            for line in stale:
                print(line)
            print(f"{len(stale)} generated file(s) differ under {args.root}", file=sys.stderr)
            return 1 if stale else 0
        for path in leaderboards.regenerate(args.root):
            print(path)
    except MtlbenchError as e:
        print(f"mtlbench-report leaderboards: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["leaderboards"] and "--out" not in argv:  # the subcommand (a run directory needs --out)
        return leaderboards_main(argv[1:])
    args = parser().parse_args(argv)
    try:
        settings = ReportSettings(
            metrics=_list(args.metrics),
            scenario_metrics=_list(args.scenario_metrics),
            stage_metrics=_list(args.stage_metrics),
            rule_stage_metrics=_list(args.rule_stage_metrics),
            split=args.split,
            base=None if args.base.lower() in ("", "none") else args.base,
            test=args.test,
            candidate=args.candidate,
            against=_pairs(args.against, "--against") or None,
            tasks=_list(args.tasks) or None,
            task_labels=_pairs(args.task_label, "--task-label"),
            model_labels=_pairs(args.label, "--label"),
            models=_list(args.models) or None,
            ignore=[*IGNORED_KEYS, *args.ignore],
            title=args.title,
            gap_metrics=_list(args.gap_metrics),
            gap_stage_metrics=_list(args.gap_stage_metrics),
            grid=_list(args.grid) or None,
            bootstrap=args.bootstrap,
            bootstrap_seed=args.bootstrap_seed,
            confidence=args.confidence,
        )
        board = write_report(args.dirs, args.out, settings, html=not args.no_html, echo=args.echo)
    except MtlbenchError as e:
        print(f"mtlbench-report: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        for path in board.files:
            print(path)
    print(f"{board.runs} complete run(s), {len(board.incomplete)} incomplete; written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
