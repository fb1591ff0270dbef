"""Dataset schema: what each column is, so models and the data layer never guess."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from mtlbench.errors import DataError

FeatureKind = Literal["categorical", "numeric", "sequence"]
Role = Literal["user", "item", "context"]
PAD = -1  # padding value of sequence fields


@dataclass(frozen=True)
class Feature:
    """One model input column.

    categorical: int64 ids in ``[0, vocab_size)``; numeric: float32; sequence: int64 ``[N, max_len]``
    ids in ``[0, vocab_size)`` padded with ``PAD`` (-1), sharing the embedding table of ``embedding``
    (a categorical feature's name) when set. A numeric feature with ``standardize`` is z-scored when the
    data is loaded, with the mean and std of the training split only (valid/test never inform the scaling).
    """

    name: str
    kind: FeatureKind = "categorical"
    vocab_size: int = 0
    role: Role = "context"
    max_len: int = 0
    embedding: str | None = None
    standardize: bool = False


@dataclass
class DatasetSchema:
    """Columns of a prepared dataset and their meaning.

    Labels are float32 columns named after the tasks, with values 0, 1 or NaN (NaN = no label, e.g.
    a conversion label outside the clicked space). ``conditional_tasks`` names such tasks and the task on
    whose positive rows they are labelled (``{"cvr": "ctr"}``). ``analysis_fields`` are for evaluation and
    reporting only and never reach a model.
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
        if not self.tasks:
            raise DataError(f"dataset {self.name!r}: no tasks declared")
        stray = [t for t in self.conditional_tasks if t not in self.tasks]
        if stray:
            raise DataError(f"dataset {self.name!r}: conditional_tasks names {stray}, which are not tasks")

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
        cols = [f.name for f in self.features] + list(self.tasks)
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
                raise DataError(f"dataset {self.name!r}{where}: column {c!r} has {len(columns[c])} rows, "
                                f"expected {n}")
        for t in self.tasks:
            y = np.asarray(columns[t], dtype=np.float64)
            bad = ~(np.isnan(y) | (y == 0) | (y == 1))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(f"dataset {self.name!r}{where}: label column {t!r} has value {float(y[row])!r} at "
                                f"row {row}; labels must be 0, 1 or missing")
        for f in self.features:
            if f.kind == "numeric":
                bad = ~np.isfinite(np.asarray(columns[f.name], dtype=np.float64))
                if bad.any():
                    row = int(np.flatnonzero(bad)[0])
                    raise DataError(f"dataset {self.name!r}{where}: numeric column {f.name!r} has "
                                    f"{float(columns[f.name][row])!r} at row {row}; fill missing values first")
                continue
            v = np.asarray(columns[f.name])
            if not np.issubdtype(v.dtype, np.integer):
                raise DataError(f"dataset {self.name!r}{where}: column {f.name!r} must hold integer ids, "
                                f"got {v.dtype}")
            vocab = self.vocab_of(f)
            low = PAD if f.kind == "sequence" else 0
            bad = (v < low) | (v >= vocab)
            if bad.any():
                row = int(np.flatnonzero(bad.reshape(len(v), -1).any(axis=1))[0])
                raise DataError(f"dataset {self.name!r}{where}: column {f.name!r} has id "
                                f"{v[row].tolist()} at row {row}, outside the declared vocabulary "
                                f"[0, {vocab})")


def select_tasks(schema: DatasetSchema, tasks: list[str]) -> DatasetSchema:
    """The same dataset restricted to some of its tasks (e.g. SFPNet's single-task CTR setting)."""
    unknown = [t for t in tasks if t not in schema.tasks]
    if unknown:
        raise DataError(f"dataset {schema.name!r} has no task(s) {unknown}; its tasks are {schema.tasks}")
    return replace(schema, tasks=list(tasks),
                   conditional_tasks={t: c for t, c in schema.conditional_tasks.items() if t in tasks})
