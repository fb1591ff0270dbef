"""M3oE (Zhang et al., SIGIR 2024): Multi-Domain Multi-Task Mixture-of-Experts recommendation framework.

The model reads like the paper's method section (equations named by what they compute). Every row belongs
to a domain ``d`` and is scored for every task ``t``:

1. **Bottom representation** ``e``: the authors' code puts a star-topology layer (STAR's ``W ⊙ W_d``,
   ``b + b_d``, see ``mtlbench.models.star``) and an MLP under the experts, plus a skip MLP from the
   embedding: ``e = MLP(φ(x (W ⊙ W_d) + b + b_d)) + skip(x)`` (``bottom: star``); ``bottom: mlp`` uses a
   plain MLP instead.
2. **Three mixture-of-experts modules** over ``e``:

   - *shared experts* ``E_1 … E_n`` mixed by a softmax gate per (domain, task):
     ``S_{d,t} = Σ_i g_{d,t,i} E_i``, ``g_{d,t} = softmax(e G_{d,t})``: common preferences;
   - *domain experts*, one per domain, ``D_1 … D_{|D|}``: domain-aspect preferences;
   - *task experts*, one per task, ``T_1 … T_{|T|}``: task-aspect preferences.
3. **Two-level fusion** with learned weights:

   - balance within a module: ``D̃_d = β_D D_d + (1 − β_D)/(|D| − 1) Σ_{j≠d} D_j`` (own domain vs the
     others), ``T̃_t = β_T T_t + (1 − β_T)/(|T| − 1) Σ_{j≠t} T_j``;
   - fusion across modules: ``F_{d,t} = S_{d,t} + α_D D̃_d + α_T T̃_t``.

   With a single domain (task) the balance keeps ``D_d`` (``T_t``) as it is.
4. **Towers**: one tower per (domain, task) on ``F_{d,t}`` gives the logit of task ``t`` in domain ``d``.

M3oE is multi-domain multi-task by construction; with one task it is the paper's single-task form.

**Fusion weights: learned, not searched.** The paper searches ``α_D, α_T, β_D, β_T`` AutoML-style (a
DARTS-like bi-level optimisation: the weights step on held-out batches, the network on training batches).
Here they are ordinary parameters learned jointly with the network on the training loss, each
``σ(θ)`` (the 2-way softmax ``softmax([θ, 0])_0``, the parameterisation of the authors' code), starting from
``θ`` = ``init_fusion`` (the authors' defaults: 1 for all four). No validation data enters training.

Choices the paper leaves open (all in config): widths (``bottom``, ``star_dims``, ``expert``, ``tower``), the
number of shared experts, the gates reading ``e`` (not detached; the authors' code detaches the gates'
input). The authors' ``LayerNorm`` inside every expert and tower is not used (plain MLPs, as every other
expert model here).

Relation to Scenario-Wise-Rec: its ``M3oE`` is the authors' code reduced to one task (no task experts, one
tower per domain); ours keeps the task experts and per-(domain, task) towers of the paper's multi-task form.

Sources: written offline from the paper's description and the authors' public code
(Applied-Machine-Learning-Lab/M3oE, ``MDMTRec``), which the equations above follow.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import MLP, ExpertGroup, FeatureEmbedding, ScenarioTowers, pick_slot
from mtlbench.models.layers import activation as make_activation
from mtlbench.models.star import StarLinear, scenario_ids
from mtlbench.registry import register_model


def balance_own(experts: Tensor, own: Tensor, beta: Tensor) -> Tensor:
    """``β X_own + (1 − β)/(n − 1) Σ_{j≠own} X_j`` with each row's own slot: experts [B, n, h], own [B] -> [B, h]."""
    n = experts.shape[1]
    mine = pick_slot(experts, own)
    if n == 1:
        return mine
    others = (experts.sum(1) - mine) / (n - 1)
    return beta * mine + (1 - beta) * others


def balance_all(experts: Tensor, beta: Tensor) -> Tensor:
    """The same balance with every slot as the own one: [B, n, h] -> [B, n, h]."""
    n = experts.shape[1]
    if n == 1:
        return experts
    others = (experts.sum(1, keepdim=True) - experts) / (n - 1)
    return beta * experts + (1 - beta) * others


