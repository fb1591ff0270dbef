"""MLP_Single (STAN paper, section 4.1.2): an independent MLP per task, each with its own embeddings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import MLP, FeatureEmbedding
from mtlbench.registry import register_model


@register_model("single_task")
class SingleTask(MultiTaskModel):
    """K separate networks trained jointly only in the sense that they share a batch: no parameter is shared."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        hidden: tuple[int, ...] = (256, 128, 64),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        embeddings = [FeatureEmbedding(schema, embedding_dim) for _ in self.tasks]
        self.embeddings = nn.ModuleList(embeddings)
        d = embeddings[0].output_dim
        self.mlps = nn.ModuleList(MLP(d, list(hidden), 1, dropout, activation) for _ in self.tasks)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        embeddings = cast("Iterable[FeatureEmbedding]", self.embeddings)  # the ModuleList of __init__
        return {t: mlp(emb.flat(batch)).squeeze(-1) for t, emb, mlp in zip(self.tasks, embeddings, self.mlps)}
