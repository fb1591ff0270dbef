"""M2M (Zhang et al., WSDM 2022): multi-scenario multi-task meta learning ("Leaving No One Behind").

The model reads like the paper's method section. Equations are named by what they compute (the paper's
own numbering was not at hand when this was written).

1. **Backbone network.** Shared bottom embedding of every field; a **Transformer layer** (multi-head
   self-attention + feed-forward) re-encodes the embedded tokens; ``F`` is its flattened output.

   - **Expert view**: ``k`` expert MLPs over ``F``, ``E_i = f_i(F)``.
   - **Task view**: each task ``t`` has a learned task embedding ``e_t`` (the task's prior), encoded by
     an MLP into ``T_t = g(e_t)`` of the experts' width.
   - **Scenario knowledge representation**: ``S = h(E(scenario fields))``, the scenario id and (optionally)
     other scenario-side fields.
2. **Meta learning mechanism.**

   - **Meta unit**: a stack of layers whose weights and biases are *generated from S* for every row:
     ``W_j = reshape(V_j S + v_j)``, ``b_j = U_j S + u_j``, ``h_j = σ(h_{j-1} W_j + b_j)``. A new scenario
     needs no new parameters, only its knowledge representation.
   - **Meta attention**: the expert mixture of task ``t`` is weighted by a meta unit over the expert view
     and the task view: ``a_{t,i} = vᵀ Meta(E_i ⊕ T_t)``, ``α_{t,i} = softmax_i(a_{t,i})``,
     ``R_t = Σ_i α_{t,i} E_i``: the scenario decides how the tasks read the experts.
   - **Meta tower**: residual meta layers on top of ``R_t``: ``L_t^(0) = R_t``,
     ``L_t^(j) = σ(Meta_t^(j)(L_t^(j-1)) + L_t^(j-1))``; a linear layer gives task ``t``'s output.
3. **Loss**: the paper regresses advertiser counts with a Poisson loss (``ŷ = exp(·)``). Tasks here are
   binary, so the last layer gives a logit trained with the benchmark's BCE: the one departure from the
   paper forced by the data.

M2M is multi-task by construction (one task view, meta attention and meta tower per task); with one task
it is the paper's model for that task.

Choices the paper leaves open (all in config):

- Transformer tokens. The paper's Transformer encodes an advertiser's behaviour and performance *time
  series*; rows here carry feature fields (and at most an item-id history). The tokens are the field
  embeddings (a sequence field mean-pooled into one token, a numeric feature ``x`` embedded as ``x · e_f``),
  AutoInt-style, without positional embeddings (fields have no order); ``transformer_layers: 0`` feeds the
  embeddings to the experts directly.
- Scenario fields: ``scenario_fields`` (default: the scenario field alone) feed ``S``.
- Widths: experts ``expert``, task and scenario representations ``scenario_dim`` / the experts' width,
  the meta attention's hidden width ``attention_hidden`` (one meta layer, then ``v``), the number of meta
  tower layers ``tower_layers``. Meta tower generators are per task (a task has its own tower).
- Initialisation of the generators: ``V`` is drawn so that a generated weight has the scale of an
  ``nn.Linear`` of the same fan-in (``std 1/sqrt(fan_in · dim S)``), ``v`` like that layer's weights.
- ``σ``: ``activation`` (default relu; the Scenario-Wise-Rec code uses leaky relu).

Computation (no modelling choice): ``S`` depends on a row only through its scenario fields, so ``S`` and
every generated weight are computed once per distinct scenario-field value in the batch and applied with
one matmul per value (``max_groups`` values at most; beyond, per-row weights with batched matmuls). Both
paths give the same numbers; a row's score never depends on the other rows of its batch.

Departures from Scenario-Wise-Rec's ``M2M`` (which we read, not copied), following the paper instead:
its ``nn.Transformer(emb, emb)`` is given a 2-D ``[batch, width]`` tensor, so it attends *across the rows
of the batch* (each row's prediction depends on the other rows); ours attends across a row's own fields.
Its "task view" is an MLP of the *scenario* embedding; ours encodes a per-task embedding, as the paper's
task view does. It has one task and one meta tower layer followed by an MLP; ours has one meta tower per
task and a linear output, as the paper describes.

Sources: written offline from the paper's method description and the public Scenario-Wise-Rec code; the
equations above are the paper's components as we read them, named by what they compute.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import ExpertGroup, FeatureEmbedding
from mtlbench.models.layers import activation as make_activation
from mtlbench.models.scenario_blocks import rows_of
from mtlbench.models.star import check_fields
from mtlbench.registry import register_model


def weight_generator(scenario_dim: int, in_dim: int, out_dim: int) -> nn.Linear:
    """``V S + v`` -> a flattened [in, out] weight with the scale of an ``nn.Linear(in, out)`` (see module doc)."""
    gen = nn.Linear(scenario_dim, in_dim * out_dim)
    nn.init.normal_(gen.weight, std=1.0 / math.sqrt(in_dim * scenario_dim))
    nn.init.uniform_(gen.bias, -1.0 / math.sqrt(in_dim), 1.0 / math.sqrt(in_dim))
    return gen


def meta_linear(x: Tensor, w: Tensor, b: Tensor, inverse: Tensor, groups: list[Tensor] | None) -> Tensor:
    """``x W(S) + b(S)`` with the weights of each row's scenario knowledge.

    x [B, n, in]; w [U, m, in, out] and b [U, m, out] generated for the U distinct scenario knowledges,
    ``m = 1`` (one map for a row's n inputs) or ``m = n`` (one map per input); ``inverse`` [B] the row's
    knowledge. ``groups`` (the rows of each knowledge): one matmul per group; ``None``: per-row weights.
    """
    if groups is None:
        w, b = w[inverse], b[inverse]
        if w.shape[1] == 1:
            return torch.baddbmm(b, x, w[:, 0])
        rows, n = x.shape[0], x.shape[1]
        return torch.bmm(x.reshape(rows * n, 1, -1), w.flatten(0, 1)).view(rows, n, -1) + b
    out = x.new_zeros(x.shape[0], x.shape[1], w.shape[-1])
    for g, rows_g in enumerate(groups):
        if w.shape[1] == 1:
            y = x[rows_g] @ w[g, 0] + b[g]
        else:
            y = torch.bmm(x[rows_g].transpose(0, 1), w[g]).transpose(0, 1) + b[g]
        out = out.index_copy(0, rows_g, y)
    return out


class MetaUnit(nn.Module):
    """Meta unit: layers with weights generated from the scenario knowledge ``S``.

    ``W_j = reshape(V_j S + v_j)``, ``b_j = U_j S + u_j``, ``h_j = σ(h_{j-1} W_j + b_j)``. The input is
    [B, n, in]: ``n`` vectors per row, all transformed with that row's generated weights.
    """

    def __init__(self, in_dim: int, dims: list[int], scenario_dim: int, act: str = "relu") -> None:
        super().__init__()
        sizes = [in_dim, *dims]
        self.shapes = list(zip(sizes[:-1], sizes[1:]))
        self.weight_gen = nn.ModuleList(weight_generator(scenario_dim, a, b) for a, b in self.shapes)
        self.bias_gen = nn.ModuleList(nn.Linear(scenario_dim, b) for _, b in self.shapes)
        self.act = make_activation(act)
        self.out_dim = sizes[-1]

    def generate(self, s: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every layer's (W [U, in, out], b [U, out]) from the scenario knowledges ``S`` [U, dim S]."""
        return [
            (wg(s).view(len(s), a, b), bg(s))  # W_j = reshape(V_j S + v_j), b_j = U_j S + u_j
            for (a, b), wg, bg in zip(self.shapes, self.weight_gen, self.bias_gen)
        ]

    def forward(self, x: Tensor, s: Tensor, inverse: Tensor, groups: list[Tensor] | None) -> Tensor:
        for w, b in self.generate(s):
            x = self.act(meta_linear(x, w.unsqueeze(1), b.unsqueeze(1), inverse, groups))  # σ(h W_j + b_j)
        return x

    def pairs(self, e: Tensor, t: Tensor, s: Tensor, inverse: Tensor, groups: list[Tensor] | None) -> Tensor:
        """``Meta(E_i ⊕ T_t)`` for every expert i and task t -> [B, K, n, out] (e [B, n, h], t [K, h]).

        The first layer splits as ``(E_i ⊕ T_t) W + b = E_i W_E + (T_t W_T + b)``: the expert part once per
        expert, the task part once per task (the same numbers as the concatenation, 2K times fewer products).
        """
        layers = self.generate(s)
        (w, b), rest = layers[0], layers[1:]
        h = e.shape[-1]
        ew = meta_linear(e, w[:, None, :h], b.new_zeros(len(b), 1, b.shape[-1]), inverse, groups)  # E_i W_E
        tw = torch.einsum("kh,uho->uko", t, w[:, h:]) + b.unsqueeze(1)  # T_t W_T + b   [U, K, out]
        x = self.act(ew.unsqueeze(1) + tw[inverse].unsqueeze(2))  # [B, K, n, out]
        bsz, k, n, _ = x.shape
        x = x.reshape(bsz, k * n, -1)
        for w, b in rest:
            x = self.act(meta_linear(x, w.unsqueeze(1), b.unsqueeze(1), inverse, groups))
        return x.view(bsz, k, n, -1)


class MetaTowers(nn.Module):
    """One meta tower per task: ``L^(j) = σ(Meta_t^(j)(L^(j-1)) + L^(j-1))``, then a linear output.

    Each meta layer is one generated linear map ``L W_t^(j)(S) + b_t^(j)(S)``; the ``K`` tasks' weights
    come from one generator per layer (outputs split by task).
    """

    def __init__(self, num_tasks: int, dim: int, layers: int, scenario_dim: int, act: str = "relu") -> None:
        super().__init__()
        self.k, self.dim = num_tasks, dim
        self.weight_gen = nn.ModuleList(weight_generator(scenario_dim, dim, num_tasks * dim) for _ in range(layers))
        self.bias_gen = nn.ModuleList(nn.Linear(scenario_dim, num_tasks * dim) for _ in range(layers))
        self.act = make_activation(act)
        self.out = nn.Parameter(torch.empty(num_tasks, dim).uniform_(-1 / math.sqrt(dim), 1 / math.sqrt(dim)))
        self.out_bias = nn.Parameter(torch.zeros(num_tasks))

    def generate(self, s: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every layer's per-task (W [U, K, d, d], b [U, K, d]) from the scenario knowledges [U, dim S]."""
        u, k, d = len(s), self.k, self.dim
        return [
            (wg(s).view(u, d, k, d).transpose(1, 2), bg(s).view(u, k, d))
            for wg, bg in zip(self.weight_gen, self.bias_gen)
        ]

    def forward(self, r: Tensor, s: Tensor, inverse: Tensor, groups: list[Tensor] | None) -> Tensor:
        """R [B, K, d] -> logits [B, K]."""
        h = r
        for w, b in self.generate(s):
            h = self.act(meta_linear(h, w, b, inverse, groups) + h)  # L^(j) = σ(Meta^(j)(L^(j-1)) + L^(j-1))
        return (h * self.out).sum(-1) + self.out_bias


@register_model("m2m")
class M2M(MultiTaskModel):
    """Transformer backbone -> expert / task / scenario views -> meta attention -> meta tower per task."""

    required_fields = ("scenario",)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        transformer_layers: int = 1,
        transformer_heads: int = 2,
        transformer_ff: int = 64,
        num_experts: int = 4,
        expert: tuple[int, ...] = (256, 64),
        scenario_dim: int = 16,
        scenario_fields: list[str] | None = None,
        attention_hidden: int = 64,
        tower_layers: int = 1,
        max_groups: int = 64,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if transformer_layers > 0 and embedding_dim % transformer_heads != 0:
            raise ConfigError(
                f"m2m: embedding_dim ({embedding_dim}) must be divisible by transformer_heads ({transformer_heads})"
            )
        if num_experts < 1 or not expert or tower_layers < 0 or max_groups < 0:
            raise ConfigError(
                f"m2m: need num_experts >= 1, at least one expert layer, tower_layers >= 0 and max_groups >= 0; "
                f"got num_experts={num_experts}, expert={list(expert)}, tower_layers={tower_layers}, "
                f"max_groups={max_groups}"
            )
        assert schema.scenario_field is not None  # required_fields: checked by MultiTaskModel.__init__
        fields = list(dict.fromkeys([schema.scenario_field, *(scenario_fields or [])]))
        check_fields("m2m", schema, fields, "scenario_fields")
        self.scenario_fields = fields
        self.max_groups = max_groups
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = embedding_dim
        num = torch.randn(len(schema.numeric), d) / math.sqrt(d)
        self.numeric = nn.Parameter(num) if schema.numeric else None  # token of a numeric x: x · e_f
        tokens = self.embedding.num_fields + len(schema.numeric)
        self.transformer = nn.ModuleList(
            nn.TransformerEncoderLayer(d, transformer_heads, transformer_ff, dropout, batch_first=True)
            for _ in range(transformer_layers)
        )
        self.experts = ExpertGroup(num_experts, tokens * d, list(expert), dropout, activation)  # E_i = f_i(F)
        h = self.experts.out_dim
        k = len(self.tasks)
        self.task_embedding = nn.Parameter(torch.randn(k, d) / math.sqrt(d))  # e_t
        self.task_view = nn.Sequential(nn.Linear(d, h), make_activation(activation))  # T_t = g(e_t)
        self.scenario_view = nn.Sequential(  # S = h(E(scenario fields))
            nn.Linear(len(fields) * d, scenario_dim), make_activation(activation)
        )
        self.attention = MetaUnit(2 * h, [attention_hidden], scenario_dim, activation)  # Meta(E_i ⊕ T_t)
        self.attention_v = nn.Linear(attention_hidden, 1, bias=False)  # v
        self.towers = MetaTowers(k, h, tower_layers, scenario_dim, activation)

    def tokens(self, batch: dict[str, Tensor]) -> Tensor:
        """Embedded tokens [B, n, d]: every field, numeric features as ``x · e_f``."""
        x = self.embedding.fields(batch)
        if self.numeric is not None:
            x = torch.cat([x, batch["numeric"].to(x.dtype).unsqueeze(-1) * self.numeric], dim=1)
        return x

    def scenario_knowledge(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[Tensor] | None]:
        """(S [U, dim S] of the U distinct scenario-field values in the batch, each row's one [B], row groups).

        ``S`` depends on a row only through its scenario fields, so it (and every meta weight) is computed
        once per distinct value; the groups (rows per value) let the meta layers run one matmul per value,
        or ``None`` above ``max_groups`` values (then per-row weights). Both give the same numbers.
        """
        pos = {f.name: i for i, f in enumerate(self.schema.categorical)}
        ids = batch["categorical"][:, [pos[n] for n in self.scenario_fields]]
        sizes = [self.schema.feature(n).vocab_size for n in self.scenario_fields]
        if math.prod(sizes) < 2**62:  # one integer key per row (mixed radix): a 1-D unique, much faster
            radix = torch.tensor([math.prod(sizes[i + 1 :]) for i in range(len(sizes))], device=ids.device)
            keys, inverse = torch.unique((ids * radix).sum(1), return_inverse=True)
            values = torch.stack([keys // r % n for r, n in zip(radix.tolist(), sizes)], dim=1)
        else:
            values, inverse = torch.unique(ids, dim=0, return_inverse=True)
        offsets = torch.tensor([self.embedding.offset_of[n] for n in self.scenario_fields], device=ids.device)
        s = self.scenario_view(self.embedding.table(values + offsets).flatten(1))  # S = h(E(scenario fields))
        groups = rows_of(inverse, len(values)) if len(values) <= self.max_groups else None
        return s, inverse, groups

    def views(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(expert view E [B, k, h], task view T [K, h])."""
        x = self.tokens(batch)
        for layer in self.transformer:
            x = layer(x)  # Transformer layer: multi-head self-attention + feed-forward
        e = self.experts(x.flatten(1))  # expert view
        t = self.task_view(self.task_embedding)  # task view
        return e, t

    def meta_attention(self, e: Tensor, t: Tensor, s: Tensor, inverse: Tensor, groups: list[Tensor] | None) -> Tensor:
        """``α_{t,i} = softmax_i(vᵀ Meta(E_i ⊕ T_t))`` -> [B, K, k]."""
        meta = self.attention.pairs(e, t, s, inverse, groups)  # Meta(E_i ⊕ T_t)   [B, K, k, ·]
        a = self.attention_v(meta).squeeze(-1)  # a_{t,i} = vᵀ Meta(E_i ⊕ T_t)
        return torch.softmax(a, dim=-1)  # α_{t,i}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        e, t = self.views(batch)
        s, inverse, groups = self.scenario_knowledge(batch)
        r = torch.bmm(self.meta_attention(e, t, s, inverse, groups), e)  # R_t = Σ_i α_{t,i} E_i   [B, K, h]
        logits = self.towers(r, s, inverse, groups)  # meta tower per task
        return {task: logits[:, i] for i, task in enumerate(self.tasks)}
