"""SNR: Sub-Network Routing (Ma et al., AAAI 2019).

The shared bottom is split into sub-networks on two levels; the connections between a lower sub-network i
(output v_i) and an upper sub-network j are gated by binary *coding variables* z_ij, learned with the
hard-concrete L0 relaxation (see ``hard_concrete.py``):

- SNR-Trans: ``u_j = Σ_i z_ij W_ij v_i``, a learned transform per connection;
- SNR-Aver: ``u_j = Σ_i z_ij v_i``, a plain (gated) sum.

The training objective adds λ · E[||z||_0], the expected number of open connections, returned as
the aux loss ``l0``. Each upper sub-network feeds one task tower, so a connection pruned to z = 0 removes
a lower sub-network from that task's path.

Paper's: two levels of sub-networks, coding variables with the hard-concrete distribution (β = 2/3,
γ = -0.1, ζ = 1.1), the Trans and Aver connections, the L0 penalty. Ours: one upper sub-network per task
(the paper's figure pairs them with the tasks); sub-networks are MLPs over the shared embedding; one z
sample per batch; gates start near open (deterministic gate 0.9); λ = ``l0_weight``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput, MultiTaskModel
from mtlbench.models.hard_concrete import HardConcreteGates
from mtlbench.models.layers import ExpertGroup, FeatureEmbedding, Towers
from mtlbench.registry import register_model

VARIANTS = ("trans", "aver")


def route(v: Tensor, z: Tensor, w: Tensor | None) -> Tensor:
    """Upper inputs [U, B, H'] from lower outputs v [B, L, H] and gates z [U, L]: SNR-Trans (w) or SNR-Aver."""
    if w is None:
        return torch.einsum("ji,bih->jbh", z, v)  # SNR-Aver: u_j = Σ_i z_ij v_i
    wz = (w * z[:, :, None, None]).flatten(1, 2)  # [U, L·H, H']: z_ij W_ij stacked over i
    return torch.matmul(v.flatten(1), wz)  # SNR-Trans: u_j = Σ_i z_ij W_ij v_i


@register_model("snr")
class SNR(MultiTaskModel):
    """Lower sub-networks -> coding-variable routing (trans | aver) -> one upper sub-network per task -> towers."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        variant: str = "trans",
        num_lower: int = 3,
        lower: tuple[int, ...] = (256,),
        upper: tuple[int, ...] = (128,),
        trans_dim: int = 128,
        l0_weight: float = 1e-3,
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if variant not in VARIANTS:
            raise ConfigError(f"model 'snr': variant must be one of {list(VARIANTS)}, got {variant!r}")
        if num_lower < 1 or not lower or l0_weight < 0:
            raise ConfigError("model 'snr': need num_lower >= 1, a non-empty lower and l0_weight >= 0")
        self.variant, self.l0_weight = variant, l0_weight
        k = len(self.tasks)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.lower = ExpertGroup(num_lower, self.embedding.output_dim, list(lower), dropout, activation)  # v_i
        h = self.lower.out_dim
        self.z = HardConcreteGates((k, num_lower))  # coding variables z_ij
        self.w: nn.Parameter | None = None
        if variant == "trans":
            w = torch.empty(k, num_lower, h, trans_dim).uniform_(-1 / math.sqrt(h), 1 / math.sqrt(h))
            self.w = nn.Parameter(w)  # W_ij
        in_upper = trans_dim if variant == "trans" else h
        self.upper = ExpertGroup(k, in_upper, list(upper), dropout, activation)
        self.towers = Towers(self.tasks, self.upper.out_dim, list(tower), dropout, activation)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        v = self.lower(self.embedding.flat(batch))  # [B, L, H]
        u = route(v, self.z(), self.w)  # [K, B, H']
        reps = self.upper(u)  # [B, K, H'']
        logits = self.towers(list(reps.unbind(1)))
        aux = {"l0": self.l0_weight * self.z.expected_l0()} if self.l0_weight > 0 else {}
        return ModelOutput(logits=logits, aux_losses=aux)
