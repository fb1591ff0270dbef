"""MetaHeac (Zhu et al., KDD 2021): Meta Hybrid Experts and Critics, meta-trained MAML-style (or end to end).

Hybrid experts and critics (paper Sec. 3.2): shared experts f_1..f_n read the embedded input; task t
has a task embedding τ_t, and a gate on ``[τ_t, ē]`` (ē the mean of the row's field embeddings) mixes the
experts into the task representation ``h_t = Σ_i a_{t,i} f_i(x)``, ``a_t = softmax(W_a [τ_t, ē])``.
Shared *critics* c_1..c_C each predict a probability from h_t, and a task-specific critic gate weighs
them: ``ŷ_t = Σ_j β_{t,j} σ(c_j(h_t))``, ``β_t = softmax(W_β [τ_t, ē])``. Experts and critics are shared
by all tasks; what is task-specific is the embedding τ_t that drives both gates (the "task-specific
critic network": the critics' mix per task).

Meta-training (paper Sec. 3.3, ``meta: true``, the default): MAML over the tasks. For task t, a local update
on a support set S_t, θ'_t = θ − α ∇_θ L_t(f_θ; S_t), then the task's loss on a query set Q_t with the updated
weights, L_t(f_{θ'_t}; Q_t); the global update minimises Σ_t L_t(f_{θ'_t}; Q_t) over θ, through the local
update (second order). As in the authors' code: one local step of plain gradient descent on every parameter
the support loss reaches, α = ``inner_lr`` = 2e-4 (their ``local_train_lr``), the global step the run's
optimiser (theirs: Adam, lr 1e-3).

What is ours (the paper's tasks are audience-expansion campaigns, each with its own seed set; here the tasks
are the dataset's tasks, labelled on the same rows):

* S_t and Q_t are the two parts of each training batch: its first ``support_share`` of rows (the loader
  shuffles) and the rest, restricted to the rows that carry task t's label. The model computes the local
  update itself inside ``forward`` in training mode (it reads ``batch["labels"]`` there, as ESCM² does for
  its risk; never in evaluation), with ``torch.func.functional_call`` on θ'_t, and returns for each task
  the logits of f_{θ'_t} on the query rows and the *detached* logits of f_θ on the support rows. The
  trainer's per-task BCE is therefore, in its gradient, the mean over the task's labelled rows of the query
  loss at θ'_t (scaled by the query share of those rows), and the loss weighting plays the paper's sum over
  the tasks of a meta-batch (``weighting=equal``: the plain sum). The support rows' BCE at θ still counts in
  the logged loss value, with no gradient.
* Evaluation predicts with the meta-trained θ. The paper's online stage (a new campaign's model fitted on
  its seed set from θ) has no counterpart: the evaluated tasks are the trained ones and evaluation rows
  carry no labels to adapt on.
* An embedding table with row-sparse gradients (``optimizer.sparse_embeddings=true``) is left out of the
  local update (θ'_t would be a dense copy of the table per task); it is still meta-trained through the
  query loss. Dense tables are adapted like every other parameter (a per-task copy of the table per step:
  prefer ``meta: false`` on very large vocabularies).

``meta: false``: the Heac architecture trained end to end on the tasks' BCE over every row, like every other
model.

Ours: ŷ_t is returned as its logit, computed stably from the critics' logits (log-sum-exp); the critic
mix is the paper's weighted sum (MTReclib averages the gated probabilities, which scales ŷ by 1/C); a
critic is an MLP (``tower`` widths) with a final logit; widths and counts as in the config.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

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
    """Shared experts and critics; per-task expert gate and critic gate driven by a task embedding; with ``meta``,
    trained through a per-task local update on each batch's support rows (see the module doc)."""

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
        meta: bool = True,
        inner_lr: float = 2e-4,
        support_share: float = 0.5,
    ) -> None:
        super().__init__(schema)
        if num_experts < 1 or num_critics < 1:
            raise ConfigError(
                f"model 'metaheac': need num_experts >= 1 and num_critics >= 1, got {num_experts}, {num_critics}"
            )
        if inner_lr < 0:
            raise ConfigError(f"model 'metaheac': inner_lr must be >= 0, got {inner_lr}")
        if not 0 < support_share < 1:
            raise ConfigError(f"model 'metaheac': support_share must be in (0, 1), got {support_share}")
        self.meta = bool(meta)
        self.inner_lr = float(inner_lr)
        self.support_share = float(support_share)
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

    def heac(self, batch: dict[str, Tensor]) -> ModelOutput:
        """The Heac network f_θ (Sec. 3.2) on every row of ``batch``."""
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

    def forward(self, batch: dict[str, Tensor], adapt: bool = True) -> ModelOutput:
        """f_θ; in training with ``meta`` (labels present, gradients on), the meta-training outputs (see the
        module doc). ``adapt=False``: f_θ always (the local update's own forward passes)."""
        training = self.training and torch.is_grad_enabled() and "labels" in batch and len(batch["labels"]) >= 2
        if adapt and self.meta and training:
            return self.meta_forward(batch)
        return self.heac(batch)

    def adapted(self) -> list[tuple[str, nn.Parameter]]:
        """θ of the local update: every trainable parameter except row-sparse embedding tables."""
        sparse = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding) and m.sparse}
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and id(p) not in sparse]

    def meta_forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        """Support rows: f_θ's logits, detached. Query rows of task t: f_{θ'_t}, θ'_t after the local update."""
        labels = batch["labels"]
        n = len(labels)
        n_support = min(n - 1, max(1, int(n * self.support_share)))
        support = {key: v[:n_support] for key, v in batch.items()}  # every batch tensor is row-aligned
        query = {key: v[n_support:] for key, v in batch.items()}
        base = self.heac(support)
        named = self.adapted()
        params = [p for _, p in named]
        logits: dict[str, Tensor] = {}
        gates: list[Tensor] = []
        for k, t in enumerate(self.tasks):
            y = labels[:n_support, k].to(base.logits[t].dtype)
            keep = ~torch.isnan(y)
            inner = F.binary_cross_entropy_with_logits(base.logits[t][keep], y[keep]) if bool(keep.any()) else None
            fast: dict[str, Tensor] = {}
            if inner is not None and self.inner_lr > 0:
                grads = torch.autograd.grad(inner, params, create_graph=True, allow_unused=True)
                # local update: θ'_t = θ − α ∇_θ L_t(f_θ; S_t) (second order: the graph is kept)
                fast = {name: p - self.inner_lr * g for (name, p), g in zip(named, grads) if g is not None}
            out = functional_call(self, fast, (query,), {"adapt": False}) if fast else self.heac(query)
            logits[t] = torch.cat([base.logits[t].detach(), out.logits[t]])  # the query loss at θ'_t carries the grad
            gates.append(torch.cat([base.extras["critic_gate"][:, k].detach(), out.extras["critic_gate"][:, k]]))
        return ModelOutput(logits=logits, extras={"critic_gate": torch.stack(gates, dim=1)})
