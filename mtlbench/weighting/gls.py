"""Geometric Loss Strategy (Chennupati et al., CVPR Workshops 2019, MultiNet++): L = (Π_k L_k)^(1/K).

The paper's part: the total loss is the geometric mean of the task losses. Its gradient weights task k by
∂L/∂L_k = L / (K·L_k), so a task whose loss is small gets a large weight.

Ours: computed as exp(mean_k log L_k) (the same value, without the product's under/overflow for many tasks);
tasks with no label in the batch (L_k = 0, which would make the product 0 and its gradient undefined) are left
out, K being the number of labelled tasks; losses are floored at 1e-12 before the log. Reported task weights:
the effective weights L / (K·L_k) (0 for unlabelled tasks).

Where LibMTL 1.1.5 differs: its loss is the same (``losses.prod() ** (1/K)``), but the weights it returns,
L_k / (K·Π_j L_j), are not the gradient's weights (L / (K·L_k)); the oracle test compares the loss and its
gradient on the shared parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, WeightingStrategy, task_means


@register_weighting("gls")
class GLS(WeightingStrategy):
    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        task_loss = task_means(losses, mask)
        labelled = mask.any(0)
        k = labelled.sum().clamp_min(1)
        logs = torch.where(labelled, task_loss.clamp_min(1e-12).log(), torch.zeros_like(task_loss))
        loss = torch.exp(logs.sum() / k)  # (Π_k L_k)^(1/K) over the labelled tasks
        weights = torch.where(labelled, loss.detach() / (k * task_loss.detach().clamp_min(1e-12)), 0.0)
        return WeightedLoss(loss, weights)
