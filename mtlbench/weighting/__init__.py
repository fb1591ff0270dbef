"""Built-in loss-weighting strategies; importing this package registers them."""

from mtlbench.weighting import simple  # noqa: F401
from mtlbench.weighting.base import WeightedLoss, WeightingStrategy, task_means

__all__ = ["WeightedLoss", "WeightingStrategy", "task_means"]
