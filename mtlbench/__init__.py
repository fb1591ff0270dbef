"""mtlbench: a pluggable benchmark for multi-task and multi-scenario recommendation."""

from __future__ import annotations

from mtlbench.factory import create_dataset, create_model, create_weighting
from mtlbench.registry import (
    DATASETS,
    METRICS,
    MODELS,
    WEIGHTINGS,
    register_analysis,
    register_dataset,
    register_derived,
    register_metric,
    register_model,
    register_plugin_configs,
    register_weighting,
)
from mtlbench.version import __version__


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern, e.g. ``list_models('*ple*')``."""
    return MODELS.names(pattern)


def list_weightings(pattern: str = "*") -> list[str]:
    return WEIGHTINGS.names(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


def list_metrics(pattern: str = "*") -> list[str]:
    """Registered metric names (``ndcg`` is written ``ndcg@k`` in a config), e.g. ``list_metrics('*auc*')``."""
    return METRICS.names(pattern)


__all__ = [
    "__version__",
    "create_dataset",
    "create_model",
    "create_weighting",
    "list_datasets",
    "list_metrics",
    "list_models",
    "list_weightings",
    "register_analysis",
    "register_dataset",
    "register_derived",
    "register_metric",
    "register_model",
    "register_plugin_configs",
    "register_weighting",
]
