"""The ``mtlbench-data`` command: describe, prepare and download datasets.

    mtlbench-data describe movielens path=/data/ml-100k scenario=age_bucket
    mtlbench-data prepare census_income path=/data/census cache_dir=/scratch/mtlbench
    mtlbench-data download movielens-100k --dest /data

``key=value`` arguments are Hydra overrides of the dataset's config group (``path=...`` is
``dataset.path=...``; ``split.method=random`` too); ``cache_dir=`` and ``seed=`` are the run's top-level
keys. The config is composed exactly as ``mtlbench`` composes it, so ``describe`` shows the data and the
splits a run with the same overrides would train on. User errors print ``mtlbench-data: error: <one line>``
and exit 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np

from mtlbench.cli.errors import USER_ERRORS, one_line
from mtlbench.errors import ConfigError

TOP_LEVEL = ("cache_dir", "seed")


def dataset_overrides(dataset: str, args: list[str]) -> list[str]:
    """``key=value`` -> ``dataset.key=value`` (top-level run keys and ``dataset.``/``+``/``~`` forms kept)."""
    out = [f"dataset={dataset}"]
    for a in args:
        if "=" not in a and not a.startswith("~"):
            raise ConfigError(f"expected key=value, got {a!r}")
        prefix = a[0] if a[0] in "+~" else ""
        body = a[len(prefix) :]
        key = body.split("=", 1)[0]
        if key in TOP_LEVEL or key.startswith("dataset.") or key.startswith("hydra."):
            out.append(a)
        else:
            out.append(f"{prefix}dataset.{body}")
    return out


def compose(dataset: str, args: list[str]):
    """The run config ``mtlbench dataset=<dataset> <overrides>`` would use."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from mtlbench.config import register_configs

    register_configs()
    with initialize_config_module("mtlbench.configs", version_base="1.3"):
        return hydra_compose("train", overrides=dataset_overrides(dataset, args))


def dataset_factory(name: str) -> Any:
    """The registered dataset class, importing only the dataset modules when it is a built-in one.

    ``DATASETS.get`` imports every plugin, models included (torch: ~250 MB of memory that preparing data
    does not need); built-in datasets are found without it, anything else through the full registry.
    """
    from mtlbench.registry import DATASETS, import_submodules

    import_submodules("mtlbench.datasets")
    return DATASETS.peek(name) or DATASETS.get(name)


def dataset_source(cfg) -> tuple[str, Any, dict]:
    """(registered name, the DatasetSource, split settings) of a composed config."""
    from omegaconf import OmegaConf

    from mtlbench.data.source import DATASET_KEYS
    from mtlbench.factory import check_settings

    ds = cast("dict[str, Any]", OmegaConf.to_container(cfg.dataset, resolve=True))  # a DictConfig gives a dict
    name = ds["name"]
    settings = {k: v for k, v in ds.items() if k not in DATASET_KEYS}
    missing = [k for k, v in settings.items() if v == "???"]
    if missing:
        raise ConfigError(f"dataset {name!r} needs {', '.join(f'{k}=...' for k in missing)}")
    factory = dataset_factory(name)
    check_settings(factory, "dataset", name, settings)
    return name, factory(**settings), dict(ds.get("split") or {})


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _fmt_time(v: float) -> str:
    """A time value as a date when it looks like unix seconds or milliseconds, else as is."""
    if 1e11 <= v < 1e14:
        v = v / 1000.0
    elif not 1e8 <= v < 1e11:
        return f"{v:g}"
    return datetime.fromtimestamp(v, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _distinct(ids: np.ndarray, vocab: int) -> int:
    return int(np.count_nonzero(np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab)))


