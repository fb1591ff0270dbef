"""Built-in models; importing this package registers them."""

from mtlbench.models import mmoe, ple, shared_bottom, single_task  # noqa: F401
from mtlbench.models.base import ModelOutput, MultiTaskModel, as_output

__all__ = ["ModelOutput", "MultiTaskModel", "as_output"]
