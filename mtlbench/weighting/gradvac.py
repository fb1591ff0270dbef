"""Gradient Vaccine (Wang et al., ICLR 2021): steer pairwise gradient similarity toward adaptive EMA targets.

The paper's part (Section 3, Algorithm 1), on the shared parameters θ: for every task i and every other task j
(random order), with g_i' the running adjusted gradient of i and φ_ij = cos(g_i', g_j):

- if φ_ij < φ̂_ij (the target), add a multiple of g_j so the cosine becomes φ̂_ij (the paper's Eq. for the
  coefficient): g_i' += g_j · ‖g_i'‖ (φ̂_ij √(1 − φ_ij²) − φ_ij √(1 − φ̂_ij²)) / (‖g_j‖ √(1 − φ̂_ij²));
- the target is an EMA of the observed similarity, updated at every step for every pair:
  φ̂_ij ← (1 − β) φ̂_ij + β φ_ij, φ̂ starting at 0 (so the first steps act like PCGrad's projection).

θ is then updated with Σ_i g_i'; task-specific parameters get their own gradient. The paper's β: it reports
β = 1e-2 (our reading of its experimental setup); our default is LibMTL's 0.5 (``beta``).

Ours: one similarity per ordered pair over the whole θ vector (the paper also evaluates per-layer granularity;
LibMTL's default ``group_type=0`` is the whole model too); the random orders come from ``torch.randperm`` on the
global torch RNG (in checkpoints); φ̂ is a buffer (saved in checkpoints). Reported task weights: the effective
coefficient of g_j in Σ_i g_i', 1 + Σ_i (added multiple of g_j) (LibMTL returns the same).

Where LibMTL 1.1.5 differs: it updates φ̂_ij only when the pair was adjusted (φ_ij < φ̂_ij), so from φ̂ = 0 the
targets can only become negative; we update at every step as the paper. It shuffles with Python's ``random``.
The oracle test feeds both the same orders and compares one step from φ̂ = 0 (where the adjustments agree), and
several steps with :func:`vaccinate`'s ``update_only_adjusted=True``, LibMTL's rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, task_means
from mtlbench.weighting.gradient import GradientWeighting
from mtlbench.weighting.shared_update import flat_gradients
from mtlbench.weighting.surgery import apply_shared_gradient


def vaccinate(
    grads: Tensor, targets: Tensor, orders: list[list[int]], beta: float, update_only_adjusted: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """GradVac on ``grads`` [K, P] with targets φ̂ [K, K]; ``orders[i]``: the order of the tasks j for task i.

    Returns (adjusted gradients g' [K, P], new targets, coefficients c [K, K] with g_i' = g_i + Σ_j c_ij g_j).
    ``update_only_adjusted``: LibMTL's rule (EMA only for adjusted pairs), for the oracle test.
    """
    out = grads.clone()
    targets = targets.clone()
    coef = torch.zeros_like(targets)
    norms = grads.norm(dim=1)
    for i, order in enumerate(orders):  # a loop over task pairs (K²), never over samples
        for j in order:
            if j == i:
                continue
            phi = out[i] @ grads[j] / (out[i].norm() * norms[j]).clamp_min(1e-20)
            target = targets[i, j]
            adjusted = bool(phi < target)
            if adjusted:
                w = out[i].norm() * (target * (1 - phi**2).sqrt() - phi * (1 - target**2).sqrt())
                w = w / (norms[j] * (1 - target**2).sqrt()).clamp_min(1e-20)
                out[i] = out[i] + w * grads[j]
                coef[i, j] += w
            if adjusted or not update_only_adjusted:
                targets[i, j] = (1 - beta) * target + beta * phi  # EMA of the similarity
    return out, targets, coef


@register_weighting("gradvac")
class GradVac(GradientWeighting):
    name = "gradvac"
    targets: Tensor

    def __init__(self, tasks: list[str], beta: float = 0.5, layer: str | None = None) -> None:
        super().__init__(tasks, layer)
        if not 0.0 < beta <= 1.0:
            raise ConfigError(f"weighting 'gradvac': beta must be in (0, 1], got {beta}")
        self.beta = float(beta)
        self.register_buffer("targets", torch.zeros(len(tasks), len(tasks)))

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        k = len(self.tasks)
        task_loss = task_means(losses, mask)
        params, grads = self.shared_gradients(task_loss, output)
        flat = flat_gradients(params, grads)
        orders = [[j for j in torch.randperm(k).tolist() if j != i] for i in range(k)]
        new, targets, coef = vaccinate(flat.detach(), self.targets, orders, self.beta)
        self.targets.copy_(targets)
        loss = apply_shared_gradient(task_loss, params, flat, new.sum(0))
        return WeightedLoss(loss, 1 + coef.sum(0).detach())
