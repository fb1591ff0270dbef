"""PLE (Tang et al., RecSys 2020): stacked Customized Gate Control (CGC) levels.

Each level has task-specific experts per task and shared experts. Task k's gate mixes its own experts
with the shared ones (STAN Eq. 1-3: w^k = softmax(W^k x), H^k = [Exp_sp^k, Exp_sh], g^k = w^k ⊙ H^k);
at every level but the last, a shared gate mixes all experts to feed the next level's shared experts.

``per`` chooses what the CGC's specific slots (specific experts + gate) and the towers belong to:

- ``task`` (default): one slot and one tower per task, the original model.
- ``scenario``: the CGC "task" slots become scenario slots: specific experts, gate and tower per scenario,
  and a row reads its scenario's slot. The multi-scenario papers (SFPNet's baselines, Scenario-Wise-Rec)
  use PLE this way with a single task: each scenario is a "task" with a one-logit tower. Ours, for K
  tasks: the scenario's tower ends in K logits (one per task).
- ``task_scenario``: one slot and one tower per (task, scenario) pair (MMLRec's multi-task multi-scenario
  form); a row uses the K slots of its scenario.

Every slot runs on every row (batched, no loop over rows), then each row's own slot is gathered: the
specific experts cost S (or K·S) slots' compute instead of K, in exchange for no batch splitting.
"""

from __future__ import annotations

from torch import Tensor

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.backbones import CGCLevel, PLEBackbone, SlotModel
from mtlbench.models.layers import FeatureEmbedding
from mtlbench.registry import register_model

__all__ = ["PLE", "CGCLevel", "PLEBackbone"]  # CGCLevel, PLEBackbone: defined in backbones.py, imported from here


@register_model("ple")
class PLE(SlotModel):
    """Embeddings -> ``num_levels`` CGC levels (one specific slot per task, scenario or pair) -> towers."""

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
        per: str = "task",
    ) -> None:
        super().__init__(schema, per)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.backbone = PLEBackbone(
            self.num_slots,
            self.embedding.output_dim,
            num_levels,
            num_specific_experts,
            num_shared_experts,
            list(expert),
            dropout,
            activation,
        )
        self.towers = self.make_towers(self.backbone.out_dim, list(tower), dropout, activation)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        reps = self.backbone(self.embedding.flat(batch))  # one per slot: task k, scenario s, or (k, s) at k*S + s
        return self.read_towers(reps, self.scenarios(batch))
