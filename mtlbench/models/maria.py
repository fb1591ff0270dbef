"""MARIA (Tian et al., SIGIR 2023): multi-scenario ranking with adaptive feature learning.

MARIA injects the scenario into the *bottom* of the network, where the field representations are formed, and
keeps the top simple. Its four stages, bottom to top:

1. **Feature scaling (FS)**: a scaling factor for every feature element, computed from the scenario, highlights
   the fields relevant to the scenario and suppresses the others: ``α = γ · σ(W₂ ReLU(W₁ e_s + b₁) + b₂)``
   (``γ = 2``: factors in (0, 2), starting near 1), ``Q̃ = α ⊙ Q`` over the field embeddings ``Q``.
2. **Feature refinement (FR)**: each field ``i`` has its own set of ``R`` refiners (``r_ik(q) = φ(W_ik q + b_ik)``)
   and an automatic refiner *selector* that picks among them in a scenario-aware way,
   ``π_i = softmax(W^sel_i (q̃_i ⊕ e_s) + b^sel_i)``, ``q̂_i = Σ_k π_ik r_ik(q̃_i)``.
3. **Feature correlation modelling (FCM)**: the correlations across fields are derived explicitly as
   complementary signals: the pairwise inner products ``c_ij = <q̂_i, q̂_j>`` for ``i < j`` (PNN-style), and
   the bottom output is ``H = q̂_1 ⊕ … ⊕ q̂_F ⊕ c``.
4. **Scenario-aware prediction**: a simple MoE on ``H`` (shared experts, a softmax gate per scenario, the row's
   scenario's gate mixes) with a tower per scenario plus an additional *scenario-shared* tower; the logit is
   the sum of the row's scenario tower and the shared tower.

Provenance: the paper's full text was not available when this was written; the structure above (FS per
element from the scenario, per-field refiners chosen by a scenario-aware selector, explicit cross-field
correlations, a simple MoE with an extra scenario-shared tower) is the paper's as its abstract and published
summaries state it; the exact forms (the 2·σ gate of FS, the softmax selector on ``q̃_i ⊕ e_s``, inner products
for FCM, adding the two towers' logits) are our readings, each a config switch or a setting below.

Choices (all in config): ``scenario_fields`` feed ``e_s`` (default: the scenario field); ``scaling_hidden`` (64)
and ``gate_scale`` (2) of FS; ``num_refiners`` R (4) and ``refiner_activation`` φ (``tanh``: keeps the sign for the
correlations) of FR; ``correlation: false`` drops FCM; MoE ``num_experts`` (4) × ``expert`` ([256, 128]) and
``tower`` ([64]) as the repo's MMoE. Numeric features are fields ``x_f · v_f``; a sequence field is the mean of
its embeddings. Multi-task form (the paper ranks with one label): each scenario tower and the shared tower end
in one logit per task.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.backbones import MMoEBackbone
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.fields import FieldEmbedding
from mtlbench.models.layers import ACTIVATIONS, ScenarioTowers, Towers
from mtlbench.models.layers import activation as make_activation
from mtlbench.models.pepnet import GateNU
from mtlbench.models.star import check_fields, lookup_fields, scenario_ids
from mtlbench.registry import register_model


class FeatureRefinement(nn.Module):
    """FR: per field ``R`` refiners ``φ(W_ik q + b_ik)`` and a softmax selector on ``q̃_i ⊕ e_s`` (batched einsums)."""

    def __init__(self, num_fields: int, dim: int, scenario_dim: int, num_refiners: int, act: str = "tanh") -> None:
        super().__init__()
        f, r = num_fields, num_refiners
        w = torch.empty(f, r, dim, dim)
        for i in range(f):
            for k in range(r):
                nn.init.kaiming_uniform_(w[i, k].T, a=math.sqrt(5))  # nn.Linear's init, refiner by refiner
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.empty(f, r, dim).uniform_(-1 / math.sqrt(dim), 1 / math.sqrt(dim)))
        sel_in = dim + scenario_dim
        bound = 1 / math.sqrt(sel_in)
        self.sel_weight = nn.Parameter(torch.empty(f, sel_in, r).uniform_(-bound, bound))
        self.sel_bias = nn.Parameter(torch.empty(f, r).uniform_(-bound, bound))
        self.act = make_activation(act)

    def selection(self, q: Tensor, e_s: Tensor) -> Tensor:
        """π [B, F, R]: ``softmax(W^sel_i (q̃_i ⊕ e_s) + b^sel_i)`` per field."""
        x = torch.cat([q, e_s.unsqueeze(1).expand(-1, q.shape[1], -1)], dim=-1)
        return torch.softmax(torch.einsum("bfi,fir->bfr", x, self.sel_weight) + self.sel_bias, dim=-1)

    def forward(self, q: Tensor, e_s: Tensor) -> Tensor:
        refined = self.act(torch.einsum("bfd,frde->bfre", q, self.weight) + self.bias)  # r_ik(q̃_i): [B, F, R, D]
        return (self.selection(q, e_s).unsqueeze(-1) * refined).sum(2)  # q̂_i = Σ_k π_ik r_ik(q̃_i)


def pairwise_inner_products(q: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """FCM: ``<q_i, q_j>`` for the pairs (rows[n], cols[n]) -> [B, n_pairs]."""
    return torch.bmm(q, q.transpose(1, 2))[:, rows, cols]


@register_model("maria")
class MARIA(MultiTaskModel):
    """FS (scenario scaling) -> FR (scenario-selected refiners) -> FCM (field correlations) -> MoE + towers."""

    required_fields = ("scenario",)
    pair_rows: Tensor
    pair_cols: Tensor

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        scenario_fields: list[str] | None = None,
        scaling_hidden: int = 64,
        gate_scale: float = 2.0,
        num_refiners: int = 4,
        refiner_activation: str = "tanh",
        correlation: bool = True,
        num_experts: int = 4,
        expert: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if num_refiners < 1:
            raise ConfigError(f"maria: num_refiners must be >= 1, got {num_refiners}")
        if refiner_activation not in ACTIVATIONS:
            raise ConfigError(
                f"maria: refiner_activation must be one of {list(ACTIVATIONS)}, got {refiner_activation!r}"
            )
        assert schema.scenario_field is not None  # required_fields: checked by MultiTaskModel.__init__
        self.scenario_fields = list(scenario_fields) if scenario_fields is not None else [schema.scenario_field]
        if not self.scenario_fields:
            raise ConfigError("maria: scenario_fields must name at least one field")
        check_fields("maria", schema, self.scenario_fields, "scenario_fields")
        self.fields = FieldEmbedding(schema, embedding_dim)
        f, d = self.fields.num_fields, embedding_dim
        s_dim = len(self.scenario_fields) * d
        self.scaling = GateNU(s_dim, f * d, scaling_hidden, gate_scale)  # FS
        self.refinement = FeatureRefinement(f, d, s_dim, num_refiners, refiner_activation)  # FR
        rows, cols = torch.triu_indices(f, f, offset=1)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        self.correlation = correlation
        h_dim = f * d + (len(rows) if correlation else 0)
        s = schema.num_scenarios
        self.moe = MMoEBackbone(len(self.tasks), h_dim, num_experts, list(expert), dropout, activation, "scenario", s)
        self.towers = ScenarioTowers(self.tasks, s, "scenario", self.moe.out_dim, list(tower), dropout, activation)
        self.shared_tower = Towers(self.tasks, self.moe.out_dim, list(tower), dropout, activation)

    def scenario_embedding(self, batch: dict[str, Tensor]) -> Tensor:
        """``e_s`` [B, len(scenario_fields) · D]."""
        return lookup_fields(self.fields.embedding, batch, self.scenario_fields).flatten(1)

    def bottom(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(Q̃ after FS, Q̂ after FR, H after FCM)."""
        q = self.fields(batch)  # Q: [B, F, D]
        e_s = self.scenario_embedding(batch)
        q_scaled = self.scaling(e_s).view_as(q) * q  # FS: Q̃ = α ⊙ Q
        q_refined = self.refinement(q_scaled, e_s)  # FR
        h = q_refined.flatten(1)
        if self.correlation:  # FCM
            h = torch.cat([h, pairwise_inner_products(q_refined, self.pair_rows, self.pair_cols)], dim=1)
        return q_scaled, q_refined, h

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        p = scenario_ids(self.schema, batch)
        _, _, h = self.bottom(batch)
        m = self.moe(h, p)  # the row's scenario gate mixes the shared experts
        assert isinstance(m, Tensor)
        own = self.towers(m, p)  # the row's scenario tower
        shared = self.shared_tower([m] * len(self.tasks))  # the scenario-shared tower
        return {t: own[t] + shared[t] for t in self.tasks}
