"""The contract of a registered metric: a torchmetrics ``Metric`` with ``update(preds, target, groups)``.

``preds`` are probabilities and ``target`` binary labels of the rows of one task that carry its label;
``groups`` maps a group name to per-row int64 ids of the same rows: ``user``, ``session``, ``scenario``,
``stage`` (the rule-based lifecycle stage, when the run computes it) and ``true_stage`` (the dataset's
reference stage, an analysis field: ``schema.stage_field``), as far as the dataset has them. A metric lists the
groups it cannot do without in ``groups``; a run skips a metric whose groups its dataset lacks.
``higher_is_better`` decides checkpoint selection, early stopping and report direction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "ANALYSIS_GROUPS",
    "GROUP_KEYS",
    "GROUP_SOURCES",
    "RecMetric",
    "RowMetric",
    "analysis_group_columns",
    "available_groups",
    "batch_groups",
    "group_ids",
    "group_labels",
]

#: group name -> the batch tensor its ids are read from
GROUP_SOURCES: dict[str, str] = {"user": "user", "session": "session", "scenario": "scenario", "stage": "rule_stage"}
#: groups whose ids are a dataset's analysis column, by group name: (schema attribute naming the column, schema
#: attribute naming the ids). Never in batches (analysis fields never reach a model): the training module looks
#: the ids up by the batch's row ``index`` and hands them to the metrics only.
ANALYSIS_GROUPS: dict[str, tuple[str, str]] = {"true_stage": ("stage_field", "stage_labels")}
GROUP_KEYS: tuple[str, ...] = (*GROUP_SOURCES, *ANALYSIS_GROUPS)


def analysis_group_columns(schema: Any) -> dict[str, str]:
    """Group name -> the analysis column holding its ids, for the analysis groups the dataset has."""
    out = {}
    for group, (attr, _) in ANALYSIS_GROUPS.items():
        column = getattr(schema, attr, None)
        if column is not None:
            out[group] = column
    return out


def group_labels(schema: Any) -> dict[str, list[str]]:
    """Group name -> the dataset's name of each id (e.g. ``true_stage`` -> New, Wander, Stick, Loyal), where it
    names them; metrics that key their results by group (``auc@stage=Wander``) read them."""
    out = {}
    for group, (attr, labels) in ANALYSIS_GROUPS.items():
        if getattr(schema, attr, None) is not None and getattr(schema, labels, None):
            out[group] = list(getattr(schema, labels))
    return out


def available_groups(schema: Any, inputs: Sequence[str] = ()) -> tuple[str, ...]:
    """The groups a dataset offers: its user / session / scenario fields, ``stage`` when the run computes the
    derived input ``rule_stage`` (``inputs``: the derived inputs of the run), and ``true_stage`` when the
    dataset has a stage field (an analysis column, given to metrics by row index, never in batches)."""
    fields = {
        "user": schema.user_field,
        "session": schema.session_field,
        "scenario": schema.scenario_field,
        "stage": GROUP_SOURCES["stage"] if GROUP_SOURCES["stage"] in inputs else None,
        **analysis_group_columns(schema),
    }
    return tuple(g for g in GROUP_KEYS if fields.get(g) is not None)


def batch_groups(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The group ids a batch carries, by group name (analysis groups are never in batches)."""
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

    def set_group_labels(self, labels: Mapping[str, Sequence[str]]) -> None:
        """The dataset's names of group ids by group name (:func:`group_labels`), given once after construction;
        metrics whose results keys name groups use them (the per-stage metrics), others ignore them."""


class RowMetric(RecMetric):
    """A metric of all the evaluated rows of a task at once (AUC, GAUC, NDCG, the per-group breakdowns).

    Standing alone, its ``update`` buffers the rows it needs and ``compute`` calls :meth:`compute_rows` on them.
    In a run, a task's metrics share one buffer instead (:class:`~mtlbench.metrics.eval_rows.EvalRows`: the
    rows are kept once, compactly, for all of them, rather than once per metric) and the run calls
    :meth:`compute_rows` with the gathered rows; both ways give the same values.
    """

    def row_groups(self, offered: Collection[str]) -> tuple[str, ...]:
        """The group ids :meth:`compute_rows` reads, of the groups the rows ``offered``."""
        return tuple(g for g in self.groups if g in offered)

    def compute_rows(self, preds: Tensor, target: Tensor, groups: Mapping[str, Tensor]) -> Any:
        """The metric's value (or ``{key: value}``) of these rows: probabilities, 0/1 float targets, int64 ids."""
        raise NotImplementedError
