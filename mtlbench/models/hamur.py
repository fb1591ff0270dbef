"""HAMUR (Li et al., CIKM 2023): Hyper Adapter for Multi-Domain Recommendation.

Two parts plug into a multi-domain backbone (equations named by what they compute):

1. **Domain-specific adapter**, a cell inserted after a backbone layer ``h`` (width ``m``) of domain ``d``:
   down-projection to a bottleneck of width ``r``, a non-linearity, up-projection back to ``m``, **domain
   normalisation**, and a short-cut: ``a = σ(h W_1 + b_1)``, ``o = a W_2 + b_2``,
   ``h' = h + DN_d(o)``, with ``DN_d`` normalising by domain ``d``'s statistics and scaling / shifting with
   domain ``d``'s parameters.
2. **Domain-shared hyper-network** that *generates the adapter's weights per instance*: a small MLP maps
   the instance's embedding ``x`` to an instance representation matrix ``H(x) ∈ R^{k×k}``, and low-rank
   factors turn it into the adapter's weights, ``W_1 = U_1 H(x) V_1`` (``m × r``) and
   ``W_2 = U_2 H(x) V_2`` (``r × m``). The hyper-network is shared by every domain and so carries what the
   domains share, implicitly; the factors ``U, V`` and biases belong to the domain's adapter. ``W h`` is
   computed as ``((h U) H) V``: ``O(m k + k² + k r)`` per row, no ``m × r`` matrix is ever formed.

The backbone (``backbone``): ``specific`` (default), the form the paper's experiments and the authors' code
use, gives each domain its own MLP (no explicitly shared dense layer: sharing goes through the embeddings
and the hyper-network only); ``shared`` runs one MLP for every domain, so the adapters are the only
domain-specific dense parameters. The adapter cells sit after the last ``adapters`` hidden layers.

Multi-task form (the paper predicts CTR only): the adapted representation feeds one tower per task
(``tower`` hidden layers, then a logit); with the ``specific`` backbone the towers are per (task, domain),
so with one task the model is the paper's: each domain's MLP, adapter, output layer.

Choices the paper leaves open (all in config): ``k`` (rank of the instance matrix), the bottleneck ``r``
(``bottleneck``), the hyper-network's hidden widths (``hyper_hidden``; its output layer is linear),
σ = sigmoid (the authors' code), the hyper-network reading the whole embedding ``x`` (the domain id
included). Domain normalisation is STAR's partitioned normalisation (``mtlbench.models.star``), which
normalises each row with *its domain's* batch statistics and keeps per-domain moving averages for
evaluation; its scale / shift are ``γ ⊙ γ_d`` and ``β + β_d``. Each ``U`` starts as N(0, 1/its input width), each
``V`` as N(0, 1/k) draws.

Departures from Scenario-Wise-Rec's ``HamurSmall`` / ``HamurLarge`` (read, not copied): there one set of
``U, V``, biases and norm parameters serves every domain (the adapter is domain-specific only by where it
sits), ``U, V`` start at all-ones, the "domain norm" uses the *whole batch's* statistics (all domains
mixed) with no moving average (evaluation normalises with the evaluation batch), and the hyper-network ends
in BatchNorm + ReLU. Ours: per-domain factors (our reading of "domain-specific adapter": the
hyper-network is the part the paper calls shared), partitioned statistics with moving averages (a domain
norm), a linear hyper-network output.

Sources: written offline from the paper's description (adapter cell with domain norm and short-cut, domain-
shared hyper-network, low-rank ``U H V`` generation) and the authors' public code (Scenario-Wise-Rec).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import MLP, FeatureEmbedding, ScenarioTowers, Towers
from mtlbench.models.layers import activation as make_activation
from mtlbench.models.scenario_blocks import ScenarioMLP, per_scenario_linear
from mtlbench.models.star import PartitionedNorm, scenario_ids
from mtlbench.registry import register_model


class HyperAdapter(nn.Module):
    """One adapter cell with per-domain low-rank factors: ``h' = h + DN_d((σ(h U₁ H V₁ + b₁)) U₂ H V₂ + b₂)``."""

    def __init__(self, dim: int, bottleneck: int, k: int, num_domains: int, norm_momentum: float = 0.1) -> None:
        super().__init__()
        s = num_domains
        self.u1 = nn.Parameter(torch.randn(s, dim, k) / math.sqrt(dim))  # U_1  [S, m, k]
        self.v1 = nn.Parameter(torch.randn(s, k, bottleneck) / math.sqrt(k))  # V_1  [S, k, r]
        self.b1 = nn.Parameter(torch.zeros(s, bottleneck))
        self.u2 = nn.Parameter(torch.randn(s, bottleneck, k) / math.sqrt(bottleneck))  # U_2  [S, r, k]
        self.v2 = nn.Parameter(torch.randn(s, k, dim) / math.sqrt(k))  # V_2  [S, k, m]
        self.b2 = nn.Parameter(torch.zeros(s, dim))
        self.norm = PartitionedNorm(dim, s, norm_momentum)  # DN_d

    def weights(self, hyper: Tensor, domain: Tensor) -> tuple[Tensor, Tensor]:
        """The generated (W_1 [B, m, r], W_2 [B, r, m]) = (U_1 H V_1, U_2 H V_2) of every row (for inspection)."""
        w1 = self.u1[domain] @ hyper @ self.v1[domain]
        w2 = self.u2[domain] @ hyper @ self.v2[domain]
        return w1, w2

    def low_rank(self, x: Tensor, u: Tensor, hyper: Tensor, v: Tensor, domain: Tensor) -> Tensor:
        """``x (U_d H V_d)`` as ``((x U_d) H) V_d``, never forming the full matrix."""
        xu = per_scenario_linear(x, u, None, domain)  # x U_d   [B, k]
        xuh = torch.bmm(xu.unsqueeze(1), hyper).squeeze(1)  # (x U_d) H(x)
        return per_scenario_linear(xuh, v, None, domain)  # … V_d

    def forward(self, h: Tensor, hyper: Tensor, domain: Tensor) -> Tensor:
        a = torch.sigmoid(self.low_rank(h, self.u1, hyper, self.v1, domain) + self.b1[domain])  # down + σ
        o = self.low_rank(a, self.u2, hyper, self.v2, domain) + self.b2[domain]  # up-projection
        return h + self.norm(o, domain)  # domain norm + short-cut


