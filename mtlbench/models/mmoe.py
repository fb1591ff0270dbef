"""MMoE (Ma et al., KDD 2018): shared experts mixed by one softmax gate per task.

``per`` chooses what the gates and towers are specific to:

- ``task`` (default): one gate and one tower per task, the original model.
- ``scenario``: one gate and one tower per scenario, picked by the row's scenario. The multi-scenario
  papers (SFPNet's baselines, Scenario-Wise-Rec) use MMoE this way with a single task: each scenario is a
  "task" with its own gate and one-logit tower. Ours, for K tasks: the scenario's gate mixes the experts
  once and the scenario's tower ends in K logits (one per task).
- ``task_scenario``: one gate and one tower per (task, scenario) pair (MMLRec's multi-task multi-scenario
  form); a row uses the K gates and towers of its scenario.
"""

from __future__ import annotations

from torch import Tensor

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.backbones import MMoEBackbone, SlotModel
from mtlbench.models.layers import FeatureEmbedding
from mtlbench.registry import register_model


@register_model("mmoe")
class MMoE(SlotModel):
    """f^k(x) = sum_i g^k(x)_i f_i(x), g^k(x) = softmax(W_g^k x); y^k = h^k(f^k(x))."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        num_experts: int = 4,
        expert: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
        per: str = "task",
    ) -> None:
        super().__init__(schema, per)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.backbone = MMoEBackbone(
            len(self.tasks),
            self.embedding.output_dim,
            num_experts,
            list(expert),
            dropout,
            activation,
            per,
            schema.num_scenarios,
        )  # experts f_i and gates g^k
        self.towers = self.make_towers(self.backbone.out_dim, list(tower), dropout, activation)  # h^k
        self.num_experts = num_experts

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        scenario = self.scenarios(batch)
        mixtures = self.backbone(self.embedding.flat(batch), scenario)  # f^k(x)
        return self.read_towers(mixtures, scenario)  # y^k = h^k(f^k(x))
