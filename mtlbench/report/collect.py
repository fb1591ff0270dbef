"""Reading run directories and grouping runs that differ only in their seed.

A run directory is complete when it holds ``results.json`` (written last, atomically, by
:func:`mtlbench.training.run.train`); a directory with ``config.yaml`` but no results is an incomplete
run (killed, failed or still running): it is listed, never counted.

Runs are grouped by their fully resolved config (``results.json["config"]``, flattened to dotted keys)
minus the seed and the keys that cannot change a result (:data:`IGNORED_KEYS`). Groups are arranged in
*sections* of identical data (same ``dataset.*`` settings): only runs on the same data share a table.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlbench.errors import ConfigError
from mtlbench.rundir import CONFIG_FILE, OUTPUT_DIRS, RESULTS_FILE

#: flattened config keys that never change a run's metrics (output, logging and speed settings)
IGNORED_KEYS: tuple[str, ...] = (
    "seed",
    "print_summary",
    "predictions",
    "cache_dir",
    "threads",
    "eval_batch_size",
    "logger",
    "logger.*",
    "resume",
    "skip_complete",
    "callbacks.save_last",
    "callbacks.checkpoint_every_n_steps",
    "verbose",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
)
#: keys shown separately in labels (never as a "variant")
NAMED_KEYS = ("model.name", "weighting.name", "dataset.name")


@dataclass
class Run:
    """One complete run: its directory, its results.json and its flattened config."""

    path: Path
    results: dict[str, Any]
    flat: dict[str, Any]

    @property
    def seed(self) -> int:
        return int(self.results["seed"])

    def metric(self, split: str, task: str, metric: str) -> float | None:
        value = self.results["metrics"].get(split, {}).get(task, {}).get(metric)
        return None if value is None else float(value)


@dataclass
class Group:
    """Runs with the same config except the seed."""

    dataset: str
    model: str
    weighting: str
    variant: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    label: str = ""

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def values(self, split: str, task: str, metric: str) -> dict[int, float]:
        """Seed -> metric value, for the runs where the metric is defined."""
        out = {}
        for r in self.runs:
            v = r.metric(split, task, metric)
            if v is not None and v == v:
                out[r.seed] = v
        return out


@dataclass
class Section:
    """All groups on the same data (same ``dataset.*`` settings), compared in one table."""

    dataset: str
    data_variant: dict[str, Any]
    groups: list[Group]

    @property
    def title(self) -> str:
        extra = ", ".join(f"{k}={_fmt(v)}" for k, v in self.data_variant.items())
        return f"{self.dataset} ({extra})" if extra else self.dataset


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists become tuples so they can be compared and hashed.

    Unset values (None, empty dicts) are left out: a key that a newer version of the configs adds with a
    null default compares equal to its absence in the results of older runs.
    """
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for k, v in cfg.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(flatten(v, key))
            elif v is not None:
                out[key] = _hashable(v)
        return out
    return {} if cfg is None else {prefix: _hashable(cfg)}


