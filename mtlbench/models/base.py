"""The model contract every registered model follows."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError


@dataclass
class ModelOutput:
    """What a model returns.

    ``logits``: one [B] tensor per task, in the schema's task order. ``aux_losses``: scalar losses the
    model adds to the training objective (e.g. STAN's preference loss, Eq. 11). ``extras``: per-sample
    tensors other components may read (e.g. STAN's preferences, used by its weighting strategy).
    """

    logits: dict[str, Tensor]
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)


def as_output(out: dict[str, Tensor] | ModelOutput) -> ModelOutput:
    """Accept a plain ``dict[task, logits]`` from simple models."""
    return out if isinstance(out, ModelOutput) else ModelOutput(logits=dict(out))


class MultiTaskModel(nn.Module):
    """Base class: ``forward(batch) -> dict[task, logits] | ModelOutput``.

    ``required_inputs`` names derived per-row inputs (see ``mtlbench.data.derived``) the model reads
    from the batch; ``required_fields`` names schema roles it cannot work without (e.g. ``scenario``).
    """

    required_inputs: tuple[str, ...] = ()
    required_fields: tuple[str, ...] = ()

    def __init__(self, schema: DatasetSchema) -> None:
        super().__init__()
        self.schema = schema
        self.tasks = list(schema.tasks)
        for role in self.required_fields:
            if getattr(schema, f"{role}_field", None) is None and not (role == "sequence" and schema.sequences):
                article = "an" if role[0] in "aeiou" else "a"
                raise ConfigError(
                    f"model {type(self).__name__} needs {article} {role} field; dataset {schema.name!r} has none"
                )

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters shared by all tasks, for gradient-based weightings (GradNorm, PCGrad).

        Default: every parameter outside the per-task ``towers``; models override when that's wrong.
        """
        return [p for n, p in self.named_parameters() if not n.startswith("towers.") and p.requires_grad]
