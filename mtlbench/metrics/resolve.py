"""Metric names -> metric classes and instances, through the ``METRICS`` registry.

A name is a registered name with an optional ``@`` parameter: ``auc``, ``ndcg@5``. A results key is a
name, or a key of a metric with ``dict_output`` (``auc@scenario=2``); its direction is that of the
registered metric named before the ``@``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from torchmetrics import Metric

from mtlbench.errors import ConfigError, UnknownNameError
from mtlbench.registry import METRICS

__all__ = [
    "DEFAULT_METRICS",
    "build_metrics",
    "create_metric",
    "higher_is_better",
    "metric_class",
    "metric_specs",
    "parse_name",
]

#: the metrics of a run unless its config lists others (``metrics`` in configs/train.yaml)
DEFAULT_METRICS: tuple[str, ...] = ("auc", "logloss", "gauc", "ndcg", "sgauc", "scenario", "stage")


def parse_name(name: str) -> tuple[str, str | None]:
    """``ndcg@5`` -> (``ndcg``, ``5``); ``auc`` -> (``auc``, None)."""
    base, sep, param = name.partition("@")
    return base, param if sep else None


def metric_class(name: str) -> type:
    """The registered class of a metric name or results key; UnknownNameError (with "did you mean") if none.

    Built-in metrics are found without importing plugins (importing this module ran ``mtlbench/metrics/__init__``,
    which registers them); other names load the installed plugins once.
    """
    base = parse_name(name)[0]
    return cast(type, METRICS.peek(base) or METRICS.get(base))  # register_metric only accepts classes


def create_metric(name: str) -> Metric:
    """A new metric for a name of a run config (``auc``, ``ndcg@5``); a one-line ConfigError if it is unknown."""
    param = parse_name(name)[1]
    try:
        cls = metric_class(name)
    except UnknownNameError as e:
        raise ConfigError(f"metrics: {e}" if param is None else f"metric {name!r}: {e}") from None
    try:
        from_spec = getattr(cls, "from_spec", None)
        if from_spec is not None:
            return from_spec(param)
        if param is not None:
            raise ValueError(f"takes no '@' parameter, got '@{param}'")
        return cls()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"metric {name!r}: {e}") from None


def metric_specs(names: Iterable[str], params: Mapping[str, Sequence[Any]] | None = None) -> list[str]:
    """The metric names of a run, checked: each name of ``names`` in order, without repeats; a bare name in
    ``params`` becomes one name per value (``ndcg`` with ``{"ndcg": [1, 5]}`` -> ``ndcg@1``, ``ndcg@5``)."""
    out: list[str] = []
    for name in names:
        name = str(name).strip()
        values = (params or {}).get(name)
        for spec in [f"{name}@{v}" for v in values] if values is not None and "@" not in name else [name]:
            create_metric(spec)  # fails early, before any data is read
            if spec not in out:
                out.append(spec)
    return out


def build_metrics(names: Iterable[str], groups: Sequence[str]) -> dict[str, Metric]:
    """One new metric per name, skipping those that need a group the dataset lacks (e.g. ``gauc`` without users)."""
    out: dict[str, Metric] = {}
    for name in names:
        metric = create_metric(name)
        if set(getattr(metric, "groups", ())) <= set(groups):
            out[name] = metric
    return out


def higher_is_better(name: str, default: bool | None = None) -> bool:
    """Whether larger values of a metric name or results key are better (its class's ``higher_is_better``).

    For a name no installed metric claims: ``default``, or the registry's error if ``default`` is None.
    """
    try:
        cls = metric_class(name)
    except UnknownNameError:
        if default is None:
            raise
        return default
    value = getattr(cls, "higher_is_better", None)
    if value is None:
        if default is None:
            raise ConfigError(
                f"metric {parse_name(name)[0]!r} does not say whether higher is better "
                "(set higher_is_better on its class)"
            )
        return default
    return bool(value)
