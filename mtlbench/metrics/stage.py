"""AUC and GAUC per reference lifecycle stage (``auc@stage=Wander``): the dataset's analysis stage field
(``schema.stage_field``, the simulator's ground-truth ``true_stage``), which no model ever reads; and per
rule-based stage of STAN section 2.1 (``auc@rule_stage=Wander``), the stage of STAN's Stage_Single."""

from __future__ import annotations

from collections.abc import Sequence

from mtlbench.metrics.scenario import PerGroupMetrics
from mtlbench.registry import register_metric
from mtlbench.stages import RULE_STAGE_LABELS


@register_metric("stage")
class StageMetrics(PerGroupMetrics):
    """``auc@stage=<name>`` and (with users) ``gauc@stage=<name>`` for every stage of the rows, named by the
    dataset's ``stage_labels`` (the id where it names none); skipped on datasets without a stage field.

    The ids come from the analysis group ``true_stage``: the training module looks them up by row index and gives
    them to the metrics only. GAUC within a stage weights each (stage, user) group by its rows, as per scenario.
    """

    groups = ("true_stage",)
    group = "true_stage"
    key = "stage"
    named = True


@register_metric("rule_stage")
class RuleStageMetrics(PerGroupMetrics):
    """``auc@rule_stage=<name>`` and (with users) ``gauc@rule_stage=<name>`` per rule-based stage of STAN section
    2.1, the group ``stage`` (the derived input ``rule_stage``, computed for any run that lists this metric).

    STAN's Stage_Single (Fig. 5) compares a model trained on one stage's rows (``subset: {rule_stage: Wander}``)
    with the all-data model on the same test rows: the latter's ``auc@rule_stage=Wander``.
    """

    groups = ("stage",)
    group = "stage"
    key = "rule_stage"
    named = True

    def __init__(self, with_users: bool | None = None, labels: Sequence[str] = RULE_STAGE_LABELS) -> None:
        super().__init__(with_users, labels)
