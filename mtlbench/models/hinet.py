"""HiNet (Zhou et al., ICDE 2023): hierarchical information extraction, scenarios first, then tasks.

The model reads like the paper's method section (its Fig. 1):

1. **Sub-Expert Integration (SEI)**, the unit both extraction layers' scenario modules are made of: ``n``
   sub-experts and a softmax gate over them, ``SEI(x) = Σ_i softmax(W_g x)_i · E_i(x)`` (an MMoE with one gate).
2. **Scenario extraction layer** for a sample of scenario ``i``:

   - the *scenario-shared expert* ``S^sh = SEI_sh(x)``, one SEI trained on every scenario;
   - the *scenario-specific expert* ``S_i = SEI_i(x)``, the SEI of the sample's own scenario (one per scenario);
   - the **scenario-aware attentive network (SAN)**: the other scenarios' specific experts, weighted by
     attention computed from the scenario's embedding, ``A_i = Σ_{j ≠ i} w_ij S_j`` with
     ``w_i = softmax_{j ≠ i}(W_a e_{s_i})``: what scenario ``i`` can borrow from the others, and how much;
   - the scenario representation ``C_i = S^sh ⊕ S_i ⊕ A_i``.
3. **Task extraction layer**: a CGC (PLE's customised gate control) on ``C_i``: task-specific experts for each
   task and task-shared experts, and per task a gate ``g_t = softmax(W_t C_i)`` mixing the task's own and the
   shared experts, ``T_t = Σ g_t · [E_t ⊕ E_sh]`` (:class:`~mtlbench.models.backbones.CGCLevel`).
4. one tower per task on ``T_t`` ending in the task's logit.

Choices the paper leaves open (all in config): expert widths and counts (``scenario_expert`` sub-experts
[256, 128], ``num_sub_experts`` 2 per SEI, ``task_expert`` [64] with ``num_task_specific_experts`` 1 and
``num_task_shared_experts`` 1, ``tower`` [64]); the SEI gates and the CGC gates read the layer input, the SAN
reads the scenario field's embedding from the shared table; the scenario field is also an ordinary input
feature. ``san: false`` is the paper's "w/o SAN" ablation (``C_i = S^sh ⊕ S_i``). Every scenario's SEI runs on
every row (batched) because SAN needs all of them; with one scenario, ``A_i`` is zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.backbones import CGCLevel
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import ExpertGroup, FeatureEmbedding, Towers, pick_slot
from mtlbench.models.star import lookup_fields, scenario_ids
from mtlbench.registry import register_model


class SubExpertIntegration(nn.Module):
    """``groups`` independent SEI modules on the same input, batched: each is ``n`` sub-experts mixed by its own
    softmax gate. Returns [B, groups, H]."""

    def __init__(
        self, groups: int, n: int, in_dim: int, hidden: list[int], dropout: float = 0.0, act: str = "relu"
    ) -> None:
        super().__init__()
        self.groups, self.n = groups, n
        self.experts = ExpertGroup(groups * n, in_dim, hidden, dropout, act)
        self.gates = nn.Linear(in_dim, groups * n)
        self.out_dim = self.experts.out_dim

    def forward(self, x: Tensor) -> Tensor:
        b = len(x)
        experts = self.experts(x).reshape(b, self.groups, self.n, -1)  # E_i(x) of every group
        w = torch.softmax(self.gates(x).view(b, self.groups, self.n, 1), dim=2)  # softmax(W_g x)
        return (w * experts).sum(2)  # Σ_i w_i E_i(x) (a product-sum: faster than many tiny bmm on CPU)


@register_model("hinet")
class HiNet(MultiTaskModel):
    """Scenario extraction (shared SEI, own SEI, SAN over the others' SEIs) -> task CGC -> one tower per task."""

    required_fields = ("scenario",)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        num_sub_experts: int = 2,
        scenario_expert: tuple[int, ...] = (256, 128),
        num_task_specific_experts: int = 1,
        num_task_shared_experts: int = 1,
        task_expert: tuple[int, ...] = (64,),
        tower: tuple[int, ...] = (64,),
        san: bool = True,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        assert schema.scenario_field is not None  # required_fields: checked by MultiTaskModel.__init__
        self.scenario_field, self.num_scenarios, self.use_san = schema.scenario_field, schema.num_scenarios, san
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.output_dim
        args = (num_sub_experts, d, list(scenario_expert), dropout, activation)
        self.shared_sei = SubExpertIntegration(1, *args)  # scenario-shared expert
        self.specific_sei = SubExpertIntegration(self.num_scenarios, *args)  # one scenario-specific expert each
        self.san = nn.Linear(embedding_dim, self.num_scenarios) if san else None  # W_a of the SAN
        h = self.shared_sei.out_dim
        self.task_layer = CGCLevel(
            len(self.tasks),
            (3 if san else 2) * h,
            num_task_specific_experts,
            num_task_shared_experts,
            list(task_expert),
            last=True,
            dropout=dropout,
            act=activation,
        )
        self.towers = Towers(self.tasks, self.task_layer.out_dim, list(tower), dropout, activation)

    def san_weights(self, batch: dict[str, Tensor], scenario: Tensor) -> Tensor:
        """SAN attention [B, S]: ``softmax_{j ≠ i}(W_a e_{s_i})``, exactly 0 at the row's own scenario."""
        assert self.san is not None
        e_s = lookup_fields(self.embedding, batch, [self.scenario_field]).squeeze(1)
        own = nn.functional.one_hot(scenario, self.num_scenarios).bool()
        if self.num_scenarios == 1:  # no other scenario to attend to
            return torch.zeros(own.shape, dtype=e_s.dtype, device=e_s.device)
        return torch.softmax(self.san(e_s).masked_fill(own, float("-inf")), dim=-1)

    def scenario_layer(self, batch: dict[str, Tensor]) -> Tensor:
        """The scenario representation ``C_i = S^sh ⊕ S_i ⊕ A_i`` [B, 3H] (``⊕ A_i`` dropped with ``san: false``)."""
        x = self.embedding.flat(batch)
        p = scenario_ids(self.schema, batch)
        shared = self.shared_sei(x)[:, 0]  # S^sh
        specific = self.specific_sei(x)  # S_j for every scenario j: [B, S, H]
        parts = [shared, pick_slot(specific, p)]  # S_i
        if self.san is not None:
            w = self.san_weights(batch, p)
            parts.append((w.unsqueeze(-1) * specific).sum(1))  # A_i = Σ_{j≠i} w_ij S_j
        return torch.cat(parts, dim=1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        c = self.scenario_layer(batch)
        task_reps, _ = self.task_layer([c] * len(self.tasks), c)  # task extraction layer (CGC)
        return self.towers(task_reps)
