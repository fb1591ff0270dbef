"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018): task weights from learned homoscedastic noise.

For a classification task with a softmax/sigmoid likelihood scaled by 1/σ², Eq. 10 of the paper gives
L ≈ Σ_k (1/σ_k²) L_k + log σ_k. We learn s_k = log σ_k² (numerically stable, as the paper recommends) and
minimise Σ_k exp(-s_k) L_k + c·s_k with c = ``regularizer``: c = 0.5 is Eq. 10 exactly (log σ = s/2);
c = 1 is the log-variance form of the authors' public code. At the optimum exp(-s_k) = c / L_k, so a task
with a larger loss gets a smaller weight.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, WeightingStrategy, task_means


@register_weighting("uncertainty")
class Uncertainty(WeightingStrategy):
    """Learnable s_k = log σ_k² (initialised to 0: weight 1); weight exp(-s_k) logged per step."""

    def __init__(self, tasks: list[str], regularizer: float = 0.5) -> None:
        super().__init__(tasks)
        if regularizer <= 0:
            raise ConfigError(f"weighting 'uncertainty': regularizer must be > 0, got {regularizer}")
        self.regularizer = float(regularizer)
        self.log_vars = nn.Parameter(torch.zeros(len(tasks)))

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        s = self.log_vars
        precision = torch.exp(-s)
        loss = (precision * task_means(losses, mask) + self.regularizer * s).sum()  # Eq. 10 with s = log σ²
        return WeightedLoss(loss, precision.detach())
