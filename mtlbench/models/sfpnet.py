"""SFPNet (Zhang et al., SIGIR 2024; seed 003): Scenario-Adaptive Fine-Grained Personalization Network.

The file follows section 4 of the paper. Inputs (Eq. 1): the feature embeddings ``x_1 … x_n``, the
behaviour sequence ``b_1 … b_Nb`` (one representation per real, non-padded behaviour) and the scenario
embedding ``s_m``. ``L`` stacked **Scenario-Tailoring Blocks** (default 3, the paper's recommendation)
re-encode them; block ``l`` maps width ``d_{l-1}`` to ``d_l``:

- **Scenario-Adaptive Module** (4.1): distribution-aware pooling of the sequence into its mean and
  standard deviation (Eq. 2), a LayerNorm'd gate over all features, the pooled sequence and ``s_m``
  (Eq. 3), re-weighting of the features and the pooled sequence (Eq. 4).
- **Residual-Tailoring Module** (4.2): an MLP aggregates the gated context into one context vector per
  slot (Eq. 5); every feature (Eq. 6) and every single behaviour of the sequence (Eq. 7) is re-coded as
  ``ReLU(W v + b) + σ(W' v + b') ⊗ c``: its own transform plus a gated share of the context.

Prediction (4.3): DIN target attention of the target item over the tailored behaviours (Eq. 8), then
the scenario-aware S-DNN whose every layer re-weights its input by a LayerNorm'd gate on the input and
``s_m`` (Eq. 9-11).

Single-task CTR use (the paper's): on a dataset with one task, the model is exactly the above — one
S-DNN on top. Multi-task use ("SFPNet-style scenario blocks"): the blocks and the attention are the
shared bottom, and every task gets its own S-DNN tower (``tower_type: sdnn``) or a plain MLP tower
(``tower_type: mlp``, the paper's "w/o S-DNN" ablation).

Readings of what the paper leaves open (documented here, exposed in config where it is a choice):

- Eq. 6 writes ``x_i^{l-1}`` but defines it as "the scenario-adaptive representation of the i-th
  feature output by SAM", i.e. the Eq. 4 slice; ``tailor_input: sam`` (default) follows that text,
  ``previous`` uses the block's raw input instead. Eq. 7 tailors the raw behaviours ``v_i^{l-1}`` (SAM
  only sees the pooled sequence).
- Eq. 7's context ``c_b^l = C^l[n d_l : (n+2) d_l]`` is ``2 d_l`` wide (the mean and std slots) while
  ``v_i^l`` is ``d_l`` wide: the two halves are added. Any learned linear fold would be absorbed by
  ``W_3`` (Eq. 5 is linear in its output), so adding loses nothing.
- Eq. 2's square root gets ``+ std_eps`` inside (a one-behaviour or constant sequence has zero
  variance, whose square root has no gradient); an all-padding sequence pools to mean 0.
- Behaviour representations ``b_i`` are the embeddings of the sequence's ids (the sequence shares the
  item table when the schema says so). Other sequence fields, if any, are mean-pooled ordinary
  features; numeric features are fields too, embedded as ``value · e_f``.
- DIN (Eq. 8): the query is the target item's tailored representation ``x_item^L``; the activation unit
  is an MLP over ``[v, q, v − q, v ⊙ q]``; weights are not softmax-normalised (DIN's choice; set
  ``attention_softmax: true`` to normalise); padded behaviours get weight 0.
- Widths of the gate / aggregation MLPs (``gate_hidden``, ``context_hidden``) are not given; the
  S-DNN defaults to the paper's [256, 128, 64].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import MLP, FeatureEmbedding, Towers
from mtlbench.models.star import lookup_fields
from mtlbench.registry import register_model


# -- 4.1 Scenario-Adaptive Module ---------------------------------------------------------------------
def distribution_pooling(v: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Eq. 2: ``B = (mean_i b_i, sqrt(mean_i b_i² − (mean_i b_i)²))`` over the real behaviours -> [B, 2, D].

    The variance is computed as the mean squared deviation (the same quantity, without cancellation).
    """
    m = mask.unsqueeze(-1).to(v.dtype)
    n = m.sum(1).clamp_min(1.0)
    mean = (v * m).sum(1) / n
    var = ((v - mean.unsqueeze(1)).square() * m).sum(1) / n
    return torch.stack([mean, torch.sqrt(var + eps)], dim=1)