def describe_data(schema, columns: dict[str, np.ndarray], splits: dict[str, np.ndarray]) -> dict[str, Any]:
    """Rows, users, items, time span, label rate per task (overall, per scenario, per split)."""
    n = len(columns[schema.tasks[0]])
    out: dict[str, Any] = {"dataset": schema.name, "rows": n}
    for key, field in (("users", schema.user_field), ("items", schema.item_field)):
        out[key] = _distinct(columns[field], schema.feature(field).vocab_size) if field else None
    if schema.time_field:
        t = np.asarray(columns[schema.time_field])
        out["time"] = {"field": schema.time_field, "min": _fmt_time(float(t.min())), "max": _fmt_time(float(t.max()))}
    scen = np.asarray(columns[schema.scenario_field], dtype=np.int64) if schema.scenario_field else None
    out["scenario"] = (
        {
            "field": schema.scenario_field,
            "count": schema.num_scenarios,
            "rows": np.bincount(scen, minlength=schema.num_scenarios).tolist(),
        }
        if scen is not None
        else None
    )
    if scen is not None and getattr(schema, "scenario_labels", None):
        out["scenario"]["labels"] = list(schema.scenario_labels)
    if getattr(schema, "stats", None):  # what the reader counted, e.g. rows it dropped
        out["stats"] = dict(schema.stats)
    out["features"] = [
        {
            "name": f.name,
            "kind": f.kind,
            "vocab": schema.vocab_of(f) if f.kind != "numeric" else None,
            "role": f.role,
            **({"max_len": f.max_len} if f.kind == "sequence" else {}),
        }
        for f in schema.features
    ]
    tasks = {}
    for t in schema.tasks:
        y = np.asarray(columns[t], dtype=np.float64)
        m = ~np.isnan(y)
        entry: dict[str, Any] = {"labelled": int(m.sum()), "rate": float(y[m].mean()) if m.any() else None}
        if scen is not None:
            cnt = np.bincount(scen[m], minlength=schema.num_scenarios)
            pos = np.bincount(scen[m], weights=y[m], minlength=schema.num_scenarios)
            entry["rate_by_scenario"] = [float(p / c) if c else None for p, c in zip(pos, cnt)]
        entry["rate_by_split"] = {}
        for name, rows in splits.items():
            ys = y[rows]
            ys = ys[~np.isnan(ys)]
            entry["rate_by_split"][name] = float(ys.mean()) if len(ys) else None
        tasks[t] = entry
    out["tasks"] = tasks
    out["task_roles"] = dict(schema.task_roles)
    out["splits"] = {name: int(len(rows)) for name, rows in splits.items()}
    stages = describe_stages(schema, columns)
    if stages is not None:
        out["stages"] = stages
    return out


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC (Mann-Whitney, ties counted half); None without both classes."""
    from scipy.stats import rankdata

    pos = y == 1
    n1 = int(pos.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _none_if_nan(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def describe_stages(schema, columns: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Per reference stage (``schema.stage_field``, an analysis field): rows, the positive rate of every task,
    the oracle AUC of its true logits (analysis field ``true_logit_<task>``), the within-user correlation of
    the true logits between each pair of tasks (each user's mean within the stage removed), and the share of
    rows whose stage differs from the user's previous row (overall, and per stage: rows entering the stage).
    None when the dataset has no stage field."""
    from mtlbench.data.order import Timeline
    from mtlbench.data.schema import true_logit_column

    field = getattr(schema, "stage_field", None)
    if field is None or field not in columns:
        return None
    stage = np.asarray(columns[field], dtype=np.int64)
    labels = list(getattr(schema, "stage_labels", None) or [])
    k = max(len(labels), int(stage.max()) + 1 if len(stage) else 0)
    names = [labels[s] if s < len(labels) else str(s) for s in range(k)]
    out: dict[str, Any] = {"field": field, "labels": names, "rows": np.bincount(stage, minlength=k).tolist()}
    logits = {
        t: np.asarray(columns[true_logit_column(t)], dtype=np.float64)
        for t in schema.tasks
        if true_logit_column(t) in schema.analysis_fields and true_logit_column(t) in columns
    }
    tasks: dict[str, Any] = {}
    for t in schema.tasks:
        y = np.asarray(columns[t], dtype=np.float64)
        m = ~np.isnan(y)
        cnt = np.bincount(stage[m], minlength=k)
        pos = np.bincount(stage[m], weights=y[m], minlength=k)
        entry: dict[str, Any] = {"rate": [float(p / c) if c else None for p, c in zip(pos, cnt)]}
        if t in logits:
            ok = m & np.isfinite(logits[t])
            entry["oracle_auc"] = [_auc(y[ok & (stage == s)], logits[t][ok & (stage == s)]) for s in range(k)]
        tasks[t] = entry
    out["tasks"] = tasks
    user_field = schema.user_field
    if user_field is not None and len(logits) >= 2:
        ok = np.all([np.isfinite(v) for v in logits.values()], axis=0)
        user = np.asarray(columns[user_field], dtype=np.int64)[ok]
        st = stage[ok]
        _, group = np.unique(user * k + st, return_inverse=True)  # (user, stage) groups
        size = np.bincount(group)
        resid = {}
        for t, v in logits.items():  # each user's mean within the stage removed
            x = v[ok]
            resid[t] = x - (np.bincount(group, weights=x) / size)[group]
        corr = {}
        names_t = list(logits)
        for i, a in enumerate(names_t):
            for b in names_t[i + 1 :]:
                ab = np.bincount(st, weights=resid[a] * resid[b], minlength=k)
                aa = np.bincount(st, weights=resid[a] ** 2, minlength=k)
                bb = np.bincount(st, weights=resid[b] ** 2, minlength=k)
                with np.errstate(invalid="ignore", divide="ignore"):
                    corr[f"{a}~{b}"] = [_none_if_nan(v) for v in ab / np.sqrt(aa * bb)]
        out["within_user_corr"] = corr
    if user_field is not None:
        time = columns.get(schema.time_field) if schema.time_field else None
        timeline = Timeline(np.asarray(columns[user_field]), None if time is None else np.asarray(time))
        s_t = stage[timeline.order]
        has_prev = timeline.rank > 0
        prev = np.roll(s_t, 1)
        changed = has_prev & (s_t != prev)
        out["changed"] = float(changed.sum() / max(int(has_prev.sum()), 1))
        n_prev = np.bincount(s_t[has_prev], minlength=k)
        n_changed = np.bincount(s_t[changed], minlength=k)
        out["changed_by_stage"] = [float(c / p) if p else None for c, p in zip(n_changed, n_prev)]
    return out


