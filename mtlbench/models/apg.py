"""APG (Yan et al., NeurIPS 2022): Adaptive Parameter Generation, instance-wise weights for the deep layers.

The model reads like the paper's method section:

1. **Adaptive parameter generation**: a layer's weights are generated per instance from a *condition* ``z_i``,
   ``W_i = G(z_i)``, ``h_i = φ(W_i x_i)``, instead of being one static matrix for every instance. The condition
   here is *group-wise / mix-wise*: the embeddings of the scenario field and of the configured
   ``condition_fields`` (e.g. the user id for per-user weights), ``z_i = E(scenario) ⊕ E(f_1) ⊕ …``.
2. **Low-rank parameterisation**: ``W_i = U_i S_i V_i`` with ``U_i ∈ R^{N×K}``, ``S_i ∈ R^{K×K}``,
   ``V_i ∈ R^{K×M}`` and ``K ≪ N, M``; only ``K²`` numbers are generated per instance.
3. **Decomposed feed-forward**: ``h_i = U_i (S_i (V_i x_i))`` is computed right to left, so no ``N×M`` matrix
   is ever formed (``M K + K² + K N`` multiplications per instance).
4. **Parameter sharing**: ``U`` and ``V`` are shared by all instances (they model the common patterns) and
   learned directly; only ``S_i = G(z_i)`` is instance-specific (the custom patterns).
5. **Over-parameterisation**: in training ``U = U_l U_r`` and ``V = V_l V_r`` with an inner width ``P > K``
   (``overparam``): more shared parameters to learn with, which merge into ``U`` and ``V`` after training, so
   inference costs the same. :meth:`APGLinear.shared_factors` gives the merged matrices.

Row vectors: a batch is [B, M], so the code computes ``x Vᵀ S Uᵀ``; ``V`` is stored as its transpose [M, K] and
``U`` as [K, N], and the generated ``S`` is used as ``Sᵀ`` (a generated matrix, so the transpose is immaterial).

Where the paper leaves a choice (all in config): APG layers replace the bottom DNN ``dnn`` ([256, 128]),
followed by one plain tower per task (``tower``, the multi-task form; with one task the bottom + tower is one
deep CTR model); ``rank`` K (32; clamped to ``min(M, N)`` per layer, as low rank needs), ``overparam`` P (64;
``null`` turns it off; a layer whose K is at least P is not over-parameterised); the generator ``G`` is an
MLP with hidden layers ``generator`` ([64]); each layer has a shared static bias. The condition embeddings come
from the shared embedding table and are not detached (MMLRec detaches the scenario embedding; the paper says
nothing of it). Not implemented: the *self-wise* condition (``z_i`` = the layer's own input).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import MLP, FeatureEmbedding, Towers
from mtlbench.models.layers import activation as make_activation
from mtlbench.models.star import check_fields, lookup_fields
from mtlbench.registry import register_model


def _xavier(rows: int, cols: int) -> nn.Parameter:
    return nn.Parameter(nn.init.xavier_normal_(torch.empty(rows, cols)))


class APGLinear(nn.Module):
    """One APG layer: ``h = U S(z) V x + b`` with shared (optionally over-parameterised) U, V and generated S."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        condition_dim: int,
        rank: int,
        overparam: int | None,
        generator: list[int],
    ) -> None:
        super().__init__()
        k = min(rank, in_dim, out_dim)
        self.rank = k
        self.overparam = overparam if overparam is not None and overparam > k else None
        if self.overparam is None:
            self.v = _xavier(in_dim, k)  # Vᵀ: [M, K]
            self.u = _xavier(k, out_dim)  # Uᵀ: [K, N]
        else:  # V = V_l V_r, U = U_l U_r with inner width P
            p = self.overparam
            self.v_l, self.v_r = _xavier(in_dim, p), _xavier(p, k)
            self.u_l, self.u_r = _xavier(k, p), _xavier(p, out_dim)
        self.generator = MLP(condition_dim, generator, k * k)  # G: z -> S
        bound = 1 / math.sqrt(in_dim)
        self.bias = nn.Parameter(torch.empty(out_dim).uniform_(-bound, bound))

    def shared_factors(self) -> tuple[Tensor, Tensor]:
        """(Vᵀ [M, K], Uᵀ [K, N]); when over-parameterised, the merged products ``V_l V_r`` and ``U_l U_r``."""
        if self.overparam is None:
            return self.v, self.u
        return self.v_l @ self.v_r, self.u_l @ self.u_r

    def generate(self, z: Tensor) -> Tensor:
        """The instance-specific ``S_i = G(z_i)`` [B, K, K]."""
        return self.generator(z).view(len(z), self.rank, self.rank)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        v, u = self.shared_factors()
        s = self.generate(z)
        h = torch.bmm((x @ v).unsqueeze(1), s).squeeze(1)  # decomposed feed-forward: S (V x), then U (·)
        return h @ u + self.bias


@register_model("apg")
class APG(MultiTaskModel):
    """APG layers (U S(z) V, S generated from the scenario and condition fields) -> one tower per task."""

    required_fields = ("scenario",)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        dnn: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        rank: int = 32,
        overparam: int | None = 64,
        generator: tuple[int, ...] = (64,),
        condition_fields: list[str] | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if rank < 1 or (overparam is not None and overparam < rank):
            raise ConfigError(
                f"apg: need rank >= 1 and overparam >= rank (or null); got rank={rank}, overparam={overparam}"
            )
        if not dnn:
            raise ConfigError("apg: dnn needs at least one layer (the APG layers)")
        assert schema.scenario_field is not None  # required_fields: checked by MultiTaskModel.__init__
        fields = list(dict.fromkeys([schema.scenario_field, *(condition_fields or [])]))
        check_fields("apg", schema, fields, "condition_fields")
        self.condition_fields = fields
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        dims = [self.embedding.output_dim, *dnn]
        z_dim = len(fields) * embedding_dim
        self.layers = nn.ModuleList(
            APGLinear(a, b, z_dim, rank, overparam, list(generator)) for a, b in zip(dims[:-1], dims[1:])
        )
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.towers = Towers(self.tasks, dims[-1], list(tower), dropout, activation)

    def condition(self, batch: dict[str, Tensor]) -> Tensor:
        """``z_i``: the scenario and condition fields' embeddings, concatenated [B, len(fields) · D]."""
        return lookup_fields(self.embedding, batch, self.condition_fields).flatten(1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        h, z = self.embedding.flat(batch), self.condition(batch)
        for layer in self.layers:
            h = self.dropout(self.act(layer(h, z)))  # h = φ(U S(z) V x + b)
        return self.towers([h] * len(self.tasks))
