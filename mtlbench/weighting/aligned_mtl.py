"""Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, CVPR 2023): independent component alignment.

The paper's update on the shared parameters θ (its Algorithm 1): with G = [g_1 … g_K] the task
gradients, the Gram matrix M = GᵀG = V Λ Vᵀ (eigendecomposition; Λ = Σ², Σ the singular values of G).
The aligned gradients

    Ĝ = σ · G V Λ^{-1/2} Vᵀ = G B,   B = σ V Λ^{-1/2} Vᵀ                                  (the alignment)

have ĜᵀĜ = σ² I on the span of G: every component has the same magnitude σ, so the linear system's
condition number is 1. σ = σ_min = √λ_min, the smallest singular value (the paper's default; "median" and
"rmse" are the other scales of the authors' code, offered as ``scale``). The update is Ĝ ω with task
weights ω (uniform ω = 1: the paper's setting), i.e. Σ_k α_k g_k with α = B ω. Eigenvalues below
λ_max · K · eps (numerical rank) are dropped, as the authors' code does, so σ_min is the smallest
non-zero singular value; eps is float32's (the authors' ``torch.finfo().eps``, the precision the gradients
are computed in), also when the decomposition runs in float64: a direction whose eigenvalue is below float32
noise is not a component to scale every other one down to.

Our choices: ``prescale`` (default false) divides each g_k by its norm before the alignment, an optional
pre-scaling of the task gradients so that the Gram matrix measures directions only (ours; it changes the
result only through which directions are dropped as rank deficient and through σ's unit). θ is structural
(:class:`GradientWeighting`); parameters only one task reaches get the plain Σ_k ∇L_k, like LibMTL's
task-specific parameters. The eigendecomposition is in float64. Logged task weights: α = B ω (with the
pre-scaling folded in), the effective weight of each ∇_θ L_k.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, task_means
from mtlbench.weighting.gradient import GradientWeighting
from mtlbench.weighting.shared_update import flat_gradients, with_shared_gradient

SCALES = ("min", "median", "rmse")


def alignment(gram: Tensor, scale: str = "min") -> Tensor:
    """B = σ V Λ^{-1/2} Vᵀ [K, K] from the Gram matrix GᵀG (the alignment), rank-deficient directions dropped."""
    m = gram.double()
    lam, v = torch.linalg.eigh(m)
    tol = lam.max().clamp_min(0) * m.shape[-1] * torch.finfo(torch.float32).eps  # numerical rank (authors' code)
    keep = lam > tol
    if not bool(keep.any()):
        return torch.zeros_like(m)
    lam, v = lam[keep], v[:, keep]
    sigma = {
        "min": lam.min().sqrt(),
        "median": lam.sqrt().median(),
        "rmse": lam.mean().sqrt(),
    }[scale]
    return sigma * (v / lam.sqrt()) @ v.T


@register_weighting("aligned_mtl")
class AlignedMTL(GradientWeighting):
    name = "aligned_mtl"

    def __init__(self, tasks: list[str], scale: str = "min", prescale: bool = False, layer: str | None = None) -> None:
        super().__init__(tasks, layer)
        if scale not in SCALES:
            raise ConfigError(f"weighting 'aligned_mtl': scale must be one of {list(SCALES)}, got {scale!r}")
        self.scale = scale
        self.prescale = bool(prescale)

    def aligned_weights(self, flat: Tensor) -> Tensor:
        """α [K] with Σ_k α_k g_k = Ĝ 1 for per-task gradients [K, P]."""
        g = flat.double()
        pre = 1.0 / g.norm(dim=1).clamp_min(1e-20) if self.prescale else torch.ones(len(g), dtype=g.dtype)
        pre = pre.to(g.device)
        gs = g * pre[:, None]
        b = alignment(gs @ gs.T, self.scale)
        return pre * (b @ torch.ones(len(g), dtype=g.dtype, device=g.device))  # α = B ω, ω = 1

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        task_loss = task_means(losses, mask)
        params, grads = self.shared_gradients(task_loss, output)
        flat = flat_gradients(params, grads).detach()  # [K, P]
        alpha = self.aligned_weights(flat)
        d = (alpha @ flat.double()).to(flat.dtype)
        loss = with_shared_gradient(task_loss.sum(), params, flat.sum(0), d)
        return WeightedLoss(loss, alpha.to(task_loss.dtype))
