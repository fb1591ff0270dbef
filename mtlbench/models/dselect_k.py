"""DSelect-k (Hazimeh et al., NeurIPS 2021): differentiable top-k selection of experts, one gate per task.

Each task's gate holds k *single-expert selectors*. Selector i has m = log2(n) logits z^(i); the paper's
smooth-step S (0 below -γ/2, 1 above γ/2, the cubic ``-2/γ³ t³ + 3/(2γ) t + 1/2`` between) makes a soft
binary code, and the single-expert selector ``r(z)_l = Π_j S(z_j)^{[l]_j} (1 - S(z_j))^{1-[l]_j}`` ([l]_j
the j-th bit of expert l) is a distribution over the n experts that becomes one-hot once every S(z_j) is 0
or 1. The DSelect-k gate is ``q = Σ_{i≤k} softmax(α)_i r(z^(i))``, so at most k experts are selected when
the smooth-steps saturate; the output is ``Σ_l q_l f_l(x)``. To push the selectors to saturate, the paper
adds λ · Σ_i H(r(z^(i))), the selectors' entropy, here returned as the aux loss ``selector_entropy``.

Paper's: smooth-step, binary encoding, k selectors with softmax(α) weights, entropy regulariser, per-example
gating (z = W_z x, α = W_α x: the MoE form of the paper's multi-task experiments). Ours: n must be a power
of two (the paper's presentation; a partial code set would leave r unnormalised); z and α come from a
linear map of the shared embedding with PyTorch's default init; the entropy is averaged over the rows and
summed over tasks and selectors. Experts and towers as in ``mmoe``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput, MultiTaskModel
from mtlbench.models.layers import ExpertGroup, FeatureEmbedding, Towers
from mtlbench.registry import register_model


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """Smooth-step: 0 for t <= -γ/2, 1 for t >= γ/2, a C¹ cubic in between."""
    cubic = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


def binary_codes(n: int) -> Tensor:
    """[n, log2 n]: bit j of expert l (least significant first)."""
    m = max(1, (n - 1).bit_length())
    return ((torch.arange(n).unsqueeze(1) >> torch.arange(m)) & 1).float()


def selector_distribution(z: Tensor, codes: Tensor, gamma: float) -> Tensor:
    """Single-expert selector: r(z) [..., n] from selector logits z [..., m]."""
    s = smooth_step(z, gamma).unsqueeze(-2)  # [..., 1, m]
    return (codes * s + (1 - codes) * (1 - s)).prod(-1)  # [..., n]


class DSelectKGates(nn.Module):
    """One DSelect-k gate per task, per example: returns q [B, T, n] and the selectors' r [B, T, k, n]."""

    codes: Tensor

    def __init__(self, in_dim: int, num_tasks: int, num_experts: int, k: int, gamma: float) -> None:
        super().__init__()
        self.t, self.n, self.k, self.gamma = num_tasks, num_experts, k, gamma
        self.register_buffer("codes", binary_codes(num_experts), persistent=False)
        self.m = self.codes.shape[1]
        self.z = nn.Linear(in_dim, num_tasks * k * self.m)  # selector logits z^(i)(x)
        self.alpha = nn.Linear(in_dim, num_tasks * k)  # selector weights α(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b = len(x)
        r = selector_distribution(self.z(x).view(b, self.t, self.k, self.m), self.codes, self.gamma)
        w = torch.softmax(self.alpha(x).view(b, self.t, self.k), dim=-1)
        q = (w.unsqueeze(-1) * r).sum(2)  # DSelect-k gate: q = Σ_i softmax(α)_i r(z^(i))
        return q, r


def selector_entropy(r: Tensor, eps: float = 1e-6) -> Tensor:
    """The entropy regulariser: Σ over tasks and selectors of H(r(z^(i))), averaged over rows."""
    return -(r * torch.log(r + eps)).sum(-1).sum((1, 2)).mean()


@register_model("dselect_k")
class DSelectK(MultiTaskModel):
    """Shared experts, one per-example DSelect-k gate per task, one tower per task."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        num_experts: int = 4,
        k: int = 2,
        gamma: float = 1.0,
        entropy_weight: float = 1e-3,
        expert: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if num_experts < 2 or num_experts & (num_experts - 1):
            raise ConfigError(f"model 'dselect_k': num_experts must be a power of two >= 2, got {num_experts}")
        if not 1 <= k <= num_experts:
            raise ConfigError(f"model 'dselect_k': k must be in [1, num_experts={num_experts}], got {k}")
        if gamma <= 0 or entropy_weight < 0:
            raise ConfigError(
                f"model 'dselect_k': need gamma > 0 and entropy_weight >= 0, got {gamma}, {entropy_weight}"
            )
        self.entropy_weight = entropy_weight
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.output_dim
        self.experts = ExpertGroup(num_experts, d, list(expert), dropout, activation)
        self.gates = DSelectKGates(d, len(self.tasks), num_experts, k, gamma)
        self.towers = Towers(self.tasks, self.experts.out_dim, list(tower), dropout, activation)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        x = self.embedding.flat(batch)
        q, r = self.gates(x)
        mixes = torch.bmm(q, self.experts(x))  # [B, T, H]: Σ_l q_l f_l(x)
        logits = self.towers(list(mixes.unbind(1)))
        aux = {"selector_entropy": self.entropy_weight * selector_entropy(r)} if self.entropy_weight > 0 else {}
        return ModelOutput(logits=logits, aux_losses=aux, extras={"gate": q})
