"""Hard-concrete gates (Louizos, Welling & Kingma, ICLR 2018): the L0 relaxation SNR and MSSM use.

A gate z ∈ [0, 1] with a learnable location log α: ``u ~ U(0, 1)``,
``s = σ((log u - log(1 - u) + log α) / β)``, ``s̄ = s (ζ - γ) + γ``, ``z = min(1, max(0, s̄))``
(the hard-concrete sample of SNR and of Louizos et al.). Stretching to (γ, ζ) = (-0.1, 1.1) and
clipping puts real probability mass on exactly 0 and exactly 1, while z stays differentiable in log α.
The expected L0 norm is ``Σ σ(log α - β log(-γ / ζ))`` (the probability each gate is non-zero). At
evaluation the gate is the deterministic ``min(1, max(0, σ(log α)(ζ - γ) + γ))``. One sample per forward
pass, shared by the batch (the gates are coding variables of the architecture, not of the row).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


class HardConcreteGates(nn.Module):
    """A tensor of hard-concrete gates of a given shape; ``forward()`` -> z, ``expected_l0()`` -> scalar."""

    def __init__(self, shape: tuple[int, ...], init_keep: float = 0.9, beta: float = BETA) -> None:
        super().__init__()
        # log α such that the deterministic gate σ(log α)(ζ - γ) + γ starts at init_keep
        p = (init_keep - GAMMA) / (ZETA - GAMMA)
        self.log_alpha = nn.Parameter(torch.full(shape, math.log(p / (1 - p))))
        self.beta = beta

    def forward(self) -> Tensor:
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def expected_l0(self) -> Tensor:
        """E[||z||_0] = Σ P(z ≠ 0) = Σ σ(log α - β log(-γ/ζ))."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-GAMMA / ZETA)).sum()
