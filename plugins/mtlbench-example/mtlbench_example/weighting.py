"""A loss weighting a third party might add: each task's loss divided by its running mean (scale-free tasks)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, WeightingStrategy, task_means, weighted_sum


@register_weighting("example_loss_scale")
class LossScale(WeightingStrategy):
    """η_k = 1 / m_k, with m_k an exponential moving average (``momentum``) of task k's mean batch loss.

    Every task then contributes a loss near 1 whatever its label rate, so a rare task (purchase) is not drowned
    by a frequent one (click). The running means are buffers: checkpoints save them, resumed runs continue them.
    """

    def __init__(self, tasks: list[str], momentum: float = 0.9) -> None:
        super().__init__(tasks)
        self.momentum = momentum
        self.register_buffer("running", torch.zeros(len(tasks)))

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        means = task_means(losses, mask).detach()
        if self.training:
            fresh = self.running == 0
            self.running.copy_(torch.where(fresh, means, self.momentum * self.running + (1 - self.momentum) * means))
        weights = 1.0 / self.running.clamp_min(1e-8)
        return WeightedLoss(weighted_sum(losses, mask, weights), weights)
