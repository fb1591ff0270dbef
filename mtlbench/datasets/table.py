"""Bring-your-own data: a Parquet or CSV file described by a schema written in the config.

The file is read by the publishers' readers (:func:`~mtlbench.datasets.csv_reading.read_csv`, or
:func:`~mtlbench.datasets.parquet_reading.read_parquet`) and its columns are taken over with the same checks
(:class:`~mtlbench.datasets.raw_file.RawFile`), so a user's own table fails with the same one-line errors as
a publisher's file: a missing or misspelt column names the file and the column, a bad value names the file,
the line (CSV, the header is line 1; gzip allowed) or row (Parquet, counted from 0) and the column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.data.source import DatasetSource, raw_files
from mtlbench.datasets.csv_reading import Layout, read_csv
from mtlbench.datasets.parquet_reading import read_parquet
from mtlbench.datasets.raw_file import Kind, RawFile
from mtlbench.errors import ConfigError, DataError
from mtlbench.registry import register_dataset

#: the default of a mapping setting: empty and read-only
EMPTY: Mapping[str, Any] = MappingProxyType({})
FORMATS = ("auto", "csv", "parquet")
PARQUET_SUFFIXES = (".parquet", ".pq")
#: what a column of each kind is, for the error when one column is named twice
_ROLE = {"int": "a categorical / time / session column", "float": "a numeric column", "label": "a task"}


def read_table(path: str | Path, columns: Mapping[str, Kind], fmt: str = "auto") -> RawFile:
    """Read the named ``columns`` of one Parquet or CSV file (``auto``: by the file's extension)."""
    raw_files(path)  # a clear error when it doesn't exist
    file = Path(path).expanduser()
    if file.is_dir():
        raise DataError(f"dataset path {str(file)!r} is a folder; dataset 'table' reads one Parquet or CSV file")
    if fmt == "auto":
        fmt = "parquet" if file.suffix.lower() in PARQUET_SUFFIXES else "csv"
    if fmt == "parquet":
        return read_parquet(file, columns)
    return read_csv(file, columns, Layout(","))


@register_dataset("table")
class TableDataset(DatasetSource):
    """A single file whose columns are named in the config.

    ``categorical`` maps column -> {vocab_size, role}; its values are integer ids in ``[0, vocab_size)``, and
    a vocab_size of 0 means "max id + 1 in the file". Labels must be 0/1 (or empty/NaN for "no label");
    numeric columns must hold a number in every row; time and session columns are integers.
    ``task_roles`` says which task is the click and which the conversion (see ``DatasetSchema.task_roles``),
    ``conditional_tasks`` which labels exist only where another task is positive (``{cvr: click}``). With
    ``standardize`` the numeric columns are z-scored with the training split's mean and std when the data
    is loaded.
    """

    def __init__(
        self,
        path: str,
        tasks: list[str],
        categorical: Mapping[str, Any] | None = EMPTY,
        numeric: Sequence[str] | None = (),
        user_field: str | None = None,
        item_field: str | None = None,
        scenario_field: str | None = None,
        time_field: str | None = None,
        session_field: str | None = None,
        format: str = "auto",
        standardize: bool = False,
        task_roles: Mapping[str, str] | None = EMPTY,
        conditional_tasks: Mapping[str, str] | None = EMPTY,
    ) -> None:
        # null in the config means empty
        self.settings.update(
            categorical=dict(categorical or {}),
            numeric=list(numeric or []),
            standardize=bool(standardize),
            task_roles=dict(task_roles or {}),
            conditional_tasks=dict(conditional_tasks or {}),
        )
        if format not in FORMATS:
            raise ConfigError(f"dataset 'table': format must be one of {', '.join(FORMATS)}, got {format!r}")

    def kinds(self) -> dict[str, Kind]:
        """How each column named in the config is read; a column named twice must be read one way."""
        s = self.settings
        kinds: dict[str, Kind] = {}
        groups: tuple[tuple[Kind, Sequence[str]], ...] = (
            ("int", list(s["categorical"])),
            ("float", s["numeric"]),
            ("label", s["tasks"]),
            ("int", [c for c in (s["time_field"], s["session_field"]) if c]),
        )
        for kind, names in groups:
            for name in names:
                if kinds.setdefault(name, kind) != kind:
                    raise ConfigError(
                        f"dataset 'table': column {name!r} is named both as {_ROLE[kinds[name]]} "
                        f"and as {_ROLE[kind]}; a column plays one part"
                    )
        return kinds

    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        """Read the named columns and check them (ids in range, numbers present, 0/1 labels)."""
        s = self.settings
        kinds = self.kinds()
        raw = read_table(s["path"], kinds, s["format"])
        ints = {c: raw.integer(c) for c, k in kinds.items() if k == "int"}
        columns: dict[str, np.ndarray] = {}
        features = []
        for name, spec in s["categorical"].items():
            spec = dict(spec or {})
            values = ints[name]
            vocab = int(spec.get("vocab_size") or (values.max() + 1 if len(values) else 1))
            _check_ids(raw, name, values, vocab)
            features.append(Feature(name, "categorical", vocab, spec.get("role", "context")))
            columns[name] = values
        for name in s["numeric"]:
            columns[name] = raw.numeric(name, fill=None)
            features.append(Feature(name, "numeric", standardize=s["standardize"]))
        for t in s["tasks"]:
            columns[t] = raw.label(t, allow_missing=True)
        for c in (s["time_field"], s["session_field"]):
            if c:
                columns[c] = ints[c]
        schema = DatasetSchema(
            name=Path(s["path"]).stem,
            features=features,
            tasks=s["tasks"],
            user_field=s["user_field"],
            item_field=s["item_field"],
            scenario_field=s["scenario_field"],
            time_field=s["time_field"],
            session_field=s["session_field"],
            task_roles=s["task_roles"],
            conditional_tasks=s["conditional_tasks"],
        )
        schema.validate(columns, source=str(s["path"]))
        return schema, columns


def _check_ids(raw: RawFile, name: str, ids: np.ndarray, vocab: int) -> None:
    """Categorical ids must lie in ``[0, vocab)``: the first one outside fails naming its line."""
    bad = (ids < 0) | (ids >= vocab)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{raw.at(row)}: categorical column {name!r} has id {int(ids[row])}, outside [0, {vocab}); "
            "ids must be 0 .. vocab_size - 1 (re-index the column)"
        )
