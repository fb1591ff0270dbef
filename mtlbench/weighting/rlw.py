"""Random Loss Weighting (Lin et al., TMLR 2022, "Reasonable Effectiveness of Random Weighting").

The paper's part: at every step draw λ̃ ~ N(0, I_K), set λ = softmax(λ̃) and minimise Σ_k λ_k L_k (the Normal
choice of p(λ̃) with the softmax normalisation, the paper's default; weights sum to 1, so the loss is on the
scale of a mean over tasks, not of Σ_k L_k).

Ours: λ̃ is drawn with ``torch.randn`` from the global torch RNG (saved in checkpoints by the training module),
so seeded runs repeat; a task without labels in the batch has L_k = 0 and keeps its drawn weight. Reported task
weights: λ. LibMTL 1.1.5 (``dist='Normal'``) draws from ``Normal(0, 1).sample()`` on the same global RNG: the
same numbers as ``torch.randn`` under the same seed (the oracle test checks this).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, WeightingStrategy, weighted_sum


@register_weighting("rlw")
class RLW(WeightingStrategy):
    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        draw = torch.randn(len(self.tasks)).to(losses.device)  # λ̃ ~ N(0, I) on the CPU RNG, as LibMTL
        weights = torch.softmax(draw, dim=0)  # λ = softmax(λ̃)
        return WeightedLoss(weighted_sum(losses, mask, weights), weights)
