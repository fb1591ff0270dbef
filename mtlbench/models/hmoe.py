"""HMoE (Li et al., CIKM 2020): a hybrid of implicit and explicit mixture-of-experts for multi-scenario ranking.

The paper treats every scenario as a task sharing one feature and label space, and reads like this:

1. **Implicit part: multi-gate MoE in the feature space.** Shared experts ``f_e(x)``; one softmax gate and one
   tower per scenario: ``ŷ_j = h_j(Σ_e g_j(x)_e f_e(x))``: every scenario's prediction for the instance.
2. **Explicit part: task relationships in the label space.** A stacked gate turns the scenarios' predictions
   into the final one: for an instance of scenario ``i``, ``ŷ'_i = Σ_j w_ij(x) ŷ_j`` with
   ``w_i(x) = softmax(G(x))_i``: the other scenarios' predictions serve as learned evidence about this one.
3. **Task-constrained back-propagation** (the paper's end-to-end optimisation, instead of training the stack
   in two stages): an instance of scenario ``i`` updates only its own scenario network; the other scenarios'
   predictions enter ``ŷ'_i`` with stopped gradients, ``ŷ'_i = w_ii ŷ_i + Σ_{j≠i} w_ij ⊘(ŷ_j)``, so scenario
   ``j``'s experts mixture, gate and tower learn only from scenario ``j``'s data (the shared experts and the
   label-space gate ``G`` learn from all).

Multi-task form (the paper's tasks are the scenarios, with one label), ours: the towers end in one logit per
task (K), and the label-space transfer is done per task: ``ŷ'_{k,i} = Σ_j w_{k,ij}(x) ŷ_{k,j}`` with one softmax
over scenarios per (task, scenario). With one task this is the paper's model.

Choices the paper leaves open (all in config): ``combine: probability`` (default) mixes the predicted
probabilities, ``σ(logit')= Σ_j w_ij σ(ŷ_j)`` (a convex combination of probabilities is a probability; the
logit is recovered as ``log p − log(1 − p)`` with p clamped to [1e-7, 1 − 1e-7]), ``logit`` mixes the logits;
the label-space gate ``G`` is an MLP on the input with hidden layers ``transfer_hidden`` ([64]);
``stop_gradient: false`` gives the plain end-to-end stack the paper compares against. Every scenario's gate
and tower run on every row (batched), since every row needs every scenario's prediction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import MLP, ExpertGroup, FeatureEmbedding, pick_slot
from mtlbench.models.star import scenario_ids
from mtlbench.registry import register_model

COMBINE = ("probability", "logit")
EPS = 1e-7


class TowerBank(nn.Module):
    """``n`` towers ``MLP(in, hidden) -> out``, each on its own input [n, B, in], run together -> [B, n, out]."""

    def __init__(
        self, n: int, in_dim: int, hidden: list[int], out_dim: int, dropout: float = 0.0, act: str = "relu"
    ) -> None:
        super().__init__()
        self.hidden = ExpertGroup(n, in_dim, hidden, dropout, act)
        h = self.hidden.out_dim
        w = torch.empty(n, h, out_dim)
        for i in range(n):  # nn.Linear's init, tower by tower
            nn.init.kaiming_uniform_(w[i].T, a=math.sqrt(5))
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-1 / math.sqrt(h), 1 / math.sqrt(h)))

    def forward(self, x: Tensor) -> Tensor:
        h = self.hidden(x).transpose(0, 1)  # [n, B, H]
        return torch.baddbmm(self.bias, h, self.weight).transpose(0, 1)  # [B, n, out]


@register_model("hmoe")
class HMoE(MultiTaskModel):
    """MoE with a gate and tower per scenario (every scenario's prediction), then a label-space gate over them."""

    required_fields = ("scenario",)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        num_experts: int = 4,
        expert: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        transfer_hidden: tuple[int, ...] = (64,),
        combine: str = "probability",
        stop_gradient: bool = True,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if combine not in COMBINE:
            raise ConfigError(f"hmoe: combine must be one of {list(COMBINE)}, got {combine!r}")
        self.combine, self.stop_gradient = combine, stop_gradient
        s, k = schema.num_scenarios, len(self.tasks)
        self.num_scenarios, self.num_experts = s, num_experts
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.output_dim
        self.experts = ExpertGroup(num_experts, d, list(expert), dropout, activation)  # f_e
        self.gates = nn.Linear(d, s * num_experts)  # g_j for every scenario j, one matmul
        self.towers = TowerBank(s, self.experts.out_dim, list(tower), k, dropout, activation)  # h_j -> K logits
        self.transfer = MLP(d, list(transfer_hidden), s * k * s, 0.0, activation)  # G: w_{k,ij}(x)

    def scenario_predictions(self, x: Tensor) -> Tensor:
        """Every scenario's logits for every row [B, S, K]: ``h_j(Σ_e g_j(x)_e f_e(x))``."""
        experts = self.experts(x)  # [B, E, H]
        w = torch.softmax(self.gates(x).view(len(x), self.num_scenarios, self.num_experts), dim=-1)
        mixtures = torch.bmm(w, experts)  # [B, S, H]
        return self.towers(mixtures.transpose(0, 1))

    def transfer_weights(self, x: Tensor, scenario: Tensor) -> Tensor:
        """The row's label-space weights [B, K, S]: ``softmax_j(G(x))`` for its scenario i, per task."""
        s, k = self.num_scenarios, len(self.tasks)
        logits = pick_slot(self.transfer(x).view(len(x), s, k, s), scenario)  # [B, K, S]
        return torch.softmax(logits, dim=-1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = self.embedding.flat(batch)
        p = scenario_ids(self.schema, batch)
        y = self.scenario_predictions(x).transpose(1, 2)  # ŷ_{k,j}: [B, K, S]
        if self.stop_gradient:  # task-constrained back-propagation: ⊘ on the other scenarios' predictions
            own = nn.functional.one_hot(p, self.num_scenarios).bool().unsqueeze(1)  # [B, 1, S]
            y = torch.where(own, y, y.detach())
        w = self.transfer_weights(x, p)
        if self.combine == "logit":
            out = (w * y).sum(-1)
        else:  # Σ_j w_ij σ(ŷ_j), back to a logit
            prob = (w * torch.sigmoid(y)).sum(-1).clamp(EPS, 1 - EPS)
            out = torch.log(prob) - torch.log1p(-prob)
        return {t: out[:, k] for k, t in enumerate(self.tasks)}
