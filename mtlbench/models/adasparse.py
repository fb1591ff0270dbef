"""AdaSparse (Yang et al., CIKM 2022): adaptively sparse structures for multi-domain CTR prediction.

One DNN serves every domain; what differs per domain (and per sample) is *which neurons are used*. The
model reads like the paper's method section (equations named by what they compute):

1. **Domain-aware neuron-level weighting factors.** Every layer ``l`` of the DNN computes its neurons
   ``h_l = φ(W_l x_{l-1} + b_l)`` as usual, and a lightweight **pruner** computes one factor per neuron from
   the domain embedding ``e_d`` and the layer's input: ``u_l = W_π^l (e_d ⊕ x_{l-1}) + b_π^l``,
   ``π_l = Act(α u_l)``; the layer passes on ``x_l = π_l ⊙ h_l``. A neuron whose factor is 0 is pruned for
   that sample: its output is exactly 0.
2. **Three forms of Act** (``form``):

   - ``binary`` (binarisation): ``π = 1[σ(α u) ≥ ε]``, 0 or 1, trained with the straight-through estimator
     (the forward pass uses the 0/1 value, the backward pass the gradient of ``σ(α u)``);
   - ``scaling`` (scaling sigmoid): ``π = β σ(α u)`` in ``(0, β)``: neurons are re-weighted, never pruned;
   - ``fusion`` (default): ``π = β σ(α u) · 1[β σ(α u) ≥ ε]``: small factors prune, the others scale.

   ``α`` grows during training (``α_t = min(alpha_max, alpha + t · alpha_step)``, one step per training
   forward), so ``σ(α u)`` sharpens towards a step and the factors towards their final 0/1 (or 0/β) values.
3. **Sparsity regularisation.** ``r_l``, the share of layer ``l``'s neurons pruned in the batch, is held near
   the target ``r`` (``target_sparsity``): ``L_s = λ · mean_l |r_l − r|`` (``sparsity_weight`` = λ), returned
   as the auxiliary loss ``sparsity``. ``r_l`` counts pruned neurons exactly (``α u_l < t`` with
   ``t = logit(ε / β)``, ``β = 1`` for ``binary``); its gradient is the straight-through gradient of the
   soft count ``σ(t − α u_l)``.

Multi-task form (the paper predicts CTR only): a pruned bottom DNN (``hidden``) and one pruned tower per
task (``tower``) ending in a logit, every hidden layer with its own pruner. With one task the bottom plus
tower is the paper's pruned DNN.

Choices the paper leaves open (all in config): the pruner reads ``e_d ⊕ x_{l-1}`` (the layer's input; the
domain embedding ``e_d`` is the embedding of ``domain_fields``, default the scenario field) and factors
multiply the layer's activated output, so a pruned neuron is exactly 0 whatever ``φ``; ``prune_input``
also prunes the input embedding (default off); the form of ``L_s`` (absolute deviation, mean over
layers), ``ε = 0.25``, ``β = 2``, the ``α`` schedule and the target sparsity 0.3 are our settings. The
``scaling`` form prunes nothing, so it refuses a sparsity weight above 0.

Departures from Scenario-Wise-Rec's ``AdaSparse`` (read, not copied): its pruned factors are
``v · sign(v − ε)``, i.e. ``−v`` rather than 0 for a "pruned" neuron (and ``±1`` in the binary form), so
nothing is ever pruned; ours are exactly 0 as in the paper. It has no sparsity regulariser, and raises
``α`` on every forward pass, evaluation included; ours counts training steps only (a buffer, kept in
checkpoints).

Sources: written offline, from the paper's description of its method (the three forms, the α annealing, a
sparsity regulariser with a target ratio) and public re-implementations; the paper's exact equation text
was not at hand, so the regulariser's form and the straight-through details are marked above as ours.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput, MultiTaskModel
from mtlbench.models.layers import FeatureEmbedding
from mtlbench.models.layers import activation as make_activation
from mtlbench.models.star import check_fields, lookup_fields
from mtlbench.registry import register_model

FORMS = ("binary", "scaling", "fusion")


class Pruner(nn.Module):
    """Weighting factors ``π = Act(α u)``, ``u = W_π (e_d ⊕ x) + b_π`` for ``width`` neurons."""

    def __init__(self, domain_dim: int, in_dim: int, width: int, form: str, epsilon: float, beta: float) -> None:
        super().__init__()
        self.linear = nn.Linear(domain_dim + in_dim, width)
        self.form, self.epsilon = form, epsilon
        self.beta = 1.0 if form == "binary" else beta
        self.threshold = math.log(epsilon / self.beta) - math.log1p(-epsilon / self.beta)  # t = logit(ε/β)

    def forward(self, e_d: Tensor, x: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """(π [B, width], share of pruned neurons r with its straight-through gradient)."""
        z = alpha * self.linear(torch.cat([e_d, x], dim=1))  # α u
        soft = torch.sigmoid(z)
        if self.form == "scaling":
            return self.beta * soft, z.new_zeros(())  # π = β σ(α u): nothing pruned
        keep = (z >= self.threshold).to(z.dtype)  # 1[β σ(α u) ≥ ε]
        if self.form == "binary":
            pi = keep + (soft - soft.detach())  # π = 1[σ(α u) ≥ ε], straight-through
        else:
            pi = self.beta * soft * keep  # π = β σ(α u) · 1[β σ(α u) ≥ ε]
        pruned_soft = torch.sigmoid(self.threshold - z).mean()
        share = (1.0 - keep).mean() + (pruned_soft - pruned_soft.detach())  # r_l, straight-through
        return pi, share


class PrunedMLP(nn.Module):
    """Linear -> φ -> ``⊙ π`` per hidden layer (each with its pruner); an optional final linear layer."""

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        domain_dim: int,
        form: str,
        epsilon: float,
        beta: float,
        out_dim: int | None = None,
        dropout: float = 0.0,
        act: str = "relu",
    ) -> None:
        super().__init__()
        dims = [in_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.pruners = nn.ModuleList(Pruner(domain_dim, a, b, form, epsilon, beta) for a, b in zip(dims[:-1], dims[1:]))
        self.act = make_activation(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output = nn.Linear(dims[-1], out_dim) if out_dim is not None else None
        self.out_dim = out_dim if out_dim is not None else dims[-1]

    def forward(self, x: Tensor, e_d: Tensor, alpha: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """(output, the factors π_l of every layer, the pruned shares r_l)."""
        factors, shares = [], []
        for layer, pruner in zip(self.layers, self.pruners):
            pi, share = pruner(e_d, x, alpha)  # π_l from e_d ⊕ x_{l-1}
            x = self.dropout(pi * self.act(layer(x)))  # x_l = π_l ⊙ φ(W_l x_{l-1} + b_l)
            factors.append(pi)
            shares.append(share)
        return (self.output(x) if self.output is not None else x), factors, shares


@register_model("adasparse")
class AdaSparse(MultiTaskModel):
    """Pruned DNN bottom -> one pruned tower per task; sparsity regulariser as an auxiliary loss."""

    required_fields = ("scenario",)
    alpha_now: Tensor
    steps: Tensor

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        hidden: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        domain_fields: list[str] | None = None,
        form: str = "fusion",
        epsilon: float = 0.25,
        beta: float = 2.0,
        alpha: float = 1.0,
        alpha_step: float = 1.0e-4,
        alpha_max: float = 5.0,
        target_sparsity: float = 0.3,
        sparsity_weight: float = 0.1,
        prune_input: bool = False,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if form not in FORMS:
            raise ConfigError(f"adasparse: form must be one of {', '.join(FORMS)}, got {form!r}")
        scale = 1.0 if form == "binary" else beta
        if form != "scaling" and not 0.0 < epsilon < scale:
            raise ConfigError(f"adasparse: epsilon must lie in (0, {scale}) for form {form!r}, got {epsilon}")
        if form == "scaling" and sparsity_weight > 0:
            raise ConfigError("adasparse: form 'scaling' prunes no neuron; set sparsity_weight: 0 (or form fusion)")
        if not 0.0 <= target_sparsity < 1.0 or sparsity_weight < 0 or alpha <= 0 or alpha_max < alpha:
            raise ConfigError(
                "adasparse: need 0 <= target_sparsity < 1, sparsity_weight >= 0 and 0 < alpha <= alpha_max; got "
                f"target_sparsity={target_sparsity}, sparsity_weight={sparsity_weight}, alpha={alpha}, "
                f"alpha_max={alpha_max}"
            )
        assert schema.scenario_field is not None  # required_fields: checked by MultiTaskModel.__init__
        self.domain_fields = list(domain_fields) if domain_fields else [schema.scenario_field]
        check_fields("adasparse", schema, self.domain_fields, "domain_fields")
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d_in, d_dom = self.embedding.output_dim, len(self.domain_fields) * embedding_dim
        self.input_pruner = Pruner(d_dom, d_in, d_in, form, epsilon, beta) if prune_input else None
        self.bottom = PrunedMLP(d_in, list(hidden), d_dom, form, epsilon, beta, None, dropout, activation)
        self.towers = nn.ModuleList(
            PrunedMLP(self.bottom.out_dim, list(tower), d_dom, form, epsilon, beta, 1, dropout, activation)
            for _ in self.tasks
        )
        self.alpha0, self.alpha_step, self.alpha_max = alpha, alpha_step, alpha_max
        self.target_sparsity, self.sparsity_weight = target_sparsity, sparsity_weight
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("alpha_now", torch.tensor(float(alpha)))
        self.last_factors: list[Tensor] = []  # the last forward's π of every pruned layer (detached)
        self.last_sparsity: Tensor = torch.zeros(0)  # and its pruned shares r_l

    def current_alpha(self) -> Tensor:
        """``α_t = min(alpha_max, alpha + t · alpha_step)``; a training forward advances ``t``."""
        if self.training:
            with torch.no_grad():
                self.steps += 1
                alpha = self.alpha0 + self.steps.to(self.alpha_now.dtype) * self.alpha_step
                self.alpha_now.copy_(alpha.clamp(max=self.alpha_max))
        return self.alpha_now

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        alpha = self.current_alpha()
        e_d = lookup_fields(self.embedding, batch, self.domain_fields).flatten(1)  # domain embedding e_d
        x = self.embedding.flat(batch)
        factors, shares = [], []
        if self.input_pruner is not None:
            pi, share = self.input_pruner(e_d, x, alpha)
            x = pi * x
            factors.append(pi)
            shares.append(share)
        h, f, s = self.bottom(x, e_d, alpha)
        factors += f
        shares += s
        logits = {}
        for t, tower in zip(self.tasks, self.towers):
            out, f, s = tower(h, e_d, alpha)
            logits[t] = out.squeeze(-1)
            factors += f
            shares += s
        self.last_factors = [f.detach() for f in factors]
        r = torch.stack(shares)
        self.last_sparsity = r.detach()
        aux = {}
        if self.sparsity_weight > 0:
            aux["sparsity"] = self.sparsity_weight * (r - self.target_sparsity).abs().mean()  # L_s
        return ModelOutput(logits=logits, aux_losses=aux)
