"""Evaluation metrics: grouped AUC, GAUC, NDCG@k and log loss, as functions and torchmetrics classes."""

from __future__ import annotations

from mtlbench.metrics.classes import AUC, GAUC, NDCG, GroupedMetric, LogLoss
from mtlbench.metrics.functional import gauc, grouped_auc, log_loss, ndcg_at_k

__all__ = ["AUC", "GAUC", "NDCG", "GroupedMetric", "LogLoss", "gauc", "grouped_auc", "log_loss", "ndcg_at_k"]
