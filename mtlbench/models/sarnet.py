"""SAR-Net (Shen et al., CIKM 2021): Scenario-Aware Ranking Network for hundreds of travel scenarios.

The model reads like the paper's method section (equations named by what they compute):

1. **Embedding**: user, item and scenario-context fields; the user's behaviour sequence (items the user
   interacted with, across scenarios); the scenario representation ``s`` (embedding of the scenario fields)
   and the target item ``q``.
2. **Cross-scenario behaviour extraction**: two attention modules read the behaviour sequence ``b_1 … b_L``:

   - *scenario-aware attention*: the scenario is the query, so the same history is read differently in
     every scenario: ``h_s = Σ_i softmax_i((s W_Q^s)(b_i W_K^s)ᵀ / √d) b_i W_V^s``;
   - *item-aware attention*: the target item is the query: ``h_q`` likewise with ``q W_Q^q``.

   Padded positions get weight exactly 0 (masked before the softmax); a row with no behaviour gets
   ``h = 0``.
3. **Scenario-specific transformation**: the encoded input ``x = [fields ⊕ h_s ⊕ h_q ⊕ numeric]`` is
   re-scaled and shifted per scenario, ``x_s = x ⊙ w_s + b_s``.
4. **Debias experts**: ``m`` scenario-shared experts and ``n`` experts specific to each scenario, all MLPs
   over ``x_s``; a row runs the shared experts and its scenario's own.
5. **Multi-scenario gating**: a gate of the row's scenario mixes its ``m + n`` experts:
   ``g = softmax(x_s G_s)``, ``z = Σ_j g_j o_j``. Shared experts carry what transfers across scenarios, the
   specific ones what does not; the gate decides the share per row.
6. **Debiasing**: the paper re-weighs predictions in the debias experts with a per-sample Fairness
   Coefficient (FC) derived from manual promotion interventions in its logs. Our datasets record no such
   intervention, so no FC is used. What we keep of the debias idea is optional: with ``debias_fields``
   (default none), a shallow bias tower over those fields' embeddings (which then leave the main input)
   adds a logit *during training only* and is dropped at evaluation, so bias-carrying features (e.g. a
   position) explain the bias in the logs without entering the served score. This is our reading, not the
   paper's FC.

Multi-task form (the paper ranks with one objective): one gate per (scenario, task) over the same experts and
one MLP tower per task on its mixture. With one task this is the paper's model.

Choices the paper leaves open (all in config): the attention is single-head scaled dot-product with learned
projections of width ``attention_dim``; the paper tags each behaviour with the scenario it happened in, our
sequences carry item ids only, so the keys are the behaviours' item embeddings; ``w_s`` starts at 1 and
``b_s`` at 0 (every scenario starts from the untransformed input); expert counts and widths (``shared_experts``,
``specific_experts``, ``expert``); the gate is linear in ``x_s``.

Departures from Scenario-Wise-Rec's ``Sarnet`` (read, not copied): it has no behaviour-sequence attention
at all (neither module of step 2), one gate shared by all scenarios, and initialises the scenario
transform randomly (xavier scales, ``U(0, 1)`` shifts); we follow the paper's two attention modules and
its multi-scenario gating.

Sources: written offline from the paper's abstract-level description of its modules (two attention modules,
scenario-specific linear transformation, shared / specific debias experts, multi-scenario gating, FC) and the
public Scenario-Wise-Rec code; the exact attention form (scaled dot product) is our reading.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import ExpertGroup, FeatureEmbedding, Towers
from mtlbench.models.scenario_blocks import ScenarioExperts, linear_init, per_scenario_linear
from mtlbench.models.star import check_fields, lookup_fields, scenario_ids
from mtlbench.registry import register_model


class SequenceAttention(nn.Module):
    """Scaled dot-product attention of one query over a padded sequence: ``Σ_i softmax_i(q̂ k̂_iᵀ/√d) v̂_i``."""

    def __init__(self, query_dim: int, item_dim: int, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(query_dim, dim, bias=False)  # W_Q
        self.k = nn.Linear(item_dim, dim, bias=False)  # W_K
        self.v = nn.Linear(item_dim, item_dim, bias=False)  # W_V
        self.scale = 1.0 / math.sqrt(dim)

    def weights(self, query: Tensor, seq: Tensor, mask: Tensor) -> Tensor:
        """Attention weights [B, L]: softmax over the real behaviours, exactly 0 on padding."""
        scores = torch.einsum("bd,bld->bl", self.q(query), self.k(seq)) * self.scale
        w = torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=1)
        return w * mask.to(w.dtype)  # exactly 0 on padding (and everywhere for a row with no behaviour)

    def forward(self, query: Tensor, seq: Tensor, mask: Tensor) -> Tensor:
        return torch.einsum("bl,bld->bd", self.weights(query, seq, mask), self.v(seq))


@register_model("sarnet")
class SARNet(MultiTaskModel):
    """Scenario / item attention over behaviours -> scenario transform -> shared + specific experts, gated."""

    required_fields = ("scenario", "sequence", "item")

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        attention_dim: int = 16,
        scenario_fields: list[str] | None = None,
        sequence: str | None = None,
        shared_experts: int = 4,
        specific_experts: int = 2,
        expert: tuple[int, ...] = (128, 64),
        tower: tuple[int, ...] = (64,),
        debias_fields: list[str] | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        seqs = [f.name for f in schema.sequences]
        self.sequence_name = sequence if sequence is not None else seqs[0]
        if self.sequence_name not in seqs:
            raise ConfigError(
                f"sarnet: sequence {self.sequence_name!r} is not a sequence field of dataset {schema.name!r}; "
                f"sequence fields: {seqs}"
            )
        if shared_experts < 0 or specific_experts < 0 or shared_experts + specific_experts < 1 or not expert:
            raise ConfigError(
                "sarnet: need shared_experts, specific_experts >= 0 with at least one expert, and an expert layer; "
                f"got shared_experts={shared_experts}, specific_experts={specific_experts}, expert={list(expert)}"
            )
        assert schema.scenario_field is not None and schema.item_field is not None  # required_fields
        self.scenario_fields = list(dict.fromkeys([schema.scenario_field, *(scenario_fields or [])]))
        check_fields("sarnet", schema, self.scenario_fields, "scenario_fields")
        self.debias_fields = list(debias_fields or [])
        check_fields("sarnet", schema, self.debias_fields, "debias_fields")
        names = [f.name for f in schema.categorical if f.name not in self.debias_fields]
        names += [s for s in seqs if s != self.sequence_name]  # other sequences: mean-pooled fields
        self.embedding = FeatureEmbedding(schema, embedding_dim, fields=names)
        d, s_dim = embedding_dim, len(self.scenario_fields) * embedding_dim
        self.scenario_attention = SequenceAttention(s_dim, d, attention_dim)  # query: scenario s
        self.item_attention = SequenceAttention(d, d, attention_dim)  # query: target item q
        in_dim = self.embedding.output_dim + 2 * d
        self.num_scenarios = schema.num_scenarios
        self.scale = nn.Parameter(torch.ones(self.num_scenarios, in_dim))  # w_s
        self.shift = nn.Parameter(torch.zeros(self.num_scenarios, in_dim))  # b_s
        self.shared = ExpertGroup(shared_experts, in_dim, list(expert), dropout, activation) if shared_experts else None
        self.specific = (
            ScenarioExperts(self.num_scenarios, specific_experts, in_dim, list(expert), dropout, activation)
            if specific_experts
            else None
        )
        self.num_experts = shared_experts + specific_experts
        k = len(self.tasks)
        gate_w, gate_b = linear_init(self.num_scenarios, in_dim, k * self.num_experts)
        self.gate_weight, self.gate_bias = gate_w, gate_b  # G_s: one gate per (scenario, task)
        self.towers = Towers(self.tasks, list(expert)[-1], list(tower), dropout, activation)
        self.bias_towers = (
            nn.Linear(len(self.debias_fields) * embedding_dim, k) if self.debias_fields else None
        )  # training-only debias logits

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(x_s [B, in]: the scenario-transformed input, the rows' scenarios [B])."""
        p = scenario_ids(self.schema, batch)
        seq, mask = self.embedding.sequence(batch, self.sequence_name)
        s = lookup_fields(self.embedding, batch, self.scenario_fields).flatten(1)
        assert self.schema.item_field is not None
        q = lookup_fields(self.embedding, batch, [self.schema.item_field]).squeeze(1)
        h_s = self.scenario_attention(s, seq, mask)  # scenario-aware attention
        h_q = self.item_attention(q, seq, mask)  # item-aware attention
        x = torch.cat([self.embedding.flat(batch), h_s, h_q], dim=1)
        return x * self.scale[p] + self.shift[p], p  # x_s = x ⊙ w_s + b_s

    def experts(self, x: Tensor, p: Tensor) -> Tensor:
        """The row's ``m`` shared and ``n`` own-scenario expert outputs [B, m + n, h]."""
        parts = []
        if self.shared is not None:
            parts.append(self.shared(x))
        if self.specific is not None:
            parts.append(self.specific(x, p))
        return torch.cat(parts, dim=1)

    def gates(self, x: Tensor, p: Tensor) -> Tensor:
        """Multi-scenario gating: ``g = softmax(x_s G_s)`` per task -> [B, K, m + n]."""
        logits = per_scenario_linear(x, self.gate_weight, self.gate_bias, p)
        return torch.softmax(logits.view(len(x), len(self.tasks), self.num_experts), dim=-1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x, p = self.encode(batch)
        z = torch.bmm(self.gates(x, p), self.experts(x, p))  # z_t = Σ_j g_tj o_j   [B, K, h]
        out = self.towers(list(z.unbind(1)))
        if self.bias_towers is not None and self.training:  # debias tower: training only
            bias = self.bias_towers(lookup_fields(self.embedding, batch, self.debias_fields).flatten(1))
            out = {t: v + bias[:, i] for i, (t, v) in enumerate(out.items())}
        return out
