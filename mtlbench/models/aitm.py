"""AITM (Xi et al., KDD 2021): Adaptive Information Transfer Multi-task for sequential conversions.

Tasks of a conversion chain (e.g. click -> purchase) are ordered: a later step can only happen after the
previous one. Each task has its own tower over the shared embeddings, giving q_t. The Adaptive
Information Transfer (AIT) module lets task t attend to what the previous task learned:

* Eq. 2, transfer: p_{t-1} = g_{t-1}(z_{t-1}), g a one-layer MLP (Linear -> ReLU -> dropout, as in the
  authors' code);
* Eq. 3-5, AIT: z_t = Σ_{u ∈ {p_{t-1}, q_t}} w_u h3(u), w_u = softmax_u(<h1(u), h2(u)> / sqrt(d)), with
  h1, h2, h3 linear maps; z_1 = q_1 for the first task of the chain;
* Eq. 6, ŷ_t = sigmoid(MLP_t(z_t)).

The behavioural expectation calibrator (Eq. 8, label constraint) penalises a later step predicted more
likely than the step before it: L_lc = mean_x Σ_{t≥2} max(ŷ_t - ŷ_{t-1}, 0), added to the loss with weight
``calibrator_weight`` (α in Eq. 9; 0.6 as in the authors' code) through ``ModelOutput.aux_losses``.

Choices the paper leaves to the setting: ``chain`` lists the tasks of the conversion chain in order; by default
the dataset's ``click`` -> ``conversion`` roles (``DatasetSchema.task_roles``, e.g. Ali-CCP's ctr -> ctcvr), and
on a dataset without funnel roles every task in schema order (how the STAN paper runs AITM on WeChat's like,
click_avatar, forward: our reading, the STAN paper does not give the order); other tasks get a plain tower. A
chain step after the first must be labelled on every impression: a click-conditional label (Ali-CCP's cvr)
is refused, since the calibrator would bound P(cvr | click) by P(click). Every label is per impression (the
conversion label is 0 on unclicked rows), so every task trains over the entire impression space, as in the
paper. The calibrator applies to every impression. ``shared_parameters`` is the embedding table: the only
component every task's loss reaches (the transfer units are downstream of one task only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput, MultiTaskModel
from mtlbench.models.esmm import refuse_conditional
from mtlbench.models.layers import MLP, FeatureEmbedding
from mtlbench.registry import register_model


class AIT(nn.Module):
    """Adaptive Information Transfer unit (Eq. 3-5): attention over {transferred p_{t-1}, own q_t}."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.h1 = nn.Linear(dim, dim, bias=False)
        self.h2 = nn.Linear(dim, dim, bias=False)
        self.h3 = nn.Linear(dim, dim, bias=False)
        self.scale = math.sqrt(dim)

    def forward(self, p_prev: Tensor, q: Tensor) -> Tensor:
        u = torch.stack([p_prev, q], dim=1)  # [B, 2, d]
        w = torch.softmax((self.h1(u) * self.h2(u)).sum(-1) / self.scale, dim=1)  # Eq. 4-5
        return (w.unsqueeze(-1) * self.h3(u)).sum(1)  # Eq. 3


def label_constraint(probs: list[Tensor]) -> Tensor:
    """Behavioural expectation calibrator (Eq. 8): mean over samples of Σ_t max(ŷ_t - ŷ_{t-1}, 0)."""
    return sum((F.relu(b - a) for a, b in zip(probs[:-1], probs[1:])), torch.zeros_like(probs[0])).mean()


@register_model("aitm")
class AITM(MultiTaskModel):
    """Shared embeddings; per-task towers; AIT between consecutive tasks of ``chain``; label constraint."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        tower: tuple[int, ...] = (128, 64, 32),
        chain: list[str] | None = None,
        calibrator_weight: float = 0.6,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if chain is None:
            roles = schema.task_roles
            chain = [roles["click"], roles["conversion"]] if {"click", "conversion"} <= set(roles) else self.tasks
        chain = list(chain)
        unknown = [t for t in chain if t not in self.tasks]
        if unknown or len(chain) < 2 or len(set(chain)) != len(chain):
            raise ConfigError(
                f"model 'aitm': chain={chain} must list at least two distinct tasks of the "
                f"dataset in conversion order; tasks are {self.tasks}"
            )
        for t in chain[1:]:
            refuse_conditional("aitm", "chain", t, schema)
        if not tower:
            raise ConfigError("model 'aitm': tower needs at least one hidden layer (its width is AIT's)")
        self.chain = chain
        self.calibrator_weight = float(calibrator_weight)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.output_dim
        towers = [MLP(d, list(tower), None, dropout, activation) for _ in self.tasks]
        self.towers = nn.ModuleList(towers)  # q_t
        dim = towers[0].out_dim
        self.heads = nn.ModuleList(nn.Linear(dim, 1) for _ in self.tasks)  # Eq. 6: ŷ_t = sigmoid(MLP_t(z_t))
        n = len(chain) - 1
        self.transfer = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout)) for _ in range(n)
        )  # Eq. 2: g_{t-1}
        self.ait = nn.ModuleList(AIT(dim) for _ in range(n))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.embedding.parameters())

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        x = self.embedding.flat(batch)
        z = {t: tower(x) for t, tower in zip(self.tasks, self.towers)}  # q_t; z_1 = q_1
        for i, t in enumerate(self.chain[1:]):
            p_prev = self.transfer[i](z[self.chain[i]])  # Eq. 2
            z[t] = self.ait[i](p_prev, z[t])  # Eq. 3-5
        logits = {t: head(z[t]).squeeze(-1) for t, head in zip(self.tasks, self.heads)}
        probs = [torch.sigmoid(logits[t]) for t in self.chain]
        aux = {}
        if self.calibrator_weight:
            aux["label_constraint"] = self.calibrator_weight * label_constraint(probs)  # Eq. 9: + α L_lc
        return ModelOutput(logits=logits, aux_losses=aux)
