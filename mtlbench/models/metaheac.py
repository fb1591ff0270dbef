"""MetaHeac (Zhu et al., KDD 2021): Meta Hybrid Experts and Critics, the Heac architecture.

Hybrid experts and critics (paper Sec. 3.2): shared experts f_1..f_n read the embedded input; task t
has a task embedding τ_t, and a gate on ``[τ_t, ē]`` (ē the mean of the row's field embeddings) mixes the
experts into the task representation ``h_t = Σ_i a_{t,i} f_i(x)``, ``a_t = softmax(W_a [τ_t, ē])``.
Shared *critics* c_1..c_C each predict a probability from h_t, and a task-specific critic gate weighs
them: ``ŷ_t = Σ_j β_{t,j} σ(c_j(h_t))``, ``β_t = softmax(W_β [τ_t, ē])``. Experts and critics are shared
by all tasks; what is task-specific is the embedding τ_t that drives both gates (the "task-specific
critic network": the critics' mix per task).

**Not implemented: the meta-learning loop.** In the paper each task is one audience-expansion seed set,
and τ, gates, experts and critics are meta-trained MAML-style (an inner update on a support set, the loss
on the query set, Sec. 3.3) so that a new cold-start task adapts in a few steps. That bi-level loop with
per-task support/query splits cannot be expressed in this benchmark's training step (one batch, all
tasks labelled per row, one optimiser step), so here the Heac architecture is **trained end to end** on
the tasks' BCE losses like every other model; the model's tasks are the dataset's tasks.

Ours: ŷ_t is returned as its logit, computed stably from the critics' logits (log-sum-exp); the critic
mix is the paper's weighted sum (MTReclib averages the gated probabilities, which scales ŷ by 1/C); a
critic is an MLP (``tower`` widths) with a final logit; widths and counts as in the config.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput, MultiTaskModel
from mtlbench.models.layers import ExpertGroup, FeatureEmbedding
from mtlbench.registry import register_model


def mixture_logit(weights: Tensor, logits: Tensor) -> Tensor:
    """logit(Σ_j w_j σ(l_j)) for convex weights [..., C] and logits [..., C], without forming 1 - p."""
    log_w = torch.log(weights.clamp_min(1e-12))
    log_p = torch.logsumexp(log_w + F.logsigmoid(logits), dim=-1)
    log_q = torch.logsumexp(log_w + F.logsigmoid(-logits), dim=-1)
    return log_p - log_q


@register_model("metaheac")
class MetaHeac(MultiTaskModel):
    """Shared experts and critics; per-task expert gate and critic gate driven by a task embedding."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        num_experts: int = 4,
        num_critics: int = 3,
        expert: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if num_experts < 1 or num_critics < 1:
            raise ConfigError(
                f"model 'metaheac': need num_experts >= 1 and num_critics >= 1, got {num_experts}, {num_critics}"
            )
        k = len(self.tasks)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.task_embedding = nn.Embedding(k, embedding_dim)  # τ_t
        self.experts = ExpertGroup(num_experts, self.embedding.output_dim, list(expert), dropout, activation)
        self.expert_gate = nn.Linear(2 * embedding_dim, num_experts)  # W_a
        self.critic_gate = nn.Linear(2 * embedding_dim, num_critics)  # W_β
        self.critics = ExpertGroup(num_critics, self.experts.out_dim, list(tower), dropout, activation)
        h = self.critics.out_dim
        self.critic_out = nn.Parameter(torch.empty(num_critics, h).uniform_(-1 / math.sqrt(h), 1 / math.sqrt(h)))
        self.critic_bias = nn.Parameter(torch.empty(num_critics).uniform_(-1 / math.sqrt(h), 1 / math.sqrt(h)))

    def gate_inputs(self, batch: dict[str, Tensor]) -> Tensor:
        """[K, B, 2d]: [τ_t, mean field embedding] per task."""
        e = self.embedding.fields(batch)
        mean = e.sum(1) / max(1, e.shape[1])
        k, b = len(self.tasks), len(mean)
        tau = self.task_embedding.weight.unsqueeze(1).expand(k, b, -1)
        return torch.cat([tau, mean.unsqueeze(0).expand(k, b, -1)], dim=-1)

    def critic_logits(self, h: Tensor) -> Tensor:
        """Every critic's logit c_j(h) for rows h [N, H] -> [N, C]."""
        return (self.critics(h) * self.critic_out).sum(-1) + self.critic_bias

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        x = self.embedding.flat(batch)
        g = self.gate_inputs(batch)
        a = torch.softmax(self.expert_gate(g), dim=-1)  # [K, B, n]: expert gate a_t
        h = torch.einsum("kbn,bnh->kbh", a, self.experts(x))  # h_t = Σ_i a_{t,i} f_i(x)
        beta = torch.softmax(self.critic_gate(g), dim=-1)  # [K, B, C]: critic gate β_t
        k, b = h.shape[:2]
        c = self.critic_logits(h.reshape(k * b, -1)).view(k, b, -1)
        y = mixture_logit(beta, c)  # logit of ŷ_t = Σ_j β_{t,j} σ(c_j(h_t))
        return ModelOutput(
            logits={t: y[i] for i, t in enumerate(self.tasks)}, extras={"critic_gate": beta.transpose(0, 1)}
        )
