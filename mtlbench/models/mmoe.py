"""MMoE (Ma et al., KDD 2018): shared experts mixed by one softmax gate per task."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import ExpertGroup, FeatureEmbedding, Towers
from mtlbench.registry import register_model


@register_model("mmoe")
class MMoE(MultiTaskModel):
    """f^k(x) = sum_i g^k(x)_i f_i(x), g^k(x) = softmax(W_g^k x); y^k = h^k(f^k(x))."""

    def __init__(self, schema: DatasetSchema, embedding_dim: int = 16, num_experts: int = 4,
                 expert: tuple[int, ...] = (256, 128), tower: tuple[int, ...] = (64,), dropout: float = 0.0,
                 activation: str = "relu") -> None:
        super().__init__(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.output_dim
        self.experts = ExpertGroup(num_experts, d, list(expert), dropout, activation)
        self.gates = nn.Linear(d, num_experts * len(self.tasks))  # all task gates in one matmul
        self.towers = Towers(self.tasks, self.experts.out_dim, list(tower), dropout, activation)
        self.num_experts = num_experts

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = self.embedding.flat(batch)
        experts = self.experts(x)  # [B, E, H]
        gates = torch.softmax(self.gates(x).view(len(x), len(self.tasks), self.num_experts), dim=-1)
        mixed = torch.bmm(gates, experts)  # [B, K, H]
        return self.towers(mixed.unbind(1))
