"""mtlbench: a pluggable benchmark for multi-task and multi-scenario recommendation."""

from __future__ import annotations

from typing import Any

from mtlbench.registry import (
    DATASETS,
    METRICS,
    MODELS,
    WEIGHTINGS,
    register_dataset,
    register_metric,
    register_model,
    register_weighting,
)

__version__ = "0.1.0"


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


def create_model(name: str, schema: Any, **cfg: Any) -> Any:
    """Build registered model ``name`` for a dataset schema; unknown settings fail with a clear error."""
    from mtlbench.training.run import create_model as _create

    return _create(name, schema, **cfg)


__all__ = ["__version__", "create_model", "list_datasets", "list_metrics", "list_models", "list_weightings",
           "register_dataset", "register_metric", "register_model", "register_weighting"]
