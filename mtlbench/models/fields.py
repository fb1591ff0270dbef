"""Every input of a schema as one embedding-wide *field vector*, for the models that work field by field.

:class:`FeatureEmbedding` concatenates categorical embeddings and appends numeric values as they are; models that
score pairs of fields (DeepFM's FM part, MARIA's feature correlations) or re-weight fields one by one need the
numeric features as field vectors too. :class:`FieldEmbedding` gives them the factorisation-machine treatment
of a real-valued feature, ``x_f · v_f`` with a learned vector ``v_f`` per numeric feature.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.layers import FeatureEmbedding


class FieldEmbedding(nn.Module):
    """Field vectors [B, F, D]: categorical fields, mean-pooled sequence fields, then ``x_f · v_f`` per numeric.

    ``embedding`` is the shared :class:`FeatureEmbedding` (its table serves the categorical and sequence
    fields); ``fields`` restricts it to some categorical / sequence fields as in :class:`FeatureEmbedding`.
    """

    def __init__(self, schema: DatasetSchema, dim: int, fields: list[str] | None = None) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(schema, dim, fields)
        self.num_numeric = len(schema.numeric)
        vectors = torch.randn(self.num_numeric, dim) / math.sqrt(dim)
        self.numeric = nn.Parameter(vectors) if self.num_numeric else None  # v_f of x_f · v_f
        self.dim = dim

    @property
    def num_fields(self) -> int:
        return self.embedding.num_fields + self.num_numeric

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x = self.embedding.fields(batch)
        if self.numeric is None:
            return x
        values = batch["numeric"].to(x.dtype).unsqueeze(-1)  # [B, n, 1]
        return torch.cat([x, values * self.numeric], dim=1)