@register_model("m3oe")
class M3oE(MultiTaskModel):
    """Star bottom -> shared / domain / task experts -> learned two-level fusion -> (domain, task) towers."""

    required_fields = ("scenario",)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        bottom: str = "star",
        star_dims: tuple[int, ...] = (512, 256),
        num_experts: int = 4,
        expert: tuple[int, ...] = (64,),
        tower: tuple[int, ...] = (64,),
        init_fusion: float = 1.0,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if bottom not in ("star", "mlp"):
            raise ConfigError(f"m3oe: bottom must be 'star' or 'mlp', got {bottom!r}")
        if len(star_dims) != 2 or num_experts < 1 or not expert:
            raise ConfigError(
                "m3oe: need star_dims of two widths (star layer, its MLP), num_experts >= 1 and an expert layer; "
                f"got star_dims={list(star_dims)}, num_experts={num_experts}, expert={list(expert)}"
            )
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d, s, k = self.embedding.output_dim, schema.num_scenarios, len(self.tasks)
        w1, w2 = star_dims
        self.bottom_kind = bottom
        self.star = StarLinear(d, w1, s) if bottom == "star" else nn.Linear(d, w1)
        self.star_mlp = MLP(w1, [w2], None, dropout, activation)
        self.skip = MLP(d, [w2], None, dropout, activation)
        self.act = make_activation(activation)
        self.shared = ExpertGroup(num_experts, w2, list(expert), dropout, activation)  # E_i
        self.domain_experts = ExpertGroup(s, w2, list(expert), dropout, activation)  # D_d
        self.task_experts = ExpertGroup(k, w2, list(expert), dropout, activation)  # T_t
        self.gates = nn.Linear(w2, s * k * num_experts)  # G_{d,t}, all in one matmul
        h = self.shared.out_dim
        self.num_experts, self.num_domains = num_experts, s
        # θ of α_D, α_T (fusion across modules) and β_D, β_T (balance within a module)
        self.fusion_logits = nn.Parameter(torch.full((4,), float(init_fusion)))
        self.towers = ScenarioTowers(self.tasks, s, "task_scenario", h, list(tower), dropout, activation)

    def fusion_weights(self) -> dict[str, Tensor]:
        """The learned weights ``α_D, α_T, β_D, β_T`` (each ``σ(θ)``)."""
        w = torch.sigmoid(self.fusion_logits)
        return {"alpha_domain": w[0], "alpha_task": w[1], "beta_domain": w[2], "beta_task": w[3]}

    def represent(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(bottom representation e [B, w2], the rows' domains)."""
        p = scenario_ids(self.schema, batch)
        x = self.embedding.flat(batch)
        z = self.star(x, p) if isinstance(self.star, StarLinear) else self.star(x)  # x (W ⊙ W_d) + b + b_d
        return self.star_mlp(self.act(z)) + self.skip(x), p

    def fuse(self, e: Tensor, p: Tensor) -> Tensor:
        """``F_{d,t} = S_{d,t} + α_D D̃_d + α_T T̃_t`` for the row's domain d and every task t -> [B, K, h]."""
        b, k, n = len(e), len(self.tasks), self.num_experts
        w = self.fusion_weights()
        gates = pick_slot(self.gates(e).view(b, self.num_domains, k, n), p)  # the row's g_{d,t}  [B, K, n]
        shared = torch.bmm(torch.softmax(gates, dim=-1), self.shared(e))  # S_{d,t}
        domain = balance_own(self.domain_experts(e), p, w["beta_domain"])  # D̃_d   [B, h]
        tasks = balance_all(self.task_experts(e), w["beta_task"])  # T̃_t for every t   [B, K, h]
        return shared + w["alpha_domain"] * domain.unsqueeze(1) + w["alpha_task"] * tasks

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        e, p = self.represent(batch)
        fused = self.fuse(e, p)  # [B, K, h]
        s = self.num_domains
        # tower slot k·S + s reads F_{d_row, k}; the row's own domain's slot is the one read out
        slots = fused.transpose(0, 1).unsqueeze(1).expand(-1, s, -1, -1).reshape(len(self.tasks) * s, len(e), -1)
        return self.towers(slots, p)
