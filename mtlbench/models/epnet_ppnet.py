"""EPNet and PPNet: PEPNet's two halves (Chang et al., KDD 2023) as models of their own.

Scenario-Wise-Rec lists them apart; both reuse PEPNet's Gate NU (:class:`~mtlbench.models.pepnet.GateNU`:
``δ = γ · σ(W' ReLU(W x + b) + b')``, ``γ = 2``, so a gate ranges over (0, 2) and starts near 1).

**EPNet** (embedding personalisation): the general embedding ``E`` of all fields is
re-weighted by a gate on the domain-side features ``F_d`` (default: the scenario field) and a stopped-gradient
copy of ``E``: ``δ_domain = GateNU(E(F_d) ⊕ ⊘(E))``, ``O_ep = δ_domain ⊗ E``. On top, as a model of its own:
a DNN shared by all tasks (``dnn``) and one tower per task (``tower``). ``epnet_granularity`` as in PEPNet:
``element`` (one gate value per embedding element) or ``field`` (one per field).

**PPNet** (parameter personalisation) without EPNet: per task, a DNN whose every layer's
input is scaled by a gate from the personalised priors ``F_p`` and a stopped-gradient ``E`` (``O_ep = E`` without
EPNet): ``δ_task^(l) = GateNU_l(E(F_p) ⊕ ⊘(E))`` split into one part per task, and
``H_t^(l+1) = f((δ_t^(l) ⊗ H_t^(l)) W_t^(l) + b_t^(l))`` with ``H_t^(1) = E``; the logit layer's input is gated
too, as in PEPNet. There is no embedding gate.

Choices: PEPNet's F_p are user / item / author ids; in this multi-scenario benchmark PPNet's default
``prior_fields`` are the user, item *and scenario* fields (as AEM2TL's PPNet towers here; Scenario-Wise-Rec
makes its PPNet scenario-specific with one gated tower per domain instead); set ``prior_fields: [user, item]``
for the paper's exact priors. Gate hidden width ``gate_hidden`` (64). Everything else as ``pepnet``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import MLP, FeatureEmbedding, Towers
from mtlbench.models.layers import activation as make_activation
from mtlbench.models.pepnet import GateNU
from mtlbench.models.star import check_fields, lookup_fields
from mtlbench.registry import register_model


@register_model("epnet")
class EPNet(MultiTaskModel):
    """EPNet's gated embedding ``O_ep = GateNU(E(F_d) ⊕ ⊘(E)) ⊗ E`` -> shared DNN -> one tower per task."""

    required_fields = ("scenario",)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        dnn: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        gate_hidden: int = 64,
        gate_scale: float = 2.0,
        domain_fields: list[str] | None = None,
        epnet_granularity: str = "element",
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if epnet_granularity not in ("element", "field"):
            raise ConfigError(f"epnet: epnet_granularity must be 'element' or 'field', got {epnet_granularity!r}")
        assert schema.scenario_field is not None  # required_fields: checked by MultiTaskModel.__init__
        self.domain_fields = list(domain_fields) if domain_fields is not None else [schema.scenario_field]
        if not self.domain_fields:
            raise ConfigError("epnet: domain_fields must name at least one field")
        check_fields("epnet", schema, self.domain_fields, "domain_fields")
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.output_dim
        self.granularity = epnet_granularity
        self.field_sizes = [embedding_dim] * self.embedding.num_fields + [1] * self.embedding.num_numeric
        gate_out = d if epnet_granularity == "element" else len(self.field_sizes)
        self.gate = GateNU(len(self.domain_fields) * embedding_dim + d, gate_out, gate_hidden, gate_scale)
        self.dnn = MLP(d, list(dnn), None, dropout, activation)
        self.towers = Towers(self.tasks, self.dnn.out_dim, list(tower), dropout, activation)

    def personalise(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(O_ep [B, d], δ_domain [B, d]) with ``δ_domain = GateNU(E(F_d) ⊕ ⊘(E))``, ``O_ep = δ_domain ⊗ E``."""
        e = self.embedding.flat(batch)
        e_d = lookup_fields(self.embedding, batch, self.domain_fields).flatten(1)
        delta = self.gate(torch.cat([e_d, e.detach()], dim=1))  # ⊘ on E
        if self.granularity == "field":
            delta = delta.repeat_interleave(torch.tensor(self.field_sizes, device=e.device), dim=1)
        return delta * e, delta

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        o_ep, _ = self.personalise(batch)
        return self.towers([self.dnn(o_ep)] * len(self.tasks))


@register_model("ppnet")
class PPNet(MultiTaskModel):
    """Per-task DNNs whose every layer input is gated by ``GateNU_l(E(F_p) ⊕ ⊘(E))``; no embedding gate."""

    required_fields = ("scenario",)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        tower: tuple[int, ...] = (256, 128, 64),
        gate_hidden: int = 64,
        gate_scale: float = 2.0,
        prior_fields: list[str] | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if prior_fields is None:
            prior_fields = [f for f in (schema.user_field, schema.item_field, schema.scenario_field) if f is not None]
        self.prior_fields = list(dict.fromkeys(prior_fields))
        if not self.prior_fields:
            raise ConfigError("ppnet: prior_fields must name at least one field")
        check_fields("ppnet", schema, self.prior_fields, "prior_fields")
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d, k = self.embedding.output_dim, len(self.tasks)
        dims = [d, *tower]
        prior_dim = len(self.prior_fields) * embedding_dim + d
        self.gates = nn.ModuleList(GateNU(prior_dim, k * w, gate_hidden, gate_scale) for w in dims)
        self.towers = nn.ModuleList(
            nn.ModuleList([*(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])), nn.Linear(dims[-1], 1)])
            for _ in self.tasks
        )
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def task_gates(self, batch: dict[str, Tensor], e: Tensor) -> list[Tensor]:
        """One [B, K, width_l] gate per layer: ``δ_task^(l) = GateNU_l(E(F_p) ⊕ ⊘(E))``."""
        prior = torch.cat([lookup_fields(self.embedding, batch, self.prior_fields).flatten(1), e.detach()], dim=1)
        return [g(prior).view(len(prior), len(self.tasks), -1) for g in self.gates]

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        e = self.embedding.flat(batch)  # H^(1) = E (no EPNet)
        gates = self.task_gates(batch, e)
        out = {}
        towers = cast("Iterable[nn.ModuleList]", self.towers)  # one ModuleList of layers per task
        for k, (t, layers) in enumerate(zip(self.tasks, towers)):
            h = e
            for i, layer in enumerate(layers):
                h = layer(gates[i][:, k] * h)  # (δ_t^(l) ⊗ H_t^(l)) W + b
                if i < len(layers) - 1:
                    h = self.dropout(self.act(h))
            out[t] = h.squeeze(-1)
        return out