def format_stages(st: dict[str, Any]) -> list[str]:
    """The lines of ``describe_stages``' output."""

    def num(v: float | None, fmt: str = ".4f") -> str:
        return "-" if v is None else format(v, fmt)

    names = st["labels"]
    total = max(sum(st["rows"]), 1)
    lines = [
        f"stages ({st['field']}): "
        + ", ".join(f"{name} {rows:,} ({rows / total:.1%})" for name, rows in zip(names, st["rows"]))
    ]
    if "changed" in st:
        lines.append(
            f"rows whose stage differs from the user's previous row: {st['changed']:.2%}; entering each stage: "
            + ", ".join(f"{name} {num(v, '.2%')}" for name, v in zip(names, st["changed_by_stage"]))
        )
    tasks = list(st["tasks"])
    oracle = any("oracle_auc" in e for e in st["tasks"].values())
    what = "positive rate / oracle AUC of the true logits" if oracle else "positive rate"
    width = 17 if oracle else 10
    lines.append(f"per stage x task: {what}")
    lines.append("  " + f"{'stage':<10}" + "".join(f"{t:>{width}}" for t in tasks))
    for s, name in enumerate(names):
        cells = []
        for t in tasks:
            e = st["tasks"][t]
            cell = num(e["rate"][s])
            if oracle:
                cell += " / " + (num(e["oracle_auc"][s]) if "oracle_auc" in e else "-")
            cells.append(f"{cell:>{width}}")
        lines.append("  " + f"{name:<10}" + "".join(cells))
    if st.get("within_user_corr"):
        pairs = list(st["within_user_corr"])
        width = max(20, *(len(p) + 2 for p in pairs))
        lines.append("within-user correlation of the true logits (each user's mean in the stage removed):")
        lines.append("  " + f"{'stage':<10}" + "".join(f"{p:>{width}}" for p in pairs))
        for s, name in enumerate(names):
            lines.append(
                "  " + f"{name:<10}" + "".join(f"{num(st['within_user_corr'][p][s], '+.3f'):>{width}}" for p in pairs)
            )
    return lines


