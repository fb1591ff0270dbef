"""The built-in metrics: torchmetrics wrappers around :mod:`mtlbench.metrics.functional` with declared
distributed reductions, registered under the names a run config lists in ``metrics``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from mtlbench.metrics.base import RecMetric, RowMetric, group_ids
from mtlbench.metrics.functional import _flatten_and_filter, _log_loss_sum, gauc, grouped_auc, ndcg_at_k
from mtlbench.registry import register_metric

__all__ = ["AUC", "GAUC", "NDCG", "SGAUC", "GroupedMetric", "LogLoss"]


@register_metric("logloss")
class LogLoss(RecMetric):
    """Mean binary cross-entropy of probabilities; rows with a NaN target are ignored.

    Keeps only a running sum and count, so the distributed reduction is a plain sum.
    """

    higher_is_better = False
    plot_lower_bound = 0.0

    sum_loss: Tensor
    count: Tensor

    def __init__(self, eps: float = 1e-7, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps = eps
        self.add_state("sum_loss", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, groups: Mapping[str, Tensor] | None = None) -> None:
        total, count = _log_loss_sum(preds.detach(), target.detach(), self.eps)
        self.sum_loss += total
        self.count += count

    def compute(self) -> Tensor:
        return (self.sum_loss / self.count).float()


class GroupedMetric(RowMetric):
    """Base class for per-group ranking metrics (one group per ``self.groups[0]``: per user by default).

    A group's rows may be spread over batches and processes, so every (pred, target, group) row is
    buffered and the metric is computed once on all of them; under DDP the buffers are gathered
    ("cat") before :meth:`compute`. Rows with a NaN target are dropped on update.
    """

    groups: ClassVar[tuple[str, ...]] = ("user",)
    higher_is_better = True
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

    def update(self, preds: Tensor, target: Tensor, groups: Mapping[str, Tensor] | None = None) -> None:
        """``groups``: the rows' group ids by name (``self.groups[0]`` is read)."""
        self._append(preds, target, group_ids(groups, self.groups[0]))

    def _append(self, preds: Tensor, target: Tensor, group: Tensor) -> None:
        preds, target, group = _flatten_and_filter(preds.detach(), target.detach(), group.detach())
        # "cat" states are lists between updates (torchmetrics concatenates them only while syncing for compute)
        assert isinstance(self.preds, list) and isinstance(self.target, list) and isinstance(self.group, list)
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

    def compute_rows(self, preds: Tensor, target: Tensor, groups: Mapping[str, Tensor]) -> Tensor:
        group = group_ids(groups, self.groups[0]) if self.groups else torch.zeros_like(target, dtype=torch.long)
        return self._compute_grouped(preds, target, group)


@register_metric("auc")
class AUC(GroupedMetric):
    """ROC AUC over all rows (one group): NaN, not 0, when the rows hold a single label class or none.

    The project's own implementation (exact Mann-Whitney U with tied scores counted 1/2, as scikit-learn).
    """

    groups = ()

    def update(self, preds: Tensor, target: Tensor, groups: Mapping[str, Tensor] | None = None) -> None:
        self._append(preds, target, torch.zeros(target.shape, dtype=torch.long, device=target.device))

    def _compute_grouped(self, preds: Tensor, target: Tensor, group: Tensor) -> Tensor:
        auc, _, _ = grouped_auc(preds, target, group)
        return auc[0] if auc.numel() else torch.tensor(float("nan"), device=preds.device)


@register_metric("gauc")
class GAUC(GroupedMetric):
    """Impression-weighted mean of per-user AUC (see :func:`~mtlbench.metrics.functional.gauc`)."""

    def _compute_grouped(self, preds: Tensor, target: Tensor, group: Tensor) -> Tensor:
        return gauc(preds, target, group)


@register_metric("sgauc")
class SGAUC(GAUC):
    """S-GAUC (SFPNet Eq. 13): GAUC over sessions instead of users."""

    groups = ("session",)


@register_metric("ndcg")
class NDCG(GroupedMetric):
    """Mean per-user NDCG@k (see :func:`~mtlbench.metrics.functional.ndcg_at_k`); ``ndcg@5`` in a config."""

    param = "k"

    def __init__(self, k: int, **kwargs: Any) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        super().__init__(**kwargs)
        self.k = k

    def _compute_grouped(self, preds: Tensor, target: Tensor, group: Tensor) -> Tensor:
        return ndcg_at_k(preds, target, group, self.k)
