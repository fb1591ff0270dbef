"""A run on one lifecycle stage's rows: STAN's Stage_Single (section 4.3.1, Fig. 5).

"We first divide the training dataset into [...] subsets based on user stage information and then perform separate
prediction tasks on each of these subsets." The run config's ``subset`` (e.g. ``subset: {rule_stage: Wander}``)
keeps, in *every* split, only the rows of one stage; one such run per stage is the paper's Stage_Single, and a
run without ``subset`` is the model trained on all the data it is compared with.

Why a row filter applied after splitting (and after the derived inputs):

* the stage is a property of a *row* (a user's stage moves along their timeline), so the subsets partition rows,
  not users; a stage-``s`` model is trained, selected (validation) and tested on stage-``s`` rows only;
* the splits are made on the whole table first, with the run's seed, and the stage of each row is computed from
  the whole training split, exactly as in the all-data run. So a Stage_Single run's test rows are exactly the
  all-data run's test rows of that stage, and the all-data model's ``auc@rule_stage=<name>`` (the metric
  ``rule_stage``) is measured on the very rows the stage model's ``auc`` is: the two numbers compare;
* every input of a kept row is the one it has in the all-data run: derived inputs (STAN's pseudo-labels, the
  rule stage) and the numeric standardisation are computed over the full training split before filtering; only
  which rows are trained on and evaluated changes.

Keys (all given must hold):

* ``rule_stage``: the rule-based stage of STAN section 2.1 (:func:`mtlbench.data.lifecycle_inputs.rule_stage`,
  with the run's ``derived.rule_stage`` settings), the paper's stage: real logs have no true stage. It works on
  any dataset with users and the tasks the rule reads (the first three, or ``derived.rule_stage.tasks``). Values:
  ``New`` / ``Wander`` / ``Stick`` / ``Loyal`` or the ids 0-3, and ``unknown`` (4: rows without an earlier
  training row of their user, e.g. every user's first training row, which no stage subset therefore holds).
* the dataset's stage analysis field (``schema.stage_field``, the simulator's ``true_stage``): the ground-truth
  stage, by name (``schema.stage_labels``) or id; compare with the all-data run's ``auc@stage=<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mtlbench.data.derived import compute_derived
from mtlbench.data.lifecycle_inputs import NUM_RULE_STAGES
from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.stages import RULE_STAGE_LABELS

RULE_STAGE = "rule_stage"


def stage_id(value: Any, labels: list[str] | tuple[str, ...], count: int, what: str) -> int:
    """A stage given by name (one of ``labels``) or id (``0 <= id < count``); a ConfigError otherwise."""
    if isinstance(value, bool):  # a YAML ``yes`` is not a stage
        value = str(value)
    if isinstance(value, int | np.integer) and 0 <= int(value) < count:
        return int(value)
    if isinstance(value, str) and value in labels:
        return list(labels).index(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return stage_id(int(value), labels, count, what)
    raise ConfigError(f"subset: {what} must be one of {list(labels)} or an id 0..{count - 1}, got {value!r}")


def subset_rows(
    schema: DatasetSchema,
    columns: dict[str, np.ndarray],
    train_rows: np.ndarray,
    subset: Mapping[str, Any],
    rule_settings: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Boolean mask over the table's rows: the rows of the stage(s) named by ``subset``.

    ``train_rows``: the run's whole training split (the rule stage's thresholds and histories come from it).
    """
    if not isinstance(subset, Mapping) or not subset:
        raise ConfigError(
            f"subset must map rule_stage or a stage field to a stage, e.g. {{rule_stage: Wander}}; got {subset!r}"
        )
    n = len(next(iter(columns.values())))
    keep = np.ones(n, dtype=bool)
    for key, value in subset.items():
        if key == RULE_STAGE:
            sid = stage_id(value, RULE_STAGE_LABELS, NUM_RULE_STAGES, RULE_STAGE)
            ids = compute_derived(RULE_STAGE, schema, columns, train_rows, **dict(rule_settings or {}))
        elif key is not None and key == schema.stage_field:
            labels = list(schema.stage_labels)
            ids = np.asarray(columns[key])
            count = max(len(labels), int(ids.max()) + 1 if len(ids) else 0)
            sid = stage_id(value, labels, count, key)
        else:
            known = [RULE_STAGE] + ([schema.stage_field] if schema.stage_field else [])
            raise ConfigError(f"subset: unknown key {key!r} for dataset {schema.name!r}; known: {', '.join(known)}")
        keep &= ids == sid
    return keep


def apply_subset(
    schema: DatasetSchema,
    columns: dict[str, np.ndarray],
    splits: dict[str, np.ndarray],
    subset: Mapping[str, Any],
    rule_settings: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Every split restricted to the rows of :func:`subset_rows` (row order kept); a ConfigError when one empties."""
    keep = subset_rows(schema, columns, splits["train"], subset, rule_settings)
    out = {name: rows[keep[rows]] for name, rows in splits.items()}
    empty = [name for name, rows in out.items() if len(rows) == 0]
    if empty:
        raise ConfigError(
            f"subset {dict(subset)} leaves split(s) {empty} of dataset {schema.name!r} empty "
            f"(rows per split: {', '.join(f'{k} {len(v)}' for k, v in out.items())})"
        )
    return out
