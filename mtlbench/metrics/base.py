"""The contract of a registered metric: a torchmetrics ``Metric`` with ``update(preds, target, groups)``.

``preds`` are probabilities and ``target`` binary labels of the rows of one task that carry its label;
``groups`` maps a group name to per-row int64 ids of the same rows: ``user``, ``session``, ``scenario``
and ``stage`` (the rule-based lifecycle stage, when the run computes it), as far as the dataset has them.
A metric lists the groups it cannot do without in ``groups``; a run skips a metric whose groups its
dataset lacks. ``higher_is_better`` decides checkpoint selection, early stopping and report direction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor
from torchmetrics import Metric

__all__ = ["GROUP_KEYS", "GROUP_SOURCES", "RecMetric", "available_groups", "batch_groups", "group_ids"]

#: group name -> the batch tensor its ids are read from
GROUP_SOURCES: dict[str, str] = {"user": "user", "session": "session", "scenario": "scenario", "stage": "rule_stage"}
GROUP_KEYS: tuple[str, ...] = tuple(GROUP_SOURCES)


def available_groups(schema: Any, inputs: Sequence[str] = ()) -> tuple[str, ...]:
    """The groups a dataset's batches offer: its user / session / scenario fields, and ``stage`` when the
    run computes the derived input ``rule_stage`` (``inputs``: the derived inputs of the run)."""
    fields = {
        "user": schema.user_field,
        "session": schema.session_field,
        "scenario": schema.scenario_field,
        "stage": GROUP_SOURCES["stage"] if GROUP_SOURCES["stage"] in inputs else None,
    }
    return tuple(g for g in GROUP_KEYS if fields[g] is not None)


def batch_groups(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The group ids a batch carries, by group name."""
    return {g: batch[src] for g, src in GROUP_SOURCES.items() if src in batch}


def group_ids(groups: Mapping[str, Tensor] | None, name: str) -> Tensor:
    """The ids of group ``name``; a ValueError naming the groups the rows offer when it is missing."""
    if not isinstance(groups, Mapping):
        raise TypeError(f"groups must map group names to ids (e.g. {{{name!r}: ids}}), got {type(groups).__name__}")
    if name not in groups:
        raise ValueError(f"this metric needs the {name!r} group; the rows offer {sorted(groups)}")
    return groups[name]


class RecMetric(Metric):
    """Base class of the registered metrics (a plugin may also subclass ``Metric`` with the same attributes).

    ``compute()`` returns one value, stored in ``results.json`` under the metric's name as written in the
    config (``ndcg@5``), or, with ``dict_output``, a ``{key: value}`` mapping stored as is (one key per
    scenario: ``auc@scenario=2``; such keys start with the name of a registered metric followed by ``@``,
    so that reports find their direction).
    """

    #: groups the metric needs; it is skipped on datasets without them
    groups: ClassVar[tuple[str, ...]] = ()
    #: name of the ``@`` parameter (``k`` of ``ndcg@k``); None: the name takes no parameter
    param: ClassVar[str | None] = None
    #: compute() returns {results key: value} rather than one value
    dict_output: ClassVar[bool] = False
    is_differentiable = False
    full_state_update = False

    @classmethod
    def from_spec(cls, param: str | None) -> RecMetric:
        """Build the metric from the text after ``@`` in its name (None without ``@``); integer parameters."""
        if cls.param is None:
            if param is not None:
                raise ValueError(f"takes no '@' parameter, got '@{param}'")
            return cls()
        if param is None:
            raise ValueError(f"needs its parameter {cls.param} after '@' (e.g. '@5')")
        try:
            value = int(param)
        except ValueError:
            raise ValueError(f"its parameter {cls.param} must be an integer, got {param!r}") from None
        return cls(**{cls.param: value})

    def update(self, preds: Tensor, target: Tensor, groups: Mapping[str, Tensor] | None = None) -> None:
        raise NotImplementedError
