"""MLP_Shared (Caruana 1997; STAN section 4.1.2): a shared bottom MLP under one tower per task.

``per`` chooses what the towers are specific to:

- ``task`` (default): one tower per task, the original model.
- ``scenario``: one tower per scenario, picked by the row's scenario. The multi-scenario papers (SFPNet's
  baselines, Scenario-Wise-Rec) use Shared-Bottom this way with a single task: each scenario is a "task"
  with its own one-logit tower. Ours, for K tasks: each scenario tower ends in K logits (one per task).
- ``task_scenario``: one tower per (task, scenario) pair (MMLRec's multi-task multi-scenario form).
"""

from __future__ import annotations

from torch import Tensor

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.backbones import SharedBottomBackbone, SlotModel
from mtlbench.models.layers import FeatureEmbedding
from mtlbench.registry import register_model


@register_model("shared_bottom")
class SharedBottom(SlotModel):
    """y^k = h^k(MLP(x)): one bottom MLP shared by every task, one tower per task (or slot)."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        bottom: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
        per: str = "task",
    ) -> None:
        super().__init__(schema, per)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.bottom = SharedBottomBackbone(self.embedding.output_dim, list(bottom), None, dropout, activation)
        self.towers = self.make_towers(self.bottom.out_dim, list(tower), dropout, activation)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.read_towers(self.bottom(self.embedding.flat(batch)), self.scenarios(batch))
