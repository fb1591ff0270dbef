"""BaseDNN: the multi-scenario baseline reviewers of earlier multi-scenario benchmarks asked for.

SFPNet (seed 003, section 5.2.1) describes it as "a multi-scenario model that shares the parameters of
the bottom layer; on top of the shared bottom, a single DNN is used for prediction across scenarios".
Here: every field, the scenario id included, is embedded as an ordinary feature; one DNN shared by all
scenarios forms the bottom; one tower per task on top (with one task, the bottom + tower is the
paper's single DNN). Nothing in it is scenario-specific, so every gain of a multi-scenario model over
it is a gain from modelling the scenario, not from using it as an input.
"""

from __future__ import annotations

from torch import Tensor

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import MLP, FeatureEmbedding, Towers
from mtlbench.registry import register_model


@register_model("base_dnn")
class BaseDNN(MultiTaskModel):
    """y_t = tower_t(DNN(E(x) ⊕ E(scenario) ⊕ numeric)); the DNN is shared by all scenarios and tasks."""

    required_fields = ("scenario",)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        dnn: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim)  # all fields, the scenario field included
        self.dnn = MLP(self.embedding.output_dim, list(dnn), None, dropout, activation)
        self.towers = Towers(self.tasks, self.dnn.out_dim, list(tower), dropout, activation)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        h = self.dnn(self.embedding.flat(batch))
        return self.towers([h] * len(self.tasks))