def format_description(d: dict[str, Any]) -> str:
    lines = [
        f"dataset {d['dataset']}: {d['rows']:,} rows"
        + (f", {d['users']:,} users" if d.get("users") is not None else "")
        + (f", {d['items']:,} items" if d.get("items") is not None else "")
    ]
    if d.get("time"):
        lines.append(f"time ({d['time']['field']}): {d['time']['min']} .. {d['time']['max']}")
    if d.get("scenario"):
        s = d["scenario"]
        labels = f" ({', '.join(s['labels'])})" if s.get("labels") else ""
        lines.append(f"scenarios ({s['field']}): {s['count']}{labels}, rows per scenario {s['rows']}")
    if d.get("stats"):
        lines.append("input: " + ", ".join(f"{k} {v:,}" for k, v in d["stats"].items()))
    if d.get("cache"):
        lines.append(f"cache: {d['cache']['path']} ({d['cache']['bytes'] / 2**20:,.1f} MiB)")
    lines.append("schema:")
    for f in d["features"]:
        extra = f" max_len={f['max_len']}" if "max_len" in f else ""
        vocab = f"{f['vocab']:>9,}" if f["vocab"] is not None else " " * 9
        lines.append(f"  {f['name']:<28} {f['kind']:<11} {vocab}  {f['role']}{extra}")
    split = d["split"]
    how = split["method"]
    if split["resolved"] != how:
        how += f" -> {split['resolved']}"
    lines.append(
        f"splits ({how}, ratios {split['ratios']}): " + ", ".join(f"{k} {v:,}" for k, v in d["splits"].items())
    )
    if d.get("task_roles"):
        lines.append("task roles: " + ", ".join(f"{r}={t}" for r, t in d["task_roles"].items()))
    lines.append("label rate per task (labelled rows; per split; per scenario):")
    for t, e in d["tasks"].items():
        rate = "-" if e["rate"] is None else f"{e['rate']:.4f}"
        by_split = " ".join(f"{k}={'-' if v is None else f'{v:.4f}'}" for k, v in e["rate_by_split"].items())
        lines.append(f"  {t:<16} {rate} on {e['labelled']:,} rows; {by_split}")
        if "rate_by_scenario" in e:
            lines.append(
                "  "
                + " " * 16
                + " by scenario: "
                + " ".join(f"{i}={'-' if v is None else f'{v:.4f}'}" for i, v in enumerate(e["rate_by_scenario"]))
            )
    if d.get("stages"):
        lines += format_stages(d["stages"])
    return "\n".join(lines)


