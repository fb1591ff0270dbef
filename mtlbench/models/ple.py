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

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import ExpertGroup, FeatureEmbedding, ScenarioTowers, Towers, check_per, row_scenarios
from mtlbench.registry import register_model


class CGCLevel(nn.Module):
    """One extraction level. Inputs: one tensor per task (slot) plus one shared tensor (all [B, in])."""

    def __init__(self, num_tasks: int, in_dim: int, num_specific: int, num_shared: int, hidden: list[int],
                 last: bool, dropout: float = 0.0, act: str = "relu") -> None:
        super().__init__()
        self.num_tasks, self.ns, self.nh, self.last = num_tasks, num_specific, num_shared, last
        self.specific = nn.ModuleList(ExpertGroup(num_specific, in_dim, hidden, dropout, act)
                                      for _ in range(num_tasks))
        self.shared = ExpertGroup(num_shared, in_dim, hidden, dropout, act)
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, num_specific + num_shared) for _ in range(num_tasks))
        self.shared_gate = None if last else nn.Linear(in_dim, num_tasks * num_specific + num_shared)
        self.out_dim = self.shared.out_dim

    def forward(self, task_in: list[Tensor], shared_in: Tensor) -> tuple[list[Tensor], Tensor | None]:
        shared = self.shared(shared_in)                               # [B, nh, H]
        specific = [e(x) for e, x in zip(self.specific, task_in)]      # K x [B, ns, H]
        outs = []
        for k, x in enumerate(task_in):
            h = torch.cat([specific[k], shared], dim=1)                # Eq. 2: H^k = [Exp_sp^k, Exp_sh]
            w = torch.softmax(self.task_gates[k](x), dim=-1)           # Eq. 1: w^k = softmax(W^k x)
            outs.append(torch.bmm(w.unsqueeze(1), h).squeeze(1))       # Eq. 3: weighted sum of experts
        if self.shared_gate is None:
            return outs, None
        everything = torch.cat([*specific, shared], dim=1)
        w = torch.softmax(self.shared_gate(shared_in), dim=-1)
        return outs, torch.bmm(w.unsqueeze(1), everything).squeeze(1)


@register_model("ple")
class PLE(MultiTaskModel):
    def __init__(self, schema: DatasetSchema, embedding_dim: int = 16, num_levels: int = 1,
                 num_specific_experts: int = 1, num_shared_experts: int = 2, expert: tuple[int, ...] = (256, 128),
                 tower: tuple[int, ...] = (64,), dropout: float = 0.0, activation: str = "relu",
                 per: str = "task") -> None:
        num_slots = check_per(type(self).__name__, schema, per)
        super().__init__(schema)
        self.per = per
        if per != "task":
            self.required_fields = ("scenario",)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.backbone = PLEBackbone(num_slots, self.embedding.output_dim, num_levels, num_specific_experts,
                                    num_shared_experts, list(expert), dropout, activation)
        if per == "task":
            self.towers = Towers(self.tasks, self.backbone.out_dim, list(tower), dropout, activation)
        else:
            self.towers = ScenarioTowers(self.tasks, schema.num_scenarios, per, self.backbone.out_dim,
                                         list(tower), dropout, activation)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        reps = self.backbone(self.embedding.flat(batch))
        if self.per == "task":
            return self.towers(reps)
        # slot j's representation feeds tower j (slot order: scenario s, or task k & scenario s at k*S + s)
        return self.towers(torch.stack(reps), row_scenarios(self.schema, batch))


class PLEBackbone(nn.Module):
    """``num_levels`` CGC levels; returns one representation per task (the towers' inputs).

    ``num_tasks`` is the number of specific slots: tasks for plain PLE, scenarios or (task, scenario) pairs
    for ``PLE(per=...)``.
    """

    def __init__(self, num_tasks: int, in_dim: int, num_levels: int, num_specific: int, num_shared: int,
                 expert: list[int], dropout: float = 0.0, act: str = "relu") -> None:
        super().__init__()
        self.num_tasks = num_tasks
        levels = []
        for i in range(num_levels):
            levels.append(CGCLevel(num_tasks, in_dim, num_specific, num_shared, expert,
                                   last=i == num_levels - 1, dropout=dropout, act=act))
            in_dim = levels[-1].out_dim
        self.levels = nn.ModuleList(levels)
        self.out_dim = in_dim

    def forward(self, x: Tensor) -> list[Tensor]:
        task_in, shared_in = [x] * self.num_tasks, x
        for level in self.levels:
            task_in, shared_in = level(task_in, shared_in)
        return task_in
