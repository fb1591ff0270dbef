"""Per-scenario building blocks shared by the multi-scenario models M2M, AdaSparse, SAR-Net, HAMUR, M3oE, AdaptDHM.

A row uses the parameters of its own scenario (or cluster). Every block here runs one batched matmul per
scenario over the rows of that scenario (a loop over the few scenarios, as ``StarLinear`` in ``star.py``
does, never over rows), so a row costs what one plain layer costs, whatever the number of scenarios.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlbench.models.layers import activation


def linear_init(n: int, in_dim: int, out_dim: int) -> tuple[nn.Parameter, nn.Parameter]:
    """``n`` weight matrices [n, in, out] and biases [n, out], each initialised like an ``nn.Linear``."""
    w = torch.empty(n, in_dim, out_dim)
    for i in range(n):
        nn.init.kaiming_uniform_(w[i].T, a=math.sqrt(5))
    bound = 1 / math.sqrt(in_dim) if in_dim > 0 else 0.0
    return nn.Parameter(w), nn.Parameter(torch.empty(n, out_dim).uniform_(-bound, bound))


def rows_of(scenario: Tensor, n: int) -> list[Tensor]:
    """The row indices of each scenario ``0 … n-1`` (one ``nonzero`` per scenario)."""
    return [torch.nonzero(scenario == p).squeeze(1) for p in range(n)]


def per_scenario_linear(x: Tensor, weight: Tensor, bias: Tensor | None, scenario: Tensor) -> Tensor:
    """``out[r] = x[r] W[s_r] + b[s_r]``: x [B, in], weight [S, in, out], bias [S, out] -> [B, out]."""
    out = x.new_zeros(len(x), weight.shape[-1])
    for p, rows in enumerate(rows_of(scenario, len(weight))):
        out = out.index_copy(0, rows, x[rows] @ weight[p])
    return out if bias is None else out + bias[scenario]


class ScenarioMLP(nn.Module):
    """One MLP per scenario (Linear -> activation per layer); a row runs its scenario's MLP only."""

    def __init__(self, in_dim: int, hidden: list[int], num_scenarios: int, dropout: float = 0.0, act: str = "relu"):
        super().__init__()
        dims = [in_dim, *hidden]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            w, bias = linear_init(num_scenarios, a, b)
            self.weights.append(w)
            self.biases.append(bias)
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_dim = dims[-1]

    def layer(self, i: int, x: Tensor, scenario: Tensor) -> Tensor:
        """Layer ``i`` alone: ``φ(x W_i[s] + b_i[s])``."""
        return self.dropout(self.act(per_scenario_linear(x, self.weights[i], self.biases[i], scenario)))

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        for i in range(len(self.weights)):
            x = self.layer(i, x, scenario)
        return x


class ScenarioExperts(nn.Module):
    """``n`` MLP experts per scenario on the same input; a row runs the ``n`` experts of its scenario -> [B, n, h].

    Weights [S, n, in, out] per layer; per scenario the ``n`` experts run as one batched matmul.
    """

    def __init__(
        self,
        num_scenarios: int,
        n: int,
        in_dim: int,
        hidden: list[int],
        dropout: float = 0.0,
        act: str = "relu",
    ):
        super().__init__()
        dims = [in_dim, *hidden]
        self.n, self.num_scenarios = n, num_scenarios
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            w, bias = linear_init(num_scenarios * n, a, b)
            self.weights.append(nn.Parameter(w.detach().view(num_scenarios, n, a, b)))
            self.biases.append(nn.Parameter(bias.detach().view(num_scenarios, n, 1, b)))
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_dim = dims[-1]

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        out = x.new_zeros(len(x), self.n, self.out_dim)
        for p, rows in enumerate(rows_of(scenario, self.num_scenarios)):
            h = x[rows].unsqueeze(0).expand(self.n, -1, -1)  # [n, r, in]
            for w, b in zip(self.weights, self.biases):
                h = self.dropout(self.act(torch.baddbmm(b[p], h, w[p])))
            out = out.index_copy(0, rows, h.transpose(0, 1))
        return out
