"""A metric a third party might add: HitRate@k per user, listed in a run config as ``metrics=[auc,hit_rate@5]``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.metrics import GroupedMetric
from mtlbench.registry import register_metric


def hit_rate_at_k(preds: Tensor, target: Tensor, group: Tensor, k: int) -> Tensor:
    """Share of the groups with a positive whose top-k rows (by descending score) hold a positive.

    Ties in score are broken pessimistically (negatives first), as mtlbench's NDCG does; NaN without a
    group that has a positive. Sorts only: no Python loop over groups.
    """
    label = target > 0.5
    order = torch.argsort(label.to(torch.int8), stable=True)  # negatives before positives ...
    order = order[torch.argsort(preds[order], descending=True, stable=True)]  # ... among equal scores
    order = order[torch.argsort(group[order], stable=True)]
    label = label[order]
    _, inverse, counts = torch.unique_consecutive(group[order], return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=preds.device) - starts[inverse]  # 0-based position in the group
    hit = torch.bincount(inverse[label & (rank < k)], minlength=len(counts)) > 0
    has_pos = torch.bincount(inverse[label], minlength=len(counts)) > 0
    return hit[has_pos].to(torch.float32).mean()


@register_metric("hit_rate")
class HitRate(GroupedMetric):
    """HitRate@k over users: ``hit_rate@5`` in ``metrics``; skipped on datasets without a user field."""

    groups = ("user",)  # the group ids update() reads from its ``groups`` argument
    param = "k"  # the number after '@' is passed as k
    higher_is_better = True  # checkpoint / early-stopping direction when monitored, and report bolding

    def __init__(self, k: int, **kwargs: Any) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        super().__init__(**kwargs)
        self.k = k

    def _compute_grouped(self, preds: Tensor, target: Tensor, group: Tensor) -> Tensor:
        return hit_rate_at_k(preds, target, group, self.k)
