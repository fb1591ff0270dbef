"""Train / validation / test splits. Model selection uses validation only; test is read once at the end."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mtlbench.data.order import Timeline
from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError

SPLITS = ("train", "valid", "test")


def _checked_ratios(ratios: Iterable[float]) -> tuple[float, float, float]:
    """The train/valid/test ratios as three floats, or a ConfigError if they are not three non-negative
    numbers summing to 1 (a YAML list may have any length)."""
    values = tuple(float(r) for r in ratios)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"split ratios must be three non-negative numbers summing to 1, got {list(values)}")
    return values[0], values[1], values[2]


def user_time_split(user: np.ndarray, time: np.ndarray, ratios: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Per-user time order: each user's earliest rows train, the next validate, the latest test."""
    timeline = Timeline(user, time)
    pos = (timeline.rank + 0.5) / timeline.length  # a user's single row goes to train
    part = np.where(pos < ratios[0], 0, np.where(pos < ratios[0] + ratios[1], 1, 2))
    out = {}
    for i, name in enumerate(SPLITS):
        rows = timeline.order[part == i]
        out[name] = rows[np.argsort(time[rows], kind="stable")]
    return out


def global_time_split(time: np.ndarray, ratios: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """One global cut in time: all rows before the first boundary train, and so on."""
    order = np.argsort(time, kind="stable")
    a, b = (np.cumsum(ratios)[:2] * len(order)).astype(np.int64)
    return dict(zip(SPLITS, (order[:a], order[a:b], order[b:])))


def random_split(n: int, ratios: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """A seeded random split, for datasets without a time field."""
    order = np.random.default_rng(seed).permutation(n)
    a, b = (np.cumsum(ratios)[:2] * n).astype(np.int64)
    return {k: np.sort(v) for k, v in zip(SPLITS, (order[:a], order[a:b], order[b:]))}


def check_not_empty(parts: dict[str, np.ndarray], method: str, schema: DatasetSchema) -> None:
    """Training needs rows in every split: model selection reads valid, the result reads test."""
    empty = [k for k, v in parts.items() if len(v) == 0]
    if empty:
        raise ConfigError(f"split method {method!r} leaves split(s) {empty} of dataset {schema.name!r} empty")


def resolve_method(schema: DatasetSchema, method: str) -> str:
    """The split method ``auto`` stands for: the dataset's own split when its schema names one
    (``auto_split``, e.g. raw Ali-CCP's official train/test files), else per-user time order if the data has
    users and time, else random."""
    if method != "auto":
        return method
    if schema.auto_split:
        return schema.auto_split
    return "user_time" if schema.time_field and schema.user_field else "random"


def make_splits(
    schema: DatasetSchema,
    columns: dict[str, np.ndarray],
    method: str = "auto",
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Row indices per split (int32 when the table has fewer than 2^31 rows: 4 bytes a row, the same rows);
    ``auto`` as :func:`resolve_method` resolves it."""
    n = len(columns[schema.tasks[0]])
    parts = _split_rows(schema, columns, method, ratios, seed)
    if n < 2**31:
        return {k: v.astype(np.int32) for k, v in parts.items()}
    return parts


def _split_rows(
    schema: DatasetSchema,
    columns: dict[str, np.ndarray],
    method: str,
    ratios: tuple[float, float, float],
    seed: int,
) -> dict[str, np.ndarray]:
    ratios = _checked_ratios(ratios)
    n = len(columns[schema.tasks[0]])
    method = resolve_method(schema, method)
    if method in ("user_time", "global_time"):
        time_field = schema.time_field
        if not time_field:
            raise ConfigError(f"split method {method!r} needs a time field; dataset {schema.name!r} has none")
        if method == "global_time":
            return global_time_split(columns[time_field], ratios)
        if not schema.user_field:
            raise ConfigError(f"split method 'user_time' needs a user field; dataset {schema.name!r} has none")
        return user_time_split(columns[schema.user_field], columns[time_field], ratios)
    if method == "random":
        return random_split(n, ratios, seed)
    if method.startswith("column:"):  # the dataset's own split, e.g. MMoE's census split or WeChat's days
        name = method.split(":", 1)[1]
        if name not in columns:
            raise ConfigError(f"split method {method!r}: dataset {schema.name!r} has no column {name!r}")
        part = np.asarray(columns[name])
        return {s: np.flatnonzero(part == i) for i, s in enumerate(SPLITS)}
    raise ConfigError(f"unknown split method {method!r}; known: auto, user_time, global_time, random, column:<name>")
