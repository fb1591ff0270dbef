"""DIN (Zhou et al., KDD 2018): Deep Interest Network, a local activation unit over the user's behaviours.

The model reads like the paper's section 4:

1. **Embedding**: user profile, candidate ad and context fields, and the user behaviour sequence, whose ids
   share the candidate item's embedding table (the schema's ``embedding`` of the sequence field);
2. **local activation unit** (Eq. 3): the user representation *with respect to the candidate* ``v_A`` is the
   weighted sum of the behaviour embeddings ``v_U(A) = Σ_j a(e_j, v_A) e_j``, where the activation unit
   ``a(·)`` is a feed-forward network over the two embeddings and their **out product**, ending in one
   output. The weights are **not** softmax-normalised (the paper drops the normalisation to keep the
   intensity of the user's interest); padded positions get weight 0;
3. the pooled interest, the other field embeddings (profile, candidate, context) and the numeric features are
   concatenated and fed to an MLP (the paper's 200-80) with **Dice** activations (data-adaptive PReLU:
   ``f(s) = p(s)·s + (1 − p(s))·α s``, ``p(s) = σ((s − E[s]) / sqrt(Var[s] + ε))`` with batch statistics in
   training and moving averages in inference), then one logit.

Readings of what the paper leaves open (exposed in config):

- "Out product": ``product: outer`` (default) feeds the unit ``[e_j, v_A, vec(e_j v_Aᵀ)]``, the outer product
  of the two vectors; the first layer is computed as the equal bilinear form ``e_jᵀ W_h v_A`` (no D²-wide
  tensor). ``element`` is the authors' released code's form ``[e_j, v_A, e_j − v_A, e_j ⊙ v_A]``.
- Activations: ``activation: dice`` (default) uses Dice in the MLP and PReLU in the activation unit (the
  figure labels both "PReLU/Dice"; Dice's batch statistics over padded behaviours would mix in padding,
  PReLU needs none); ``prelu`` uses PReLU everywhere. Dice's ε is the paper's 1e-8; its moving averages
  use momentum 0.1; a one-row training batch uses the moving averages.
- The candidate ``v_A`` is the item field's embedding (the schema's ``item_field``); the attended sequence is
  ``sequence`` (default: the dataset's first sequence field); other sequence fields are mean-pooled features.
- Not implemented: the mini-batch aware regulariser (an L2 variant for huge sparse tables; use the
  optimiser's weight decay or none).

Multi-task form (the paper predicts CTR only), our choice: the embeddings, the activation unit and the MLP
``dnn`` are shared; each task has a tower (``tower``, default no hidden layer: one linear logit per task).
With one task this is the paper's model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import FeatureEmbedding
from mtlbench.models.star import lookup_fields
from mtlbench.registry import register_model

ACTIVATIONS = ("dice", "prelu")
PRODUCTS = ("outer", "element")


class Dice(nn.Module):
    """Dice: ``f(s) = p(s)·s + (1 − p(s))·α s`` with ``p(s) = σ((s − E[s]) / sqrt(Var[s] + ε))`` per unit."""

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, dim: int, eps: float = 1e-8, momentum: float = 0.1) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.eps, self.momentum = eps, momentum
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, s: Tensor) -> Tensor:
        flat = s.reshape(-1, s.shape[-1])
        if self.training and len(flat) > 1:
            mean, var = flat.mean(0), flat.var(0, unbiased=False)  # E[s], Var[s] of the mini-batch
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * flat.var(0, unbiased=True))
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((s - mean) / torch.sqrt(var + self.eps))
        return p * s + (1 - p) * self.alpha * s


class PReLU(nn.Module):
    """PReLU over the last dimension, one slope per unit: ``f(s) = s`` if ``s > 0`` else ``α s`` (α starts at 0.25)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,), 0.25))

    def forward(self, s: Tensor) -> Tensor:
        return torch.where(s > 0, s, self.alpha * s)


def make_activation(name: str, dim: int) -> nn.Module:
    return Dice(dim) if name == "dice" else PReLU(dim)


