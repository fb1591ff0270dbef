"""Building blocks shared by every model: embeddings of a schema's inputs, MLPs, batched expert groups."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema, Feature

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Linear -> activation -> dropout per hidden layer; an optional final linear layer to ``out_dim``."""

    def __init__(
        self,
        in_dim: int,
        hidden: list[int] | tuple[int, ...],
        out_dim: int | None = None,
        dropout: float = 0.0,
        act: str = "relu",
    ) -> None:
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, h), activation(act)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
            in_dim = out_dim
        super().__init__(*layers)
        self.out_dim = in_dim


class FeatureEmbedding(nn.Module):
    """Embeds every categorical and sequence feature of a schema with one shared table.

    All categorical fields live in a single ``nn.Embedding`` with per-field row offsets, so a batch
    costs one lookup. A sequence field reuses the rows of the field it names in ``embedding`` and is
    mean-pooled over its non-padding positions. Numeric features are appended to the flat input.
    """

    offsets: Tensor

    def __init__(self, schema: DatasetSchema, dim: int, fields: list[str] | None = None) -> None:
        super().__init__()
        self.schema = schema
        self.dim = dim
        cats = schema.categorical
        sizes = [f.vocab_size for f in cats]
        offsets = [0] + list(torch.tensor(sizes).cumsum(0).tolist()[:-1]) if sizes else []
        self.offset_of = {f.name: o for f, o in zip(cats, offsets)}
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self.table = nn.Embedding(
            max(1, sum(sizes) + sum(f.vocab_size for f in schema.sequences if f.embedding is None)), dim
        )
        nn.init.normal_(self.table.weight, std=1.0 / math.sqrt(dim))
        extra = sum(sizes)
        self.seq_offset: dict[str, int] = {}
        for f in schema.sequences:
            if f.embedding is None:
                self.seq_offset[f.name] = extra
                extra += f.vocab_size
            else:
                self.seq_offset[f.name] = self.offset_of[f.embedding]
        names = [f.name for f in cats] + [f.name for f in schema.sequences]
        self.field_names = names if fields is None else fields
        cat_pos = {f.name: i for i, f in enumerate(cats)}
        self.cat_index = [cat_pos[n] for n in self.field_names if n in cat_pos]
        self.seq_fields: list[Feature] = [f for f in schema.sequences if f.name in self.field_names]
        self.num_numeric = len(schema.numeric)

    @property
    def num_fields(self) -> int:
        return len(self.cat_index) + len(self.seq_fields)

    @property
    def output_dim(self) -> int:
        """Width of :meth:`flat`: all field embeddings concatenated plus the numeric features."""
        return self.num_fields * self.dim + self.num_numeric

    def sequence(self, batch: dict[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
        """Embeddings [B, L, D] of a sequence field and its mask [B, L] (True = real item)."""
        ids = batch[f"seq:{name}"]
        mask = ids >= 0
        return self.table(ids.clamp_min(0) + self.seq_offset[name]), mask

    def fields(self, batch: dict[str, Tensor]) -> Tensor:
        """Field embeddings [B, F, D]: categorical fields, then mean-pooled sequence fields."""
        cat = batch["categorical"]
        parts = []
        if self.cat_index:
            idx = cat[:, self.cat_index] + self.offsets[self.cat_index]
            parts.append(self.table(idx))
        for f in self.seq_fields:
            emb, mask = self.sequence(batch, f.name)
            m = mask.unsqueeze(-1).to(emb.dtype)
            parts.append(((emb * m).sum(1) / m.sum(1).clamp_min(1.0)).unsqueeze(1))
        if not parts:  # numeric-only data
            return self.table.weight.new_zeros(len(cat), 0, self.dim)
        return torch.cat(parts, dim=1)

    def flat(self, batch: dict[str, Tensor]) -> Tensor:
        """Concatenated field embeddings and numeric features [B, output_dim]."""
        x = self.fields(batch).flatten(1)
        return torch.cat([x, batch["numeric"].to(x.dtype)], dim=1) if self.num_numeric else x


def init_embeddings(model: nn.Module, std: float) -> int:
    """Re-initialise every embedding table of ``model`` from N(0, std²); returns how many tables.

    One init for all models keeps comparisons fair; recommender libraries commonly use std 1e-4
    (DeepCTR-Torch, FuxiCTR), while :class:`FeatureEmbedding` defaults to 1/sqrt(dim).
    """
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    for m in tables:
        nn.init.normal_(m.weight, std=std)
    return len(tables)


class ExpertGroup(nn.Module):
    """``n`` independent MLP experts on the same input, computed together with batched matmuls.

    Returns [B, n, out]. Equivalent to ``n`` separate MLPs; one einsum per layer instead of ``n`` calls.
    """

    def __init__(
        self, n: int, in_dim: int, hidden: list[int] | tuple[int, ...], dropout: float = 0.0, act: str = "relu"
    ) -> None:
        super().__init__()
        self.n = n
        dims = [in_dim, *hidden]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            w = torch.empty(n, a, b)
            for i in range(n):  # same init as nn.Linear, expert by expert
                nn.init.kaiming_uniform_(w[i].T, a=math.sqrt(5))
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.empty(n, 1, b).uniform_(-1 / math.sqrt(a), 1 / math.sqrt(a))))
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_dim = dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, in] shared by all experts, or [n, B, in] one input per expert
        h = x.unsqueeze(0).expand(self.n, -1, -1) if x.dim() == 2 else x
        for w, b in zip(self.weights, self.biases):
            h = self.dropout(self.act(torch.baddbmm(b, h, w)))
        return h.transpose(0, 1)


