"""Per-row inputs derived from a user's history, for STAN and PLE_stage (computed once in preprocessing).

* ``stan_pseudo_label`` [N, K] float32: STAN Eq. 10, the running mean of the user's own earlier labels.
* ``stan_position`` [N] int64: the 1-based position of a row in its user's training rows in time order,
  the counter ``c_u`` of STAN Algorithm 1.
* ``rule_stage`` [N] int64: the rule-based lifecycle stage of STAN section 2.1 (New / Wander / Stick /
  Loyal), from the user's task rates over its strictly earlier training rows; PLE_stage's extra input.

"Time order" is ``(timestamp, row number)`` within a user (:class:`mtlbench.data.order.Timeline`); without a
time field the table's row order is taken as time order. Everything is vectorised over the whole table (one
sort, cumulative sums).
"""

from __future__ import annotations

import warnings

import numpy as np

from mtlbench.data.order import Timeline
from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError, DataError
from mtlbench.registry import register_derived
from mtlbench.stages import RULE_STAGE_LABELS, UNKNOWN_STAGE

NUM_RULE_STAGES = len(RULE_STAGE_LABELS)


def _timeline(schema: DatasetSchema, columns: dict[str, np.ndarray], what: str) -> Timeline:
    """The users' timelines (see :mod:`mtlbench.data.order`); row order is time order without a time field."""
    if schema.user_field is None:
        raise DataError(f"{what} needs a user field; dataset {schema.name!r} has none")
    time = None
    if schema.time_field is None or schema.time_field not in columns:
        warnings.warn(f"{what}: dataset {schema.name!r} has no time field; using row order as time order", stacklevel=3)
    else:
        time = np.asarray(columns[schema.time_field])
    return Timeline(np.asarray(columns[schema.user_field]), time)


def _in_train(timeline: Timeline, train_rows: np.ndarray) -> np.ndarray:
    """Whether each position of the timeline is a training row."""
    in_train = np.zeros(len(timeline), dtype=bool)
    in_train[np.asarray(train_rows, dtype=np.int64)] = True
    return in_train[timeline.order]


@register_derived("stan_pseudo_label")
def stan_pseudo_label(
    schema: DatasetSchema,
    columns: dict[str, np.ndarray],
    train_rows: np.ndarray,
    prior: float | str | None = "global",
    history: str = "train",
) -> np.ndarray:
    """STAN Eq. 10: ``l_i^k`` = mean of the user's labels of task k over rows strictly earlier in time.

    Rows at the same timestamp as the current row do not count (no leakage of the current label, nor of
    simultaneous ones); missing labels (NaN) are skipped. ``history``: ``"train"`` (default) averages
    the user's earlier *training* rows only, so no validation or test label can ever reach a training
    target under any split (with the default per-user time split a training row's earlier rows are all
    training rows, so this is Eq. 10 exactly); ``"all"`` averages every earlier row, the paper's literal
    reading. ``prior``: the value where the user has no earlier label (e.g. the first interaction):
    ``"global"`` = the task's mean label over training rows, a number, or ``None`` = undefined (NaN;
    such rows are left out of the preference loss, Eq. 11).
    """
    if history not in ("train", "all"):
        raise ConfigError(f"stan_pseudo_label: history must be 'train' or 'all', got {history!r}")
    timeline = _timeline(schema, columns, "STAN's pseudo-labels (Eq. 10)")
    labels = np.stack([np.asarray(columns[t], dtype=np.float64) for t in schema.tasks], axis=1)[timeline.order]
    counts = ~np.isnan(labels)
    if history == "train":
        counts &= _in_train(timeline, train_rows)[:, None]
    s = timeline.sum(np.where(counts, labels, 0.0), "earlier_times")  # the user's labels strictly before
    c = timeline.sum(counts.astype(np.float64), "earlier_times")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / c
    mean[c == 0] = np.broadcast_to(_prior(prior, schema, columns, train_rows), mean.shape)[c == 0]
    return timeline.to_rows(mean).astype(np.float32)


