"""OMoE: the one-gate Mixture-of-Experts baseline of the MMoE paper (Ma et al., KDD 2018, Sec. 4).

The paper's MoE layer y = Σ_i g(x)_i f_i(x) with a single gate: every task reads the same mixture
``y_k = h^k(Σ_i g(x)_i f_i(x))``, ``g(x) = softmax(W_g x)``. It isolates what MMoE adds (one gate per task):
with one gate the expert mix cannot differ between tasks. Experts, gate and towers are the paper's; the
expert/tower widths are ours (the same defaults as ``mmoe`` so the two compare like for like).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput, MultiTaskModel
from mtlbench.models.layers import ExpertGroup, FeatureEmbedding, Towers
from mtlbench.registry import register_model


@register_model("omoe")
class OMoE(MultiTaskModel):
    """Shared experts f_i, ONE softmax gate g shared by all tasks, one tower h^k per task."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        num_experts: int = 4,
        expert: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if num_experts < 1:
            raise ConfigError(f"model 'omoe': num_experts must be >= 1, got {num_experts}")
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.output_dim
        self.experts = ExpertGroup(num_experts, d, list(expert), dropout, activation)  # f_i
        self.gate = nn.Linear(d, num_experts)  # W_g: the one gate
        self.towers = Towers(self.tasks, self.experts.out_dim, list(tower), dropout, activation)  # h^k

    def gate_weights(self, x: Tensor) -> Tensor:
        """g(x) = softmax(W_g x) [B, E]: the same for every task."""
        return torch.softmax(self.gate(x), dim=-1)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        x = self.embedding.flat(batch)
        g = self.gate_weights(x)
        mix = torch.bmm(g.unsqueeze(1), self.experts(x)).squeeze(1)  # the one-gate MoE layer: Σ_i g_i f_i(x)
        return ModelOutput(logits=self.towers([mix] * len(self.tasks)), extras={"gate": g})
