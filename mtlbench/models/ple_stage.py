"""PLE_stage (STAN paper, section 4.1.2): vanilla PLE plus the rule-based user stage as an input feature.

"Enhances the vanilla PLE structure by adding pre-knowledge of stage information. Stage information is
combined with existing features." The stage is the rule of section 2.1 (``rule_stage`` in
``mtlbench/data/lifecycle_inputs.py``: the user's CTR / staytime / CVR rates over its training rows
strictly earlier than the row, split at the medians of the per-user rates into New / Wander / Stick /
Loyal, plus an id for rows without earlier training rows; an entire-space CVR is taken per click), so a
training row's stage never includes its own label. It is embedded like any categorical feature and
concatenated to the PLE input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.lifecycle_inputs import NUM_RULE_STAGES
from mtlbench.data.schema import DatasetSchema
from mtlbench.models.backbones import PLEBackbone
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import FeatureEmbedding, Towers
from mtlbench.registry import register_model

RULE_STAGE = "rule_stage"


@register_model("ple_stage")
class PLEStage(MultiTaskModel):
    """PLE on ``[x, e(stage)]`` with ``e`` a learned embedding of the rule-based stage."""

    required_inputs = (RULE_STAGE,)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        num_levels: int = 2,
        num_specific_experts: int = 1,
        num_shared_experts: int = 2,
        expert: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.stage_embedding = nn.Embedding(NUM_RULE_STAGES, embedding_dim)
        nn.init.normal_(self.stage_embedding.weight, std=1.0 / embedding_dim**0.5)
        self.backbone = PLEBackbone(
            len(self.tasks),
            self.embedding.output_dim + embedding_dim,
            num_levels,
            num_specific_experts,
            num_shared_experts,
            list(expert),
            dropout,
            activation,
        )
        self.towers = Towers(self.tasks, self.backbone.out_dim, list(tower), dropout, activation)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = torch.cat([self.embedding.flat(batch), self.stage_embedding(batch[RULE_STAGE].long())], dim=1)
        return self.towers(self.backbone(x))
