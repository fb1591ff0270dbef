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

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import (
    ExpertGroup,
    FeatureEmbedding,
    ScenarioTowers,
    Towers,
    check_per,
    pick_slot,
    row_scenarios,
)
from mtlbench.registry import register_model


@register_model("mmoe")
class MMoE(MultiTaskModel):
    """f^k(x) = sum_i g^k(x)_i f_i(x), g^k(x) = softmax(W_g^k x); y^k = h^k(f^k(x))."""

    def __init__(self, schema: DatasetSchema, embedding_dim: int = 16, num_experts: int = 4,
                 expert: tuple[int, ...] = (256, 128), tower: tuple[int, ...] = (64,), dropout: float = 0.0,
                 activation: str = "relu", per: str = "task") -> None:
        num_gates = check_per(type(self).__name__, schema, per)
        super().__init__(schema)
        self.per = per
        if per != "task":
            self.required_fields = ("scenario",)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.output_dim
        self.experts = ExpertGroup(num_experts, d, list(expert), dropout, activation)
        self.gates = nn.Linear(d, num_experts * num_gates)  # all gates in one matmul
        if per == "task":
            self.towers = Towers(self.tasks, self.experts.out_dim, list(tower), dropout, activation)
        else:
            self.towers = ScenarioTowers(self.tasks, schema.num_scenarios, per, self.experts.out_dim,
                                         list(tower), dropout, activation)
        self.num_experts = num_experts

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = self.embedding.flat(batch)
        experts = self.experts(x)  # [B, E, H]
        b, k, e = len(x), len(self.tasks), self.num_experts
        if self.per == "task":
            gates = torch.softmax(self.gates(x).view(b, k, e), dim=-1)
            mixed = torch.bmm(gates, experts)  # [B, K, H]
            return self.towers(mixed.unbind(1))
        s = row_scenarios(self.schema, batch)
        n = self.schema.num_scenarios
        if self.per == "scenario":  # the row's scenario gate: [B, S, E] -> [B, 1, E]
            logits = pick_slot(self.gates(x).view(b, n, e), s).unsqueeze(1)
        else:  # gate (k, s) is slot k*S + s: [B, K, S, E] -> [B, S, K, E] -> the row's [B, K, E]
            logits = pick_slot(self.gates(x).view(b, k, n, e).transpose(1, 2), s)
        mixed = torch.bmm(torch.softmax(logits, dim=-1), experts)  # [B, 1 or K, H]
        if self.per == "scenario":
            return self.towers(mixed[:, 0], s)
        # tower (k, s) reads task k's mixture: one input per tower, [K*S, B, H]
        return self.towers(mixed.transpose(0, 1).repeat_interleave(n, dim=0), s)