# -- commands -----------------------------------------------------------------------------------------------
def cmd_describe(args: argparse.Namespace) -> int:
    from mtlbench.data.cache import load_or_build
    from mtlbench.data.splits import make_splits, resolve_method

    cfg = compose(args.dataset, args.overrides)
    name, src, split = dataset_source(cfg)
    schema, columns, path = load_or_build(src, name, cfg.get("cache_dir"), log=not args.json)
    method, ratios = split.get("method", "auto"), tuple(split.get("ratios", (0.8, 0.1, 0.1)))
    splits = make_splits(schema, columns, method, ratios, int(cfg.seed))
    d = describe_data(schema, columns, splits)
    d["split"] = {"method": method, "resolved": resolve_method(schema, method), "ratios": list(ratios)}
    d["cache"] = {"path": str(path), "bytes": dir_size(path)}
    print(json.dumps(d, indent=1) if args.json else format_description(d))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from mtlbench.data.cache import entry_path, prepare_entry

    cfg = compose(args.dataset, args.overrides)
    name, src, _ = dataset_source(cfg)
    if args.force:
        shutil.rmtree(entry_path(src, name, cfg.get("cache_dir")), ignore_errors=True)
    start = time.perf_counter()
    path, meta, existed = prepare_entry(src, name, cfg.get("cache_dir"), log=not args.json)
    seconds = time.perf_counter() - start
    schema = json.loads((path / "schema.json").read_text())
    columns = meta.get("columns") or len(schema["features"])
    report = {
        "dataset": name,
        "cache": str(path),
        "bytes": dir_size(path),
        "rows": meta["rows"],
        "columns": columns,
        "seconds": round(seconds, 3),
        "build_seconds": meta["build_seconds"],
        "rows_per_second": round(meta["rows"] / max(meta["build_seconds"], 1e-9)),
        "already_prepared": existed,
    }
    if schema.get("stats"):  # what the reader counted, e.g. rows it dropped
        report["stats"] = schema["stats"]
    if args.json:
        print(json.dumps(report))
    else:
        what = (
            "already prepared"
            if existed
            else (f"prepared in {meta['build_seconds']:.1f}s ({report['rows_per_second']:,} rows/s)")
        )
        print(f"{name}: {what}: {meta['rows']:,} rows, {columns} columns, {report['bytes'] / 2**20:,.1f} MiB -> {path}")
        if report.get("stats"):
            print("input: " + ", ".join(f"{k} {v:,}" for k, v in report["stats"].items()))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from mtlbench.data.download import download
    from mtlbench.datasets.progress import progress_enabled

    download(
        args.name,
        args.dest or Path.cwd(),
        url=args.url,
        sha256=args.sha256,
        retries=args.retries,
        progress=progress_enabled(),
    )
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
        help="show progress bars (default: when stderr is a terminal)",
    )
    p = argparse.ArgumentParser(
        prog="mtlbench-data", description="Describe, prepare and download datasets.", parents=[common]
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in (
        (
            "describe",
            "schema, rows, users, items, time span, label rates, split sizes; with a stage field (the simulator's "
            "true_stage) rates, oracle AUC and within-user task correlations per stage",
        ),
        ("prepare", "build the cache entry and report its size and time"),
    ):
        c = sub.add_parser(name, help=helptext, parents=[common])
        c.add_argument("dataset", help="a dataset config name (configs/dataset/<name>.yaml)")
        c.add_argument("overrides", nargs="*", help="key=value overrides of the dataset config, e.g. path=...")
        c.add_argument("--json", action="store_true", help="print JSON")
        if name == "prepare":
            c.add_argument("--force", action="store_true", help="rebuild even when the cache has the entry")
    d = sub.add_parser(
        "download", parents=[common], help="fetch a dataset whose licence allows it (SHA-256 checked, resumable)"
    )
    d.add_argument("name", help="movielens-100k, movielens-1m, census_income (others print where to get them)")
    d.add_argument("--dest", help="destination folder (default: the current folder)")
    d.add_argument("--url", help="another location of the file (a mirror); needs --sha256")
    d.add_argument("--sha256", help="expected SHA-256 of the file")
    d.add_argument("--retries", type=int, default=3, help="resume attempts after an interrupted transfer")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from mtlbench.datasets.progress import set_progress
    from mtlbench.log import to_stderr

    to_stderr()  # the library's messages (e.g. rows dropped while preparing) as "[mtlbench] ..." lines

    set_progress(getattr(args, "progress", None))
    commands = {"describe": cmd_describe, "prepare": cmd_prepare, "download": cmd_download}
    try:
        return commands[args.command](args)
    except USER_ERRORS as ex:
        sys.stderr.write(f"mtlbench-data: error: {one_line(ex)}\n")
        sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
