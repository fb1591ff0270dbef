"""A tiny model a third party might add: a shared bottom whose output is gated per task."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import MLP, FeatureEmbedding, Towers
from mtlbench.registry import register_model


@register_model("example_gated")
class ExampleGated(MultiTaskModel):
    """h = MLP(x); each task k sees h ⊙ sigmoid(W_k x) before its tower."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 8,
        bottom: tuple[int, ...] = (64,),
        tower: tuple[int, ...] = (32,),
    ) -> None:
        super().__init__(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.bottom = MLP(self.embedding.output_dim, list(bottom))
        self.gates = nn.Linear(self.embedding.output_dim, self.bottom.out_dim * len(self.tasks))
        self.towers = Towers(self.tasks, self.bottom.out_dim, list(tower))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = self.embedding.flat(batch)
        h = self.bottom(x)
        gates = torch.sigmoid(self.gates(x)).view(len(x), len(self.tasks), -1)
        return self.towers(list((h.unsqueeze(1) * gates).unbind(1)))
