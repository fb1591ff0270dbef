"""PEPNet (Chang et al., KDD 2023): parameter and embedding personalisation by gates.

The model reads like the paper's method section:

1. **Gate NU** (the gate neural unit every gate is made of):
   ``δ = γ · σ(W' ReLU(W x + b) + b')`` with ``γ = 2``, so a gate ranges over (0, 2) and starts
   around the neutral value 1: it can both damp and amplify what it scales.
2. **EPNet** (embedding personalisation): the general embedding ``E`` (all fields) is re-weighted by
   a gate on the domain-side features ``F_d`` (the scenario id) and a *stopped-gradient* copy of ``E``:
   ``δ_domain = GateNU(E(F_d) ⊕ ⊘(E))``, ``O_ep = δ_domain ⊗ E``. The stop-gradient keeps the gate from
   reshaping the general embedding it only personalises.
3. **PPNet** (parameter personalisation): the personalised prior features ``F_p`` (user id, item id,
   author id style fields) and a stopped-gradient ``O_ep`` give, for every tower layer ``l``, one gate
   per task: ``δ_task^(l) = GateNU_l(E(F_p) ⊕ ⊘(O_ep))`` split into ``T`` parts, and each task's layer
   input is scaled before its weights: ``H_t^(l+1) = f((δ_t^(l) ⊗ H_t^(l)) W_t^(l) + b_t^(l))``, with
   ``H_t^(1) = O_ep``.

Choices the paper leaves open (all in config): which fields are ``F_d`` (``domain_fields``, default
the scenario field) and ``F_p`` (``prior_fields``, default the schema's user and item fields);
``epnet_granularity`` ``element`` (default: one gate value per embedding element, the width of ``E``)
or ``field`` (one per field); the gates' hidden width ``gate_hidden``. PPNet gates the input of every
layer of a tower, the final logit layer included. The task towers share nothing but ``O_ep`` and the
gate networks, which are shared across tasks (one network outputs every task's gates).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import FeatureEmbedding
from mtlbench.models.layers import activation as make_activation
from mtlbench.models.star import check_fields, lookup_fields
from mtlbench.registry import register_model


class GateNU(nn.Module):
    """Gate NU: ``δ = γ · σ(W' ReLU(W x + b) + b')``, values in (0, γ)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, gamma: float = 2.0) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, out_dim)
        self.gamma = gamma

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma * torch.sigmoid(self.out(torch.relu(self.hidden(x))))


@register_model("pepnet")
class PEPNet(MultiTaskModel):
    """EPNet on the bottom embedding, PPNet on every layer of each task tower."""

    required_fields = ("scenario",)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        tower: tuple[int, ...] = (256, 128, 64),
        gate_hidden: int = 64,
        gate_scale: float = 2.0,
        domain_fields: list[str] | None = None,
        prior_fields: list[str] | None = None,
        epnet_granularity: str = "element",
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if epnet_granularity not in ("element", "field"):
            raise ConfigError(f"pepnet: epnet_granularity must be 'element' or 'field', got {epnet_granularity!r}")
        if domain_fields is None:
            assert schema.scenario_field is not None  # required_fields: checked by MultiTaskModel.__init__
            domain_fields = [schema.scenario_field]
        self.domain_fields = list(domain_fields)
        if prior_fields is None:
            prior_fields = [f for f in (schema.user_field, schema.item_field) if f is not None]
        self.prior_fields = list(prior_fields)
        if not self.domain_fields or not self.prior_fields:
            raise ConfigError(
                "pepnet: domain_fields and prior_fields must each name at least one field "
                f"(dataset {schema.name!r} has no user/item field to default to)"
            )
        check_fields("pepnet", schema, self.domain_fields, "domain_fields")
        check_fields("pepnet", schema, self.prior_fields, "prior_fields")
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d, k = self.embedding.output_dim, len(self.tasks)
        self.granularity = epnet_granularity
        self.num_fields = self.embedding.num_fields
        gate_out = d if epnet_granularity == "element" else self.num_fields + self.embedding.num_numeric
        self.epnet = GateNU(len(self.domain_fields) * embedding_dim + d, gate_out, gate_hidden, gate_scale)
        dims = [d, *tower]
        prior_dim = len(self.prior_fields) * embedding_dim + d
        self.ppnet = nn.ModuleList(GateNU(prior_dim, k * w, gate_hidden, gate_scale) for w in dims)
        self.towers = nn.ModuleList(
            nn.ModuleList([*(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])), nn.Linear(dims[-1], 1)])
            for _ in self.tasks
        )
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def epnet_forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(O_ep [B, d], δ_domain) with ``δ_domain = GateNU(E(F_d) ⊕ ⊘(E))``, ``O_ep = δ_domain ⊗ E``."""
        e = self.embedding.flat(batch)
        e_d = lookup_fields(self.embedding, batch, self.domain_fields).flatten(1)
        delta = self.epnet(torch.cat([e_d, e.detach()], dim=1))  # EPNet gate, ⊘ on E
        if self.granularity == "field":  # one value per field / numeric
            sizes = [self.embedding.dim] * self.num_fields + [1] * self.embedding.num_numeric
            delta = delta.repeat_interleave(torch.tensor(sizes, device=e.device), dim=1)
        return delta * e, delta

    def ppnet_gates(self, batch: dict[str, Tensor], o_ep: Tensor) -> list[Tensor]:
        """One [B, T, width_l] gate per tower layer: ``δ_task^(l) = GateNU_l(E(F_p) ⊕ ⊘(O_ep))``."""
        e_p = lookup_fields(self.embedding, batch, self.prior_fields).flatten(1)
        prior = torch.cat([e_p, o_ep.detach()], dim=1)
        return [g(prior).view(len(prior), len(self.tasks), -1) for g in self.ppnet]

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        o_ep, _ = self.epnet_forward(batch)
        gates = self.ppnet_gates(batch, o_ep)
        out = {}
        towers = cast("Iterable[nn.ModuleList]", self.towers)  # one ModuleList of layers per task (__init__)
        for k, (t, layers) in enumerate(zip(self.tasks, towers)):
            h = o_ep  # H_t^(1) = O_ep
            for i, layer in enumerate(layers):
                h = layer(gates[i][:, k] * h)  # (δ_t^(l) ⊗ H_t^(l)) W + b
                if i < len(layers) - 1:
                    h = self.dropout(self.act(h))  # f(·)
            out[t] = h.squeeze(-1)
        return out
