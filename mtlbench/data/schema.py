"""Dataset schema: what each column is, so models and the data layer never guess."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from mtlbench.errors import ConfigError, DataError

FeatureKind = Literal["categorical", "numeric", "sequence"]
#: what a task means in a conversion funnel, for models built on one (ESMM, AITM, AEM2TL, ...):
#: ``click`` the click label over all impressions; ``conversion`` the entire-space conversion label (click AND
#: conversion, over all impressions: CTCVR); ``conversion_given_click`` the conversion labelled on clicked
#: impressions only (CVR, NaN elsewhere)
TASK_ROLES = ("click", "conversion", "conversion_given_click")
Role = Literal["user", "item", "context"]
PAD = -1  # padding value of sequence fields
#: rows checked at a time by DatasetSchema.validate (bounded temporaries on tables of any size)
VALIDATE_ROWS = 1 << 20


def weights_column(name: str) -> str:
    """Column of a sequence feature's per-position weights (e.g. Ali-CCP's behaviour counts)."""
    return f"{name}:weights"


def true_logit_column(task: str) -> str:
    """Analysis column of a task's true log-odds per row (a simulator's oracle), e.g. ``true_logit_click``."""
    return f"true_logit_{task}"


@dataclass(frozen=True)
class Feature:
    """One model input column.

    categorical: int64 ids in ``[0, vocab_size)``; numeric: float32; sequence: int64 ``[N, max_len]``
    ids in ``[0, vocab_size)`` padded with ``PAD`` (-1), sharing the embedding table of ``embedding``
    (a categorical feature's name) when set. A numeric feature with ``standardize`` is z-scored when the
    data is loaded, with the mean and std of the training split only (valid/test never inform the scaling).
    A sequence with ``weights`` has a float32 ``[N, max_len]`` companion column ``<name>:weights``
    (:func:`weights_column`; 0 at padding), served in batches as ``seqw:<name>``.
    """

    name: str
    kind: FeatureKind = "categorical"
    vocab_size: int = 0
    role: Role = "context"
    max_len: int = 0
    embedding: str | None = None
    standardize: bool = False
    weights: bool = False


@dataclass
class DatasetSchema:
    """Columns of a prepared dataset and their meaning.

    Labels are float32 columns named after the tasks, with values 0, 1 or NaN (NaN = no label, e.g.
    a conversion label outside the clicked space). ``conditional_tasks`` names such tasks and the task on
    whose positive rows they are labelled (``{"cvr": "ctr"}``). ``task_roles`` maps a funnel role (see
    ``TASK_ROLES``) to the task that plays it (``{"click": "ctr", "conversion": "ctcvr"}``), so conversion-chain
    models find their tasks on any dataset; a run's ``tasks`` and a report's may name ``role:<role>``.
    ``scenario_labels`` names the scenario ids in reports (Ali-CCP's B1/B2/B3). ``analysis_fields`` are for
    evaluation and reporting only and never reach a model. ``stage_field`` names the analysis field that holds a
    reference lifecycle stage id per row (the simulator's ground truth ``true_stage``), for metrics by stage
    (``auc@stage=<name>``) and ``mtlbench-data describe``; ``stage_labels`` names its ids. An analysis field
    ``true_logit_<task>`` (:func:`true_logit_column`) holds a task's true log-odds (oracle AUC in ``describe``).
    """

    name: str
    features: list[Feature]
    tasks: list[str]
    user_field: str | None = None
    item_field: str | None = None
    scenario_field: str | None = None
    time_field: str | None = None
    session_field: str | None = None
    analysis_fields: list[str] = field(default_factory=list)
    conditional_tasks: dict[str, str] = field(default_factory=dict)
    task_roles: dict[str, str] = field(default_factory=dict)
    #: the split method ``auto`` resolves to when the dataset ships its own split (``column:split_part``)
    auto_split: str | None = None
    #: counts the reader reports about its input (e.g. rows dropped), shown by ``mtlbench-data describe``
    stats: dict[str, int] = field(default_factory=dict)
    scenario_labels: list[str] = field(default_factory=list)  # a name per scenario id, for reports (e.g. B1)
    stage_field: str | None = None  # an analysis field: a reference stage id per row (int64, 0..)
    stage_labels: list[str] = field(default_factory=list)  # a name per stage id (e.g. New, Wander, Stick, Loyal)

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise DataError(f"dataset {self.name!r}: duplicate feature names in schema: {names}")
        for ref in (self.user_field, self.item_field, self.scenario_field):
            if ref is not None and ref not in names:
                raise DataError(f"dataset {self.name!r}: field {ref!r} is not a declared feature")
        for f in self.features:
            if f.kind in ("categorical", "sequence") and f.vocab_size <= 0 and f.embedding is None:
                raise DataError(f"dataset {self.name!r}: feature {f.name!r} needs a vocab_size > 0")
            if f.kind == "sequence" and f.max_len <= 0:
                raise DataError(f"dataset {self.name!r}: sequence feature {f.name!r} needs max_len > 0")
            if f.weights and f.kind != "sequence":
                raise DataError(f"dataset {self.name!r}: feature {f.name!r} has weights but is not a sequence")
        if not self.tasks:
            raise DataError(f"dataset {self.name!r}: no tasks declared")
        stray = [t for t in self.conditional_tasks if t not in self.tasks]
        if stray:
            raise DataError(f"dataset {self.name!r}: conditional_tasks names {stray}, which are not tasks")
        for role, task in self.task_roles.items():
            if role not in TASK_ROLES:
                raise DataError(f"dataset {self.name!r}: unknown task role {role!r}; roles are {list(TASK_ROLES)}")
            if task not in self.tasks:
                raise DataError(f"dataset {self.name!r}: task role {role!r} names {task!r}, which is not a task")
        conditional = self.task_roles.get("conversion_given_click")
        if conditional is not None and conditional not in self.conditional_tasks:
            raise DataError(
                f"dataset {self.name!r}: task {conditional!r} plays conversion_given_click but is not "
                "listed in conditional_tasks"
            )
        if self.scenario_labels and self.scenario_field and len(self.scenario_labels) != self.num_scenarios:
            raise DataError(
                f"dataset {self.name!r}: {len(self.scenario_labels)} scenario_labels for {self.num_scenarios} scenarios"
            )
        if self.stage_field is not None and self.stage_field not in self.analysis_fields:
            raise DataError(
                f"dataset {self.name!r}: stage_field {self.stage_field!r} is not one of the analysis_fields "
                f"{self.analysis_fields} (a stage for evaluation must never reach a model)"
            )
        entire = [self.task_roles[r] for r in ("click", "conversion") if r in self.task_roles]
        if any(t in self.conditional_tasks for t in entire):
            raise DataError(
                f"dataset {self.name!r}: the click and conversion roles need labels over every "
                f"impression; {[t for t in entire if t in self.conditional_tasks]} is conditional"
            )

    # -- views --------------------------------------------------------------------------------
    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise DataError(f"dataset {self.name!r} has no feature {name!r}")

    @property
    def categorical(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "categorical"]

    @property
    def numeric(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "numeric"]

    @property
    def sequences(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "sequence"]

    def fields_with_role(self, role: Role) -> list[Feature]:
        return [f for f in self.categorical if f.role == role]

    @property
    def num_scenarios(self) -> int:
        return self.feature(self.scenario_field).vocab_size if self.scenario_field else 1

    def task_for_role(self, role: str, model: str) -> str:
        """The task that plays ``role``; a one-line error naming the role when the dataset declares none."""
        if role not in TASK_ROLES:
            raise ConfigError(f"model {model!r}: unknown task role {role!r}; roles are {list(TASK_ROLES)}")
        task = self.task_roles.get(role)
        if task is None:
            declared = ", ".join(f"{r}={t}" for r, t in self.task_roles.items()) or "none"
            raise ConfigError(
                f"model {model!r} needs the dataset's {role!r} task role, and dataset {self.name!r} "
                f"with tasks {self.tasks} declares none (its roles: {declared}); name the task in "
                "the model's config or declare the role in the dataset"
            )
        return task

    def vocab_of(self, f: Feature) -> int:
        return self.feature(f.embedding).vocab_size if f.embedding else f.vocab_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DatasetSchema:
        d = dict(d)
        d["features"] = [Feature(**f) for f in d["features"]]
        return cls(**d)

    # -- validation ---------------------------------------------------------------------------
    def required_columns(self) -> list[str]:
        cols = [f.name for f in self.features] + [weights_column(f.name) for f in self.sequences if f.weights]
        cols += list(self.tasks)
        for extra in (self.time_field, self.session_field):
            if extra is not None:
                cols.append(extra)
        return cols + list(self.analysis_fields)

    def validate(self, columns: dict[str, np.ndarray], source: str = "") -> None:
        """Check presence, label values and id ranges; raise ``DataError`` naming the first problem."""
        where = f" in {source}" if source else ""
        missing = [c for c in self.required_columns() if c not in columns]
        if missing:
            raise DataError(f"dataset {self.name!r}{where}: missing column(s) {missing}")
        n = len(columns[self.tasks[0]])
        for c in self.required_columns():
            if len(columns[c]) != n:
                raise DataError(f"dataset {self.name!r}{where}: column {c!r} has {len(columns[c])} rows, expected {n}")
        for f in self.features:
            if f.kind == "numeric":
                continue
            v = columns[f.name]
            if f.weights:
                w = columns[weights_column(f.name)]
                if w.shape != v.shape or w.dtype != np.float32:
                    raise DataError(
                        f"dataset {self.name!r}{where}: column {weights_column(f.name)!r} must hold "
                        f"finite float32 weights of shape {v.shape}, got {w.dtype} {w.shape}"
                    )
            if not np.issubdtype(np.asarray(v[:0]).dtype, np.integer):
                raise DataError(f"dataset {self.name!r}{where}: column {f.name!r} must hold integer ids, got {v.dtype}")
        for start in range(0, n, VALIDATE_ROWS):  # the checks are per row: a block at a time, bounded temporaries
            self._validate_rows(columns, start, min(n, start + VALIDATE_ROWS), where)

    def _validate_rows(self, columns: dict[str, np.ndarray], start: int, stop: int, where: str) -> None:
        """The value checks of :meth:`validate` on rows ``start:stop`` (rows named from 0 of the whole table)."""
        for t in self.tasks:
            y = np.asarray(columns[t][start:stop], dtype=np.float64)
            bad = ~(np.isnan(y) | (y == 0) | (y == 1))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"dataset {self.name!r}{where}: label column {t!r} has value {float(y[row])!r} at "
                    f"row {start + row}; labels must be 0, 1 or missing"
                )
        for f in self.features:
            if f.kind == "numeric":
                x = columns[f.name][start:stop]
                bad = ~np.isfinite(np.asarray(x, dtype=np.float64))
                if bad.any():
                    row = int(np.flatnonzero(bad)[0])
                    raise DataError(
                        f"dataset {self.name!r}{where}: numeric column {f.name!r} has "
                        f"{float(x[row])!r} at row {start + row}; fill missing values first"
                    )
                continue
            v = np.asarray(columns[f.name][start:stop])
            if f.weights:
                finite = np.isfinite(columns[weights_column(f.name)][start:stop]).reshape(len(v), -1).all(axis=1)
                if not finite.all():
                    raise DataError(
                        f"dataset {self.name!r}{where}: column {weights_column(f.name)!r} must hold finite float32 "
                        f"weights; row {start + int(np.flatnonzero(~finite)[0])} has a non-finite one"
                    )
            vocab = self.vocab_of(f)
            low = PAD if f.kind == "sequence" else 0
            bad = (v < low) | (v >= vocab)
            if bad.any():
                row = int(np.flatnonzero(bad.reshape(len(v), -1).any(axis=1))[0])
                raise DataError(
                    f"dataset {self.name!r}{where}: column {f.name!r} has id "
                    f"{v[row].tolist()} at row {start + row}, outside the declared vocabulary "
                    f"[0, {vocab})"
                )


def select_tasks(schema: DatasetSchema, tasks: list[str]) -> DatasetSchema:
    """The same dataset restricted to some of its tasks (e.g. SFPNet's single-task CTR setting).

    An entry ``role:<role>`` names the task that plays that role (``role:click`` is Ali-CCP's ``ctr`` and the
    simulator's ``click``), so one protocol selects the same task on every dataset that declares the role.
    """
    tasks = [resolve_task(schema, t) for t in tasks]
    unknown = [t for t in tasks if t not in schema.tasks]
    if unknown:
        raise DataError(f"dataset {schema.name!r} has no task(s) {unknown}; its tasks are {schema.tasks}")
    return replace(
        schema,
        tasks=list(tasks),
        conditional_tasks={t: c for t, c in schema.conditional_tasks.items() if t in tasks},
        task_roles={r: t for r, t in schema.task_roles.items() if t in tasks},
    )


def resolve_task(schema: DatasetSchema, name: str) -> str:
    """A task name, or ``role:<role>`` resolved through the schema's task roles (one-line error if undeclared)."""
    if not name.startswith("role:"):
        return name
    role = name[len("role:") :]
    task = schema.task_roles.get(role)
    if task is None:
        raise DataError(
            f"dataset {schema.name!r} declares no {role!r} task role (tasks {schema.tasks}, roles "
            f"{schema.task_roles or 'none'}); name the task instead of {name!r}"
        )
    return task