def _prior(
    prior: float | str | None, schema: DatasetSchema, columns: dict[str, np.ndarray], train_rows: np.ndarray
) -> np.ndarray:
    if prior is None:
        return np.full(len(schema.tasks), np.nan)
    if prior == "global":
        train_rows = np.asarray(train_rows, dtype=np.int64)
        y = np.stack([np.asarray(columns[t], dtype=np.float64)[train_rows] for t in schema.tasks], axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nan_to_num(np.nanmean(y, axis=0), nan=0.5) if len(y) else np.full(len(schema.tasks), 0.5)
    if isinstance(prior, str):
        raise ConfigError(f"stan_pseudo_label: prior must be 'global', a number or null, got {prior!r}")
    if not 0.0 <= float(prior) <= 1.0:
        raise ConfigError(f"stan_pseudo_label: prior must lie in [0, 1], got {prior}")
    return np.full(len(schema.tasks), float(prior))


@register_derived("stan_position")
def stan_position(schema: DatasetSchema, columns: dict[str, np.ndarray], train_rows: np.ndarray) -> np.ndarray:
    """STAN Algorithm 1's counter: 1 + the number of the user's training rows before this row.

    For a training row this is the value ``c_u`` takes when Algorithm 1 (lines 5-6) reaches it in time
    order (ties broken by row number); for other rows it is the value it would take if the row were
    appended. Feeding it with the row makes the Beta update order-independent (see ``stan_stage``).
    """
    timeline = _timeline(schema, columns, "STAN's counter (Algorithm 1)")
    before = timeline.sum(_in_train(timeline, train_rows).astype(np.float64), "earlier_rows")
    return timeline.to_rows(before.astype(np.int64) + 1)


@register_derived("rule_stage")
def rule_stage(
    schema: DatasetSchema, columns: dict[str, np.ndarray], train_rows: np.ndarray, tasks: list[str] | None = None
) -> np.ndarray:
    """STAN section 2.1: a user's stage from the medians of per-user (CTR, staytime, CVR) rates.

    A row's rates are computed from its user's *training* rows strictly earlier in time (the rows of
    ``stan_pseudo_label``'s Eq. 10, same time order and ties: rows at the same timestamp don't count), so a
    training row's stage never contains its own label or a later one, and a validation/test row's stage
    is read from the training history before it (under the per-user time split: all of it). The rates are
    the means of the tasks' labels (missing labels skipped, so a CVR labelled only on clicks is a
    per-click CVR), except that an entire-space CVR-like task (not in ``schema.conditional_tasks``, i.e.
    labelled over every impression) is divided by the clicks of the CTR-like task: CVR = conversions /
    clicks, not conversions / impressions. The thresholds are the medians, over the users with training
    rows, of the same rates over each user's whole training history (dataset-level statistics of
    training labels, like a global mean); a rate is *high* when strictly above its median (so a median
    of 0, common for purchases, still separates users with and without one), and an undefined rate
    (no earlier labelled row, no earlier click) is low. The paper's descriptions become a decision list:

    * New (0): low CTR;
    * Wander (1): high CTR, low staytime;
    * Stick (2): high CTR and staytime, low CVR;
    * Loyal (3): high CTR, staytime and CVR;
    * 4: the user has no training row before this one (e.g. a user's first training row).

    ``tasks`` names the (CTR-like, staytime-like, CVR-like) tasks, default the schema's first three; with
    fewer tasks the list stops early (two tasks: stages 0-2; only a third task is CVR-like).
    """
    if schema.user_field is None:
        raise DataError(f"rule_stage needs a user field; dataset {schema.name!r} has none")
    tasks = list(tasks) if tasks is not None else list(schema.tasks[:3])
    unknown = [t for t in tasks if t not in schema.tasks]
    if unknown or not 1 <= len(tasks) <= 3:
        raise ConfigError(f"rule_stage: tasks must be 1-3 of the dataset's tasks {schema.tasks}, got {tasks}")
    timeline = _timeline(schema, columns, "rule_stage (STAN section 2.1)")
    n = len(timeline)
    in_train = _in_train(timeline, train_rows)

    def totals(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Σ x over the user's training rows (a) strictly before each row's time, (b) in all."""
        x = np.where(in_train, x, 0.0)
        return timeline.sum(x, "earlier_times"), timeline.sum(x, "user")

    def labels(t: str) -> tuple[np.ndarray, np.ndarray]:
        y = np.asarray(columns[t], dtype=np.float64)[timeline.order]
        ok = ~np.isnan(y)
        return np.where(ok, y, 0.0), ok.astype(np.float64)

    def rate(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.where(den > 0, num / np.maximum(den, 1e-300), -np.inf)  # undefined: low

    before, whole = totals(np.ones(n))
    has_user_train = whole > 0
    stage = np.full(n, len(tasks), dtype=np.int64)  # high on every listed task
    decided = np.zeros(n, dtype=bool)
    for level, t in enumerate(tasks):
        y, ok = labels(t)
        num, num_all = totals(y)
        if level == 2 and t not in schema.conditional_tasks:  # entire-space conversions per click
            den, den_all = totals(labels(tasks[0])[0])
        else:
            den, den_all = totals(ok)
        row_rate, user_rate = rate(num, den), rate(num_all, den_all)
        defined = has_user_train & np.isfinite(user_rate)
        median = np.median(user_rate[(timeline.first == np.arange(n)) & defined]) if defined.any() else 0.0
        low = ~decided & (row_rate <= median)
        stage[low] = level
        decided |= low
    stage[before == 0] = UNKNOWN_STAGE
    return timeline.to_rows(stage)
