"""Static weightings: ``equal`` (η^k = 1) and ``fixed`` (one η per task from config), STAN Eq. 5."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, WeightingStrategy, weighted_sum


@register_weighting("fixed")
class Fixed(WeightingStrategy):
    """η given per task by name, e.g. ``weighting.weights={click: 1.0, purchase: 2.0}`` (unnamed tasks: 1)."""

    weights: Tensor

    def __init__(self, tasks: list[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(tasks))
        if unknown:
            raise ConfigError(f"weighting 'fixed' names unknown task(s) {unknown}; tasks are {tasks}")
        self.register_buffer("weights", torch.tensor([float(weights.get(t, 1.0)) for t in tasks]), persistent=False)

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        return WeightedLoss(weighted_sum(losses, mask, self.weights), self.weights)


@register_weighting("equal")
class Equal(Fixed):
    """η^k = 1 for every task: :class:`Fixed` with no weights given."""

    def __init__(self, tasks: list[str]) -> None:
        super().__init__(tasks)
