"""MLP_Shared (Caruana 1997; STAN section 4.1.2): a shared bottom MLP under one tower per task."""

from __future__ import annotations

from torch import Tensor

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import MLP, FeatureEmbedding, Towers
from mtlbench.registry import register_model


@register_model("shared_bottom")
class SharedBottom(MultiTaskModel):
    def __init__(self, schema: DatasetSchema, embedding_dim: int = 16, bottom: tuple[int, ...] = (256, 128),
                 tower: tuple[int, ...] = (64,), dropout: float = 0.0, activation: str = "relu") -> None:
        super().__init__(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.bottom = MLP(self.embedding.output_dim, list(bottom), None, dropout, activation)
        self.towers = Towers(self.tasks, self.bottom.out_dim, list(tower), dropout, activation)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        h = self.bottom(self.embedding.flat(batch))
        return self.towers([h] * len(self.tasks))