class ScenarioAdaptiveModule(nn.Module):
    """SAM: pooling (Eq. 2), gate personalisation (Eq. 3) and re-weighting (Eq. 4)."""

    def __init__(self, num_fields: int, dim: int, scenario_dim: int, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        width = (num_fields + 2) * dim
        self.w0 = nn.Linear(width + scenario_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.w1 = nn.Linear(hidden, width)
        self.eps = eps

    def forward(self, x: Tensor, v: Tensor, mask: Tensor, s: Tensor) -> Tensor:
        """x [B, n, d], v [B, Nb, d], mask [B, Nb], s [B, d_s] -> X̂ [B, n + 2, d]."""
        pooled = distribution_pooling(v, mask, self.eps)  # Eq. 2: B^l
        feats = torch.cat([x, pooled], dim=1)  # x_1 ⊕ … ⊕ x_n ⊕ B^l
        big_x = torch.cat([feats.flatten(1), s], dim=1)  # X^l = (… ⊕ B^l ⊕ s_m)
        a = torch.sigmoid(self.w1(self.norm(torch.relu(self.w0(big_x)))))  # Eq. 3: A^l
        return feats * a.view_as(feats)  # Eq. 4: X̂^l


# -- 4.2 Residual-Tailoring Module --------------------------------------------------------------------
def _per_field(n: int, d_in: int, d_out: int) -> tuple[nn.Parameter, nn.Parameter]:
    """One ``d_in x d_out`` weight and bias per field, initialised like ``nn.Linear``."""
    w = torch.empty(n, d_in, d_out)
    for i in range(n):
        nn.init.kaiming_uniform_(w[i].T, a=math.sqrt(5))
    bound = 1 / math.sqrt(d_in)
    return nn.Parameter(w), nn.Parameter(torch.empty(n, d_out).uniform_(-bound, bound))


class ResidualTailoringModule(nn.Module):
    """RTM: context aggregation (Eq. 5), residual tailoring of every feature (Eq. 6) and behaviour (Eq. 7)."""

    def __init__(self, num_fields: int, d_in: int, d_out: int, hidden: int) -> None:
        super().__init__()
        self.n, self.d_out = num_fields, d_out
        self.w2 = nn.Linear((num_fields + 2) * d_in, hidden)
        self.w3 = nn.Linear(hidden, (num_fields + 2) * d_out)
        self.wx1, self.bx1 = _per_field(num_fields, d_in, d_out)  # W_{x_i,1}, b_{x_i,1}
        self.wx2, self.bx2 = _per_field(num_fields, d_in, d_out)  # W_{x_i,2}, b_{x_i,2}
        self.w4 = nn.Linear(d_in, d_out)
        self.w5 = nn.Linear(d_in, d_out)

    def context(self, x_hat: Tensor) -> Tensor:
        """Eq. 5: ``C^l = W_3 ReLU(W_2 X̂^l + b_2) + b_3`` -> [B, n + 2, d_out]."""
        return self.w3(torch.relu(self.w2(x_hat.flatten(1)))).view(len(x_hat), self.n + 2, self.d_out)

    def forward(self, x_hat: Tensor, x_in: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """x_hat [B, n + 2, d_in] (SAM output), x_in [B, n, d_in] (tailored), v [B, Nb, d_in]."""
        c = self.context(x_hat)
        c_i, c_b = c[:, : self.n], c[:, self.n] + c[:, self.n + 1]  # c_b: both sequence slots
        x = (
            torch.relu(torch.einsum("bnd,nde->bne", x_in, self.wx1) + self.bx1)
            + torch.sigmoid(torch.einsum("bnd,nde->bne", x_in, self.wx2) + self.bx2) * c_i
        )  # Eq. 6
        v = torch.relu(self.w4(v)) + torch.sigmoid(self.w5(v)) * c_b.unsqueeze(1)  # Eq. 7
        return x, v


class ScenarioTailoringBlock(nn.Module):
    """One block: SAM then RTM; maps features and behaviours from width ``d_in`` to ``d_out``."""

    def __init__(
        self,
        num_fields: int,
        d_in: int,
        d_out: int,
        scenario_dim: int,
        gate_hidden: int,
        context_hidden: int,
        tailor_input: str = "sam",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.sam = ScenarioAdaptiveModule(num_fields, d_in, scenario_dim, gate_hidden, eps)
        self.rtm = ResidualTailoringModule(num_fields, d_in, d_out, context_hidden)
        self.tailor_input = tailor_input

    def forward(self, x: Tensor, v: Tensor, mask: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        x_hat = self.sam(x, v, mask, s)
        return self.rtm(x_hat, x_hat[:, : x.shape[1]] if self.tailor_input == "sam" else x, v)


# -- 4.3 Scenario-Specific Prediction -----------------------------------------------------------------
class TargetAttention(nn.Module):
    """Eq. 8, DIN: ``V = Σ_i a(v_i, q) v_i`` with an MLP activation unit over ``[v, q, v − q, v ⊙ q]``."""

    def __init__(self, dim: int, hidden: list[int], softmax: bool = False) -> None:
        super().__init__()
        self.unit = MLP(4 * dim, hidden, 1)
        self.softmax = softmax

    def weights(self, v: Tensor, mask: Tensor, q: Tensor) -> Tensor:
        q = q.unsqueeze(1).expand_as(v)
        w = self.unit(torch.cat([v, q, v - q, v * q], dim=-1)).squeeze(-1)
        if self.softmax:
            w = torch.softmax(w.masked_fill(~mask, -1e9), dim=1)
        return w * mask.to(w.dtype)

    def forward(self, v: Tensor, mask: Tensor, q: Tensor) -> Tensor:
        return (self.weights(v, mask, q).unsqueeze(-1) * v).sum(1)


class ScenarioDNN(nn.Module):
    """S-DNN (Eq. 9-11): each layer ``H^j = ReLU(W_7 (H^{j-1} ⊗ A_p^j) + b_7)`` with the scenario gate
    ``A_p^j = σ(W_6 LN(ReLU(W_5 (H^{j-1} ⊕ s_m) + b_5)) + b_6)``; a final linear layer gives the logit."""

    def __init__(
        self, in_dim: int, scenario_dim: int, hidden: list[int], gate_hidden: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        dims = [in_dim, *hidden]
        self.gates = nn.ModuleList(
            nn.Sequential(
                nn.Linear(a + scenario_dim, gate_hidden),
                nn.ReLU(),
                nn.LayerNorm(gate_hidden),
                nn.Linear(gate_hidden, a),
                nn.Sigmoid(),
            )
            for a in dims[:-1]
        )
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(dims[-1], 1)

    def forward(self, h: Tensor, s: Tensor) -> Tensor:
        for gate, layer in zip(self.gates, self.layers):
            a = gate(torch.cat([h, s], dim=1))  # Eq. 10: A_p^j
            h = self.dropout(torch.relu(layer(h * a)))  # Eq. 11: H^j
        return self.out(h).squeeze(-1)  # Eq. 9 (before σ)


@register_model("sfpnet")
class SFPNet(MultiTaskModel):
    """L Scenario-Tailoring Blocks -> DIN over the tailored sequence -> one S-DNN (or MLP) tower per task."""

    required_fields = ("scenario", "sequence", "item")

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        num_blocks: int = 3,
        block_dims: list[int] | None = None,
        gate_hidden: int = 128,
        context_hidden: int = 128,
        sdnn: tuple[int, ...] = (256, 128, 64),
        tower_type: str = "sdnn",
        din_hidden: tuple[int, ...] = (80, 40),
        attention_softmax: bool = False,
        tailor_input: str = "sam",
        sequence: str | None = None,
        std_eps: float = 1e-6,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(schema)
        seqs = [f.name for f in schema.sequences]
        self.sequence_name = sequence if sequence is not None else seqs[0]
        if self.sequence_name not in seqs:
            raise ConfigError(
                f"sfpnet: sequence {self.sequence_name!r} is not a sequence field of dataset "
                f"{schema.name!r}; sequence fields: {seqs}"
            )
        if tower_type not in ("sdnn", "mlp"):
            raise ConfigError(f"sfpnet: tower_type must be 'sdnn' or 'mlp', got {tower_type!r}")
        if tailor_input not in ("sam", "previous"):
            raise ConfigError(f"sfpnet: tailor_input must be 'sam' or 'previous', got {tailor_input!r}")
        dims = list(block_dims) if block_dims is not None else [embedding_dim] * num_blocks
        if num_blocks < 1 or len(dims) != num_blocks:
            raise ConfigError(
                f"sfpnet: need num_blocks >= 1 and one width per block; "
                f"got num_blocks={num_blocks}, block_dims={block_dims}"
            )
        # Eq. 1 inputs: x_1 … x_n (every field but the scenario and the behaviour sequence), b_i, s_m
        names = [f.name for f in schema.categorical if f.name != schema.scenario_field]
        names += [s for s in seqs if s != self.sequence_name]
        self.embedding = FeatureEmbedding(schema, embedding_dim, fields=names)
        num = torch.randn(len(schema.numeric), embedding_dim) / math.sqrt(embedding_dim)
        self.numeric = nn.Parameter(num) if schema.numeric else None  # e_f of x_f = value · e_f
        assert schema.item_field is not None  # required_fields: checked by MultiTaskModel.__init__
        self.item_pos = names.index(schema.item_field)
        n = len(names) + len(schema.numeric)
        widths = [embedding_dim, *dims]
        self.blocks = nn.ModuleList(
            ScenarioTailoringBlock(n, a, b, embedding_dim, gate_hidden, context_hidden, tailor_input, std_eps)
            for a, b in zip(widths[:-1], widths[1:])
        )
        self.attention = TargetAttention(dims[-1], list(din_hidden), attention_softmax)
        h1 = (n + 1) * dims[-1]  # H^1 = x_1^L ⊕ … ⊕ x_n^L ⊕ V
        if tower_type == "sdnn":
            self.towers: nn.ModuleList | Towers = nn.ModuleList(
                ScenarioDNN(h1, embedding_dim, list(sdnn), gate_hidden, dropout) for _ in self.tasks
            )
        else:
            self.towers = Towers(self.tasks, h1, list(sdnn), dropout)
        self.tower_type = tower_type

    def inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x^0 [B, n, d], b^0 [B, Nb, d], mask [B, Nb], s_m [B, d])."""
        x = self.embedding.fields(batch)
        if self.numeric is not None:
            x = torch.cat([x, batch["numeric"].to(x.dtype).unsqueeze(-1) * self.numeric], dim=1)
        v, mask = self.embedding.sequence(batch, self.sequence_name)
        assert self.schema.scenario_field is not None  # required_fields: checked by MultiTaskModel.__init__
        s = lookup_fields(self.embedding, batch, [self.schema.scenario_field]).squeeze(1)
        return x, v, mask, s

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The shared bottom: (H^1 [B, (n + 1) d_L], s_m)."""
        x, v, mask, s = self.inputs(batch)
        for block in self.blocks:
            x, v = block(x, v, mask, s)
        pooled = self.attention(v, mask, x[:, self.item_pos])  # Eq. 8: V
        return torch.cat([x.flatten(1), pooled], dim=1), s

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        h, s = self.encode(batch)
        if isinstance(self.towers, Towers):  # tower_type == "mlp"
            return self.towers([h] * len(self.tasks))
        return {t: tower(h, s) for t, tower in zip(self.tasks, self.towers)}
