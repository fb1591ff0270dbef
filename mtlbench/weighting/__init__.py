"""Loss-weighting strategies. Every module in this package is imported by the registry and registers its own."""

from mtlbench.weighting.base import WeightedLoss, WeightingStrategy, task_means

__all__ = ["WeightedLoss", "WeightingStrategy", "task_means"]