@register_model("hamur")
class HAMUR(MultiTaskModel):
    """Backbone MLP (per domain or shared) with hyper-network-generated adapters -> towers."""

    required_fields = ("scenario",)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        backbone: str = "specific",
        hidden: tuple[int, ...] = (256, 128),
        adapters: int = 1,
        bottleneck: int = 32,
        k: int = 32,
        hyper_hidden: tuple[int, ...] = (64,),
        tower: tuple[int, ...] = (64,),
        norm_momentum: float = 0.1,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if backbone not in ("specific", "shared"):
            raise ConfigError(f"hamur: backbone must be 'specific' or 'shared', got {backbone!r}")
        if not hidden or not 1 <= adapters <= len(hidden):
            raise ConfigError(
                f"hamur: need at least one hidden layer and 1 <= adapters <= len(hidden); "
                f"got hidden={list(hidden)}, adapters={adapters}"
            )
        s = schema.num_scenarios
        self.backbone_kind, self.hidden = backbone, list(hidden)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.output_dim
        dims = [d, *hidden]
        self.backbone: ScenarioMLP | nn.ModuleList = (
            ScenarioMLP(d, list(hidden), s, dropout, activation)
            if backbone == "specific"
            else nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        )
        self.adapted = list(range(len(hidden) - adapters, len(hidden)))  # layers followed by an adapter
        self.adapters = nn.ModuleList(HyperAdapter(hidden[i], bottleneck, k, s, norm_momentum) for i in self.adapted)
        self.hyper = MLP(d, list(hyper_hidden), k * k, 0.0, activation)  # H(x): domain-shared hyper-network
        self.k = k
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if backbone == "specific":
            self.towers: ScenarioTowers | Towers = ScenarioTowers(
                self.tasks, s, "task_scenario", hidden[-1], list(tower), dropout, activation
            )
        else:
            self.towers = Towers(self.tasks, hidden[-1], list(tower), dropout, activation)

    def instance_matrix(self, x: Tensor) -> Tensor:
        """``H(x)`` [B, k, k], the instance representation matrix."""
        return self.hyper(x).view(len(x), self.k, self.k)

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(the adapted representation [B, m_L], the rows' domains)."""
        p = scenario_ids(self.schema, batch)
        x = self.embedding.flat(batch)
        hyper = self.instance_matrix(x)
        h = x
        cells = dict(zip(self.adapted, self.adapters))
        for i in range(len(self.hidden)):
            h = self.backbone_layer(i, h, p)
            if i in cells:
                h = cells[i](h, hyper, p)  # adapter cell after backbone layer i
        return h, p

    def backbone_layer(self, i: int, h: Tensor, p: Tensor) -> Tensor:
        """Hidden layer ``i`` of the backbone: the row's domain's own, or the shared one."""
        if isinstance(self.backbone, ScenarioMLP):
            return self.backbone.layer(i, h, p)
        return self.dropout(self.act(self.backbone[i](h)))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        h, p = self.encode(batch)
        if isinstance(self.towers, ScenarioTowers):
            return self.towers(h, p)
        return self.towers([h] * len(self.tasks))