class Towers(nn.Module):
    """One MLP tower per task ending in a single logit: Eq. 4 of STAN, ``f_T^k``."""

    def __init__(
        self, tasks: list[str], in_dim: int, hidden: list[int], dropout: float = 0.0, act: str = "relu"
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.towers = nn.ModuleList(MLP(in_dim, hidden, 1, dropout, act) for _ in self.tasks)

    def forward(self, inputs: list[Tensor]) -> dict[str, Tensor]:
        return {t: tower(x).squeeze(-1) for t, tower, x in zip(self.tasks, self.towers, inputs)}


# -- per-scenario slots (the ``per`` setting of mtlbench/models/backbones.py) ------------------------------


def pick_slot(x: Tensor, slot: Tensor) -> Tensor:
    """Row r's own slot of ``x`` [B, n, ...] -> [B, ...] (a gather: other slots get exactly zero gradient)."""
    return x[torch.arange(len(x), device=x.device), slot]


class ScenarioTowers(nn.Module):
    """Per-scenario towers (``per=scenario``) or per-(task, scenario) towers (``per=task_scenario``).

    All towers run together as one :class:`ExpertGroup` (hidden layers) plus one batched output layer,
    and each row reads the logits of its own scenario's tower(s); no Python loop over rows or scenarios.

    - ``scenario``: S towers ``MLP(in, hidden) -> K`` logits; row r's logit for task k is output k of
      tower ``s_r``. (The multi-scenario papers' form has one tower per scenario with a single logit,
      i.e. this with K = 1.)
    - ``task_scenario``: K·S towers ``MLP(in, hidden) -> 1``, slot ``k * S + s``; row r's logit for task k
      comes from tower ``(k, s_r)``.

    Input: [B, in] shared by all towers, or [n, B, in] with one input per tower (n = S or K·S).
    Each tower is initialised like an ``nn.Linear`` stack (same as :class:`Towers`).
    """

    def __init__(
        self,
        tasks: list[str],
        num_scenarios: int,
        per: str,
        in_dim: int,
        hidden: list[int],
        dropout: float = 0.0,
        act: str = "relu",
    ) -> None:
        super().__init__()
        if per not in ("scenario", "task_scenario"):
            raise ValueError(f"ScenarioTowers: per must be 'scenario' or 'task_scenario', got {per!r}")
        self.tasks, self.num_scenarios, self.per = list(tasks), num_scenarios, per
        k = len(self.tasks)
        self.n = num_scenarios if per == "scenario" else k * num_scenarios
        out = k if per == "scenario" else 1
        self.hidden = ExpertGroup(self.n, in_dim, hidden, dropout, act)
        h = self.hidden.out_dim
        w = torch.empty(self.n, h, out)
        for i in range(self.n):  # nn.Linear's init, tower by tower
            nn.init.kaiming_uniform_(w[i].T, a=math.sqrt(5))
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.empty(self.n, 1, out).uniform_(-1 / math.sqrt(h), 1 / math.sqrt(h)))

    def forward(self, x: Tensor, scenario: Tensor) -> dict[str, Tensor]:
        h = self.hidden(x).transpose(0, 1)  # [n, B, H]
        logits = torch.baddbmm(self.bias, h, self.weight)  # [n, B, K] or [n, B, 1]
        b, k = h.shape[1], len(self.tasks)
        if self.per == "scenario":
            per_scenario = logits.transpose(0, 1)  # [B, S, K]
        else:  # slot k*S + s -> [B, S, K]
            per_scenario = logits.squeeze(-1).T.reshape(b, k, self.num_scenarios).transpose(1, 2)
        own = pick_slot(per_scenario, scenario)  # [B, K]
        return {t: own[:, i] for i, t in enumerate(self.tasks)}