class DeepNet(nn.Sequential):
    """Linear -> Dice / PReLU -> dropout per hidden layer, then an optional linear output layer."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int | None, act: str, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, h), make_activation(act, h)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
            in_dim = out_dim
        super().__init__(*layers)
        self.out_dim = in_dim


class ActivationUnit(nn.Module):
    """``a(e_j, v_A)``: an MLP over the behaviour, the candidate and their out product (see the module doc).

    ``weights`` returns the unnormalised attention weights [B, L] (0 at padding); ``forward`` the pooled
    interest ``v_U(A) = Σ_j a(e_j, v_A) e_j`` (Eq. 3).
    """

    def __init__(self, dim: int, hidden: list[int], product: str = "outer") -> None:
        super().__init__()
        if not hidden:
            raise ConfigError("din: attention_hidden needs at least one layer (the activation unit is an MLP)")
        self.product = product
        h0 = hidden[0]
        if product == "outer":  # first layer on [e, v, vec(e vᵀ)]: W_e e + W_v v + eᵀ W_h v + b
            self.w_key = nn.Linear(dim, h0)
            self.w_query = nn.Linear(dim, h0, bias=False)
            bound = 1 / math.sqrt(2 * dim + dim * dim)  # nn.Linear's init for the (2D + D²)-wide input
            self.w_outer = nn.Parameter(torch.empty(dim, dim, h0).uniform_(-bound, bound))
            for lin in (self.w_key, self.w_query):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.uniform_(self.w_key.bias, -bound, bound)
            self.first: nn.Module = nn.Identity()
        else:  # [e, v, e − v, e ⊙ v]
            self.first = nn.Linear(4 * dim, h0)
        self.rest = nn.Sequential(PReLU(h0), DeepNet(h0, list(hidden[1:]), 1, "prelu"))

    def first_layer(self, keys: Tensor, query: Tensor) -> Tensor:
        """The activation unit's first linear layer on [B, L, ·] inputs -> [B, L, h0]."""
        if self.product == "outer":
            bilinear = torch.einsum("bla,bah->blh", keys, torch.einsum("bc,ach->bah", query, self.w_outer))
            return self.w_key(keys) + self.w_query(query).unsqueeze(1) + bilinear
        q = query.unsqueeze(1).expand_as(keys)
        return self.first(torch.cat([keys, q, keys - q, keys * q], dim=-1))

    def weights(self, keys: Tensor, mask: Tensor, query: Tensor) -> Tensor:
        w = self.rest(self.first_layer(keys, query)).squeeze(-1)  # a(e_j, v_A), no softmax
        return w * mask.to(w.dtype)

    def forward(self, keys: Tensor, mask: Tensor, query: Tensor) -> Tensor:
        return (self.weights(keys, mask, query).unsqueeze(-1) * keys).sum(1)  # Eq. 3


@register_model("din")
class DIN(MultiTaskModel):
    """Activation unit over the behaviours w.r.t. the candidate item -> MLP (Dice) -> one logit per task."""

    required_fields = ("sequence", "item")

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        sequence: str | None = None,
        attention_hidden: tuple[int, ...] = (36,),
        product: str = "outer",
        dnn: tuple[int, ...] = (200, 80),
        tower: tuple[int, ...] = (),
        activation: str = "dice",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(schema)
        seqs = [f.name for f in schema.sequences]
        self.sequence_name = sequence if sequence is not None else seqs[0]
        if self.sequence_name not in seqs:
            raise ConfigError(
                f"din: sequence {self.sequence_name!r} is not a sequence field of dataset {schema.name!r}; "
                f"sequence fields: {seqs}"
            )
        if activation not in ACTIVATIONS:
            raise ConfigError(f"din: activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        if product not in PRODUCTS:
            raise ConfigError(f"din: product must be one of {list(PRODUCTS)}, got {product!r}")
        assert schema.item_field is not None  # required_fields: checked by MultiTaskModel.__init__
        self.item_field = schema.item_field
        names = [f.name for f in schema.categorical] + [s for s in seqs if s != self.sequence_name]
        self.embedding = FeatureEmbedding(schema, embedding_dim, fields=names)
        self.attention = ActivationUnit(embedding_dim, list(attention_hidden), product)
        self.dnn = DeepNet(self.embedding.output_dim + embedding_dim, list(dnn), None, activation, dropout)
        self.towers = nn.ModuleList(DeepNet(self.dnn.out_dim, list(tower), 1, activation, dropout) for _ in self.tasks)

    def interest(self, batch: dict[str, Tensor]) -> Tensor:
        """``v_U(A)`` [B, D]: the behaviours pooled by their activation w.r.t. the candidate item."""
        keys, mask = self.embedding.sequence(batch, self.sequence_name)
        query = lookup_fields(self.embedding, batch, [self.item_field]).squeeze(1)  # v_A
        return self.attention(keys, mask, query)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        h = self.dnn(torch.cat([self.embedding.flat(batch), self.interest(batch)], dim=1))
        return {t: tower(h).squeeze(-1) for t, tower in zip(self.tasks, self.towers)}
