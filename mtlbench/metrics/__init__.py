"""Evaluation metrics: AUC, GAUC, S-GAUC, NDCG@k, log loss and per-scenario / per-stage AUC/GAUC, as functions and as
registered torchmetrics classes (``metrics=[...]`` in a run config; plugins add more with ``register_metric``)."""

from __future__ import annotations

from mtlbench.metrics.base import (
    ANALYSIS_GROUPS,
    GROUP_KEYS,
    RecMetric,
    RowMetric,
    analysis_group_columns,
    available_groups,
    batch_groups,
    group_labels,
)
from mtlbench.metrics.classes import AUC, GAUC, NDCG, SGAUC, GroupedMetric, LogLoss
from mtlbench.metrics.eval_rows import EvalRows
from mtlbench.metrics.functional import gauc, grouped_auc, log_loss, ndcg_at_k
from mtlbench.metrics.resolve import (
    DEFAULT_METRICS,
    build_metrics,
    create_metric,
    higher_is_better,
    metric_class,
    metric_specs,
)
from mtlbench.metrics.scenario import PerGroupMetrics, ScenarioMetrics
from mtlbench.metrics.stage import StageMetrics

__all__ = [
    "ANALYSIS_GROUPS",
    "AUC",
    "DEFAULT_METRICS",
    "EvalRows",
    "GAUC",
    "GROUP_KEYS",
    "NDCG",
    "SGAUC",
    "GroupedMetric",
    "LogLoss",
    "PerGroupMetrics",
    "RecMetric",
    "RowMetric",
    "ScenarioMetrics",
    "StageMetrics",
    "analysis_group_columns",
    "available_groups",
    "batch_groups",
    "build_metrics",
    "create_metric",
    "gauc",
    "group_labels",
    "grouped_auc",
    "higher_is_better",
    "log_loss",
    "metric_class",
    "metric_specs",
    "ndcg_at_k",
]
