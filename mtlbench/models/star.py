"""STAR (Sheng et al., CIKM 2021): one star-topology network that serves every scenario.

The model reads like the paper's method section:

1. embeddings of all fields (the scenario id is one of them) are concatenated into ``z``;
2. **partitioned normalisation** (PN) normalises ``z`` with the statistics of the row's scenario and
   scales/shifts it with shared and scenario-specific parameters:
   ``z' = (γ ⊙ γ_p) (z − E_p) / sqrt(Var_p + ε) + (β + β_p)``;
3. the **star-topology FC network**: every layer's weights are the element-wise product of the
   centred (shared) weights and the scenario's own weights, ``W*_p = W_p ⊙ W``, and its bias the sum
   ``b*_p = b_p + b``; ``out_p = φ(in_p W*_p + b*_p)``;
4. the **auxiliary network**: a small MLP over the scenario indicator and the fields that describe the
   scenario, whose logit ``s_a`` is added to the main logit ``s_m`` (``ŷ = σ(s_m + s_a)``).

Multi-task form (the paper predicts CTR only): the star FCN is the bottom; on top sits one tower per
task that is itself a star-topology FCN ending in one logit, and the auxiliary network outputs one
logit per task, added to that task's tower logit. With one task this is the paper's model.

Choices the paper leaves open (all in config):

- PN statistics in training. The paper's batches hold one domain each, so its batch statistics are
  domain statistics. Batches here mix scenarios, so with ``partition_stats: true`` (default) each row is
  normalised with the mean/variance of *its scenario's rows in the batch*, and per-scenario moving
  averages are kept for evaluation, as the paper prescribes at test time. ``false`` uses whole-batch
  statistics (and one moving average) with the scenario-specific affine parameters kept.
- PN on scenarios with very few rows in a batch: a scenario with fewer than ``norm_min_rows`` (default 2)
  rows in a training batch is normalised with its moving averages, as at test time, and its moving
  averages are not updated from that batch (one row minus its own mean is exactly zero, and one row has
  no variance to estimate). See :class:`PartitionedNorm`.
- Initialisation: scenario weights start at 1 and scenario biases (and ``β_p``) at 0, so at
  initialisation every scenario computes the shared network and specialises from there.
- Auxiliary inputs: ``aux_fields`` (default: the categorical fields whose role is ``context``, which
  includes the scenario field; the scenario field is always added).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import MLP, FeatureEmbedding, activation
from mtlbench.registry import register_model


def scenario_ids(schema: DatasetSchema, batch: dict[str, Tensor]) -> Tensor:
    """The scenario id of every row [B] (the scenario field's categorical column)."""
    if "scenario" in batch:
        return batch["scenario"]
    if schema.scenario_field is None:
        raise ConfigError(f"rows have no scenario id: dataset {schema.name!r} has no scenario field")
    pos = [f.name for f in schema.categorical].index(schema.scenario_field)
    return batch["categorical"][:, pos]


def lookup_fields(embedding: FeatureEmbedding, batch: dict[str, Tensor], names: list[str]) -> Tensor:
    """Embeddings [B, len(names), D] of named categorical fields from ``embedding``'s shared table."""
    pos = {f.name: i for i, f in enumerate(embedding.schema.categorical)}
    idx = [pos[n] for n in names]
    offsets = torch.tensor([embedding.offset_of[n] for n in names], device=batch["categorical"].device)
    return embedding.table(batch["categorical"][:, idx] + offsets)


def check_fields(model: str, schema: DatasetSchema, names: list[str], what: str) -> None:
    """A one-line ConfigError for configured field names that are not categorical features."""
    known = [f.name for f in schema.categorical]
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(
            f"{model}: {what} {bad} are not categorical fields of dataset {schema.name!r}; known: {known}"
        )


class PartitionedNorm(nn.Module):
    """Partitioned normalisation: ``z' = (γ ⊙ γ_p)(z − E_p)/sqrt(Var_p + ε) + (β + β_p)``.

    Training: ``E_p``/``Var_p`` are the (biased) mean/variance of the batch rows of scenario ``p``;
    per-scenario moving averages (unbiased variance, like BatchNorm) are updated for the scenarios
    present. Evaluation: the moving averages of the row's scenario.

    Few rows: a scenario with fewer than ``min_rows`` rows in a training batch (e.g. a single row, which
    batch statistics would normalise to exactly zero) is normalised with its moving averages instead, as
    in evaluation, and its moving averages are left as they are (a single row gives no variance estimate).
    ``min_rows`` must be at least 2. With ``partition_stats=False`` the rule applies to the whole batch.
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self,
        dim: int,
        num_scenarios: int,
        momentum: float = 0.1,
        eps: float = 1e-5,
        partition_stats: bool = True,
        min_rows: int = 2,
    ) -> None:
        super().__init__()
        if int(min_rows) < 2:
            raise ConfigError(
                f"partitioned normalisation: min_rows must be >= 2 (one row has no batch variance), got {min_rows}"
            )
        self.num_scenarios, self.momentum, self.eps = num_scenarios, momentum, eps
        self.partition_stats, self.min_rows = partition_stats, int(min_rows)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.gamma_p = nn.Parameter(torch.ones(num_scenarios, dim))
        self.beta_p = nn.Parameter(torch.zeros(num_scenarios, dim))
        stats = num_scenarios if partition_stats else 1
        self.register_buffer("running_mean", torch.zeros(stats, dim))
        self.register_buffer("running_var", torch.ones(stats, dim))

    def forward(self, z: Tensor, scenario: Tensor) -> Tensor:
        group = scenario if self.partition_stats else torch.zeros_like(scenario)
        if self.training:
            groups = len(self.running_mean)
            count = torch.bincount(group, minlength=groups).to(z.dtype)  # rows per scenario
            n = count.clamp_min(1.0).unsqueeze(1)
            mean = z.new_zeros(groups, z.shape[1]).index_add(0, group, z) / n  # E_p
            centred = z - mean[group]
            var = z.new_zeros(groups, z.shape[1]).index_add(0, group, centred.square()) / n  # Var_p
            enough = (count >= self.min_rows).unsqueeze(1)  # else: moving averages
            with torch.no_grad():
                m = self.momentum
                unbiased = var * (count / (count - 1).clamp_min(1.0)).unsqueeze(1)
                self.running_mean.copy_(torch.where(enough, (1 - m) * self.running_mean + m * mean, self.running_mean))
                self.running_var.copy_(torch.where(enough, (1 - m) * self.running_var + m * unbiased, self.running_var))
            # groups with too few rows: their moving averages (left unchanged above), as in evaluation
            mean = torch.where(enough, mean, self.running_mean)
            var = torch.where(enough, var, self.running_var)
            z_hat = (z - mean[group]) / torch.sqrt(var[group] + self.eps)
        else:
            z_hat = (z - self.running_mean[group]) / torch.sqrt(self.running_var[group] + self.eps)
        return (self.gamma * self.gamma_p[scenario]) * z_hat + (self.beta + self.beta_p[scenario])


class StarLinear(nn.Module):
    """Star-topology linear layer: ``W*_p = W_p ⊙ W``, ``b*_p = b_p + b``, ``out = in W*_p + b*_p``.

    Computed scenario by scenario (a loop over the few scenarios, not over rows), so each row costs
    one ``in x out`` product, as in a plain linear layer.
    """

    def __init__(self, in_dim: int, out_dim: int, num_scenarios: int) -> None:
        super().__init__()
        shared = nn.Linear(in_dim, out_dim)  # nn.Linear's initialisation for the centred weights
        self.weight = nn.Parameter(shared.weight.detach().T.clone())  # W   [in, out]
        self.bias = nn.Parameter(shared.bias.detach().clone())  # b   [out]
        self.scenario_weight = nn.Parameter(torch.ones(num_scenarios, in_dim, out_dim))  # W_p
        self.scenario_bias = nn.Parameter(torch.zeros(num_scenarios, out_dim))  # b_p
        self.out_dim = out_dim

    def effective(self) -> tuple[Tensor, Tensor]:
        """(W*_p for every p [S, in, out], b*_p for every p [S, out])."""
        return self.scenario_weight * self.weight, self.scenario_bias + self.bias

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        w, b = self.effective()
        out = x.new_zeros(len(x), self.out_dim)
        for p in range(len(w)):
            rows = torch.nonzero(scenario == p).squeeze(1)
            out = out.index_copy(0, rows, x[rows] @ w[p])
        return out + b[scenario]


class StarMLP(nn.Module):
    """A stack of :class:`StarLinear` layers with ``φ`` between them (and an optional output layer)."""

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        num_scenarios: int,
        out_dim: int | None = None,
        dropout: float = 0.0,
        act: str = "relu",
    ) -> None:
        super().__init__()
        dims = [in_dim, *hidden]
        self.layers = nn.ModuleList(StarLinear(a, b, num_scenarios) for a, b in zip(dims[:-1], dims[1:]))
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output = StarLinear(dims[-1], out_dim, num_scenarios) if out_dim is not None else None
        self.out_dim = out_dim if out_dim is not None else dims[-1]

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        for layer in self.layers:
            x = self.dropout(self.act(layer(x, scenario)))  # out_p = φ(in_p W*_p + b*_p)
        return self.output(x, scenario) if self.output is not None else x


@register_model("star")
class STAR(MultiTaskModel):
    """PN -> star-topology FCN -> one star-topology tower per task; plus the auxiliary network's logits."""

    required_fields = ("scenario",)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        star: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        aux: tuple[int, ...] = (64,),
        aux_fields: list[str] | None = None,
        partition_norm: bool = True,
        partition_stats: bool = True,
        norm_momentum: float = 0.1,
        norm_min_rows: int = 2,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        s = schema.num_scenarios
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.output_dim
        self.norm = (
            PartitionedNorm(d, s, norm_momentum, partition_stats=partition_stats, min_rows=norm_min_rows)
            if partition_norm
            else None
        )
        self.star = StarMLP(d, list(star), s, None, dropout, activation)
        self.towers = nn.ModuleList(
            StarMLP(self.star.out_dim, list(tower), s, 1, dropout, activation) for _ in self.tasks
        )
        if aux_fields is None:
            aux_fields = [f.name for f in schema.fields_with_role("context")]
        assert schema.scenario_field is not None  # required_fields: checked by MultiTaskModel.__init__
        aux_fields = list(dict.fromkeys([schema.scenario_field, *aux_fields]))
        check_fields("star", schema, aux_fields, "aux_fields")
        self.aux_fields = aux_fields
        self.aux = MLP(len(aux_fields) * embedding_dim, list(aux), len(self.tasks), dropout, activation)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        p = scenario_ids(self.schema, batch)
        z = self.embedding.flat(batch)
        if self.norm is not None:
            z = self.norm(z, p)  # partitioned normalisation
        h = self.star(z, p)  # star-topology FCN
        s_a = self.aux(lookup_fields(self.embedding, batch, self.aux_fields).flatten(1))  # auxiliary network
        return {
            t: tower(h, p).squeeze(-1) + s_a[:, k]  # ŷ = σ(s_m + s_a)
            for k, (t, tower) in enumerate(zip(self.tasks, self.towers))
        }
