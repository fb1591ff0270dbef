"""Models. Every module in this package is imported by the registry and registers its models."""

from mtlbench.models.base import ModelOutput, MultiTaskModel, as_output

__all__ = ["ModelOutput", "MultiTaskModel", "as_output"]
