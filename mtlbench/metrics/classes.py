"""torchmetrics wrappers around :mod:`mtlbench.metrics.functional` with declared distributed reductions."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mtlbench.metrics.functional import _flatten_and_filter, _log_loss_sum, gauc, grouped_auc, ndcg_at_k

__all__ = ["LogLoss", "GroupedMetric", "GAUC", "NDCG"]


class LogLoss(Metric):
    """Mean binary cross-entropy of probabilities; rows with a NaN target are ignored.

    Keeps only a running sum and count, so the distributed reduction is a plain sum.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0

    sum_loss: Tensor
    count: Tensor

    def __init__(self, eps: float = 1e-7, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps = eps
        self.add_state("sum_loss", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        total, count = _log_loss_sum(preds.detach(), target.detach(), self.eps)
        self.sum_loss += total
        self.count += count

    def compute(self) -> Tensor:
        return (self.sum_loss / self.count).float()


class GroupedMetric(Metric):
    """Base class for per-group ranking metrics (one group per user).

    A group's rows may be spread over batches and processes, so every (pred, target, group) row is
    buffered and the metric is computed once on all of them; under DDP the buffers are gathered
    ("cat") before :meth:`compute`. Rows with a NaN target are dropped on update.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    preds: list[Tensor] | Tensor
    target: list[Tensor] | Tensor
    group: list[Tensor] | Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("group", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, group: Tensor) -> None:
        preds, target, group = _flatten_and_filter(preds.detach(), target.detach(), group.detach())
        self.preds.append(preds)
        self.target.append(target.to(preds.dtype) if preds.is_floating_point() else target.float())
        self.group.append(group.long())

    def _compute_grouped(self, preds: Tensor, target: Tensor, group: Tensor) -> Tensor:
        raise NotImplementedError

    def compute(self) -> Tensor:
        if isinstance(self.preds, list) and not self.preds:
            return torch.tensor(float("nan"), device=self.device)
        preds, target, group = (dim_zero_cat(x) for x in (self.preds, self.target, self.group))
        return self._compute_grouped(preds, target, group)


class AUC(GroupedMetric):
    """ROC AUC over all rows (one group): NaN, not 0, when the rows hold a single label class or none."""

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(preds, target, torch.zeros(target.shape, dtype=torch.long, device=target.device))

    def _compute_grouped(self, preds: Tensor, target: Tensor, group: Tensor) -> Tensor:
        auc, _, _ = grouped_auc(preds, target, group)
        return auc[0] if auc.numel() else torch.tensor(float("nan"), device=preds.device)


class GAUC(GroupedMetric):
    """Impression-weighted mean of per-group AUC (see :func:`~mtlbench.metrics.functional.gauc`)."""

    def _compute_grouped(self, preds: Tensor, target: Tensor, group: Tensor) -> Tensor:
        return gauc(preds, target, group)


class NDCG(GroupedMetric):
    """Mean per-group NDCG@k (see :func:`~mtlbench.metrics.functional.ndcg_at_k`)."""

    def __init__(self, k: int, **kwargs: Any) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        super().__init__(**kwargs)
        self.k = k

    def _compute_grouped(self, preds: Tensor, target: Tensor, group: Tensor) -> Tensor:
        return ndcg_at_k(preds, target, group, self.k)