def _hashable(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def is_ignored(key: str, ignore: Sequence[str] = IGNORED_KEYS) -> bool:
    return any(fnmatch.fnmatchcase(key, pat) for pat in ignore)


def comparable_config(config: dict[str, Any], ignore: Sequence[str] = IGNORED_KEYS) -> dict[str, Any]:
    """The flattened config without the seed and the keys that cannot change a result."""
    return {k: v for k, v in flatten(config).items() if not is_ignored(k, ignore)}


def _run_dirs(root: Path) -> Iterable[Path]:
    if (root / CONFIG_FILE).exists() or (root / RESULTS_FILE).exists():
        yield root
        return
    seen: set[Path] = set()
    for name in (CONFIG_FILE, RESULTS_FILE):
        for p in root.rglob(name):
            rel = p.parent.relative_to(root).parts
            # Hydra's .hydra/config.yaml and the outputs of a run are not runs
            if any(part.startswith(".") or part in OUTPUT_DIRS for part in rel):
                continue
            if p.parent not in seen:
                seen.add(p.parent)
                yield p.parent


def _natural_key(path: Path) -> list[tuple[int, int | str]]:
    """Sort key that puts Hydra's job ``2_*`` before ``10_*`` (launch order), digits compared as numbers."""
    return [(0, int(tok)) if tok.isdigit() else (1, tok) for tok in re.split(r"(\d+)", str(path)) if tok]


def find_runs(paths: Sequence[str | Path]) -> tuple[list[Run], list[Path]]:
    """Complete runs and incomplete run directories under ``paths`` (run or sweep directories)."""
    runs, incomplete = [], []
    dirs: dict[Path, None] = {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ConfigError(f"run or sweep directory {str(p)!r} does not exist")
        for d in _run_dirs(p):
            dirs[d.resolve()] = None
    for d in sorted(dirs, key=_natural_key):
        res = d / RESULTS_FILE
        if not res.exists():
            incomplete.append(d)
            continue
        try:
            results = json.loads(res.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{res} is not valid JSON ({e})") from e
        runs.append(Run(d, results, flatten(results.get("config") or {})))
    return runs, incomplete


def group_runs(runs: Sequence[Run], ignore: Sequence[str] = IGNORED_KEYS) -> list[Section]:
    """Sections (same data) of groups (same config but the seed), in order of first appearance.

    A group's ``variant`` holds the config values that tell it apart from other groups of the same
    model and weighting in its section (e.g. ``model.num_experts=8``); labels are built from it.
    """
    keyed: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        cfg = {k: v for k, v in r.flat.items() if not is_ignored(k, ignore)}
        keyed[tuple(sorted(cfg.items(), key=lambda kv: kv[0]))].append(r)

    # sections: runs on the same data
    by_data: dict[tuple, list[tuple[dict[str, Any], list[Run]]]] = defaultdict(list)
    for key, rs in keyed.items():
        cfg = dict(key)
        data = tuple((k, v) for k, v in key if k.startswith("dataset."))
        by_data[data].append((cfg, rs))
    data_keys = [dict(d) for d in by_data]
    varying_data = _varying(data_keys, same=lambda d: d.get("dataset.name"))

    sections = []
    for data, members in by_data.items():
        d = dict(data)
        name = str(d.get("dataset.name", members[0][1][0].results.get("dataset", "?")))
        varying = _varying([cfg for cfg, _ in members], same=_model_and_weighting)
        groups = []
        for cfg, rs in members:
            rs = sorted(rs, key=lambda r: r.seed)
            res = rs[0].results
            # what tells this group apart from the others of its model and weighting
            keys = varying[_model_and_weighting(cfg)]
            variant = {k: cfg.get(k) for k in keys if not k.startswith("dataset.")}
            groups.append(Group(name, str(res.get("model")), str(res.get("weighting")), variant, rs))
        multi_weighting = weighting_varies(groups)
        for g in groups:
            g.label = group_label(g, show_weighting=multi_weighting)
        sections.append(Section(name, {k: d.get(k) for k in varying_data[name] if k != "dataset.name"}, groups))
    return sections


def weighting_varies(groups: Sequence[Group]) -> bool:
    """True when some model appears with more than one weighting: then labels name the weighting."""
    seen: dict[str, set[str]] = defaultdict(set)
    for g in groups:
        seen[g.model].add(g.weighting)
    return any(len(w) > 1 for w in seen.values())


def _model_and_weighting(cfg: dict[str, Any]) -> tuple[Any, Any]:
    return cfg.get("model.name"), cfg.get("weighting.name")


def _varying(cfgs: list[dict[str, Any]], same: Any) -> dict[Any, list[str]]:
    """Per value of ``same(cfg)``: the keys whose values differ among the configs with that value."""
    buckets: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for c in cfgs:
        buckets[same(c)].append(c)
    out: dict[Any, list[str]] = {}
    for key, bucket in buckets.items():
        out[key] = [
            k
            for k in sorted(set().union(*bucket))
            if k not in NAMED_KEYS and len({_hashable(c.get(k)) for c in bucket}) > 1
        ]
    return out


def pair_key(g: Group) -> str:
    """``model+weighting``: names one of a model's groups when it runs with several weightings."""
    return f"{g.model}+{g.weighting}"


def group_label(g: Group, show_weighting: bool = False, names: dict[str, str] | None = None) -> str:
    """``model``, ``model + weighting`` and ``(key=value, ...)`` for what else sets the group apart.

    ``names`` maps a model, or a ``model+weighting`` pair (which then names the weighting too), to its label.
    """
    names = names or {}
    if pair_key(g) in names:
        label = names[pair_key(g)]
    else:
        label = names.get(g.model, g.model)
        if show_weighting:
            label += f" + {g.weighting}"
    if g.variant:
        short = {k.split(".", 1)[1] if k.startswith("model.") else k: v for k, v in g.variant.items()}
        label += " (" + ", ".join(f"{k}={_fmt(v)}" for k, v in short.items()) + ")"
    return label


#: the coordinates every group has (:func:`coordinates`); its variant's config keys are the others
NAMED_COORDINATES = ("model", "weighting")


def coordinates(g: Group) -> dict[str, str]:
    """A group's coordinates as text: its model, its weighting and the config values of its variant
    (``model.num_experts``: "8"); a report's ``against`` names some of them."""
    return {"model": g.model, "weighting": g.weighting, **{k: _fmt(v) for k, v in g.variant.items()}}


def coordinate_text(value: Any) -> str:
    """A configured coordinate value as :func:`coordinates` writes it (so ``8`` and ``"8"`` match)."""
    return _fmt(_hashable(value))


def find_group(groups: Sequence[Group], name: str | None) -> Group | None:
    """The group a report setting names: by label, else by ``model+weighting``, else the first of the model."""
    if not name:
        return None
    for match in (lambda g: g.label == name, lambda g: pair_key(g) == name, lambda g: g.model == name):
        found = [g for g in groups if match(g)]
        if found:
            return found[0]
    return None
