"""Bring-your-own data: a Parquet or CSV file described by a schema written in the config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.data.source import DatasetSource, raw_files
from mtlbench.errors import DataError
from mtlbench.registry import register_dataset

#: the default of a mapping setting: empty and read-only
EMPTY: Mapping[str, Any] = MappingProxyType({})


def read_table(path: str | Path, fmt: str = "auto") -> pa.Table:
    """Read a Parquet or CSV file with pyarrow (columnar, multi-threaded); one-line errors."""
    raw_files(path)  # a clear error when it doesn't exist
    file = Path(path).expanduser()
    if file.is_dir():
        raise DataError(f"dataset path {str(file)!r} is a folder; dataset 'table' reads one Parquet or CSV file")
    fmt = fmt if fmt != "auto" else ("parquet" if file.suffix in (".parquet", ".pq") else "csv")
    try:
        return pq.read_table(file) if fmt == "parquet" else pacsv.read_csv(file)
    except (pa.ArrowInvalid, OSError) as e:
        first = str(e).strip().splitlines()[0]
        raise DataError(f"cannot read {str(file)!r} as {fmt}: {first}") from None


@register_dataset("table")
class TableDataset(DatasetSource):
    """A single file whose columns are named in the config.

    ``categorical`` maps column -> {vocab_size, role}; a vocab_size of 0 means "max id + 1 in the file".
    Labels must be 0/1 (or empty/NaN for "no label"). ``task_roles`` says which task is the click and which the
    conversion (see ``DatasetSchema.task_roles``), ``conditional_tasks`` which labels exist only where another
    task is positive (``{cvr: click}``). With ``standardize`` the numeric columns are z-scored
    with the training split's mean and std when the data is loaded.
    """

    def __init__(self, path: str, tasks: list[str], categorical: Mapping[str, Any] | None = EMPTY,
                 numeric: Sequence[str] | None = (), user_field: str | None = None, item_field: str | None = None,
                 scenario_field: str | None = None, time_field: str | None = None,
                 session_field: str | None = None, format: str = "auto", standardize: bool = False,
                 task_roles: Mapping[str, str] | None = EMPTY,
                 conditional_tasks: Mapping[str, str] | None = EMPTY) -> None:
        super().__init__(path=path, tasks=list(tasks), categorical=dict(categorical or {}),
                         numeric=list(numeric or []), user_field=user_field, item_field=item_field,
                         scenario_field=scenario_field, time_field=time_field, session_field=session_field,
                         format=format, standardize=bool(standardize), task_roles=dict(task_roles or {}),
                         conditional_tasks=dict(conditional_tasks or {}))

    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        s = self.settings
        table = read_table(s["path"], s["format"])
        wanted = list(s["categorical"]) + s["numeric"] + s["tasks"] + [
            c for c in (s["time_field"], s["session_field"]) if c]
        missing = [c for c in wanted if c not in table.column_names]
        if missing:
            raise DataError(f"{s['path']}: missing column(s) {missing}; the file has {table.column_names}")
        columns: dict[str, np.ndarray] = {}
        features = []
        for name, spec in s["categorical"].items():
            spec = dict(spec or {})
            col = table.column(name)
            if not pa.types.is_integer(col.type):
                raise DataError(f"{s['path']}: categorical column {name!r} must hold integer ids, got {col.type}")
            if col.null_count:
                row = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
                raise DataError(f"{s['path']}: categorical column {name!r} is empty at row {row}")
            values = col.to_numpy().astype(np.int64)
            vocab = int(spec.get("vocab_size") or (values.max() + 1 if len(values) else 1))
            features.append(Feature(name, "categorical", vocab, spec.get("role", "context")))
            columns[name] = values
        for name in s["numeric"]:
            columns[name] = table.column(name).cast(pa.float32()).to_numpy(zero_copy_only=False)
            features.append(Feature(name, "numeric", standardize=s["standardize"]))
        for t in s["tasks"]:
            try:
                columns[t] = table.column(t).cast(pa.float32()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise DataError(f"{s['path']}: label column {t!r} is not numeric ({table.column(t).type}); "
                                "labels must be 0, 1 or empty") from None
        for c in (s["time_field"], s["session_field"]):
            if c:
                columns[c] = table.column(c).cast(pa.int64()).to_numpy(zero_copy_only=False)
        schema = DatasetSchema(name=Path(s["path"]).stem, features=features, tasks=s["tasks"],
                               user_field=s["user_field"], item_field=s["item_field"],
                               scenario_field=s["scenario_field"], time_field=s["time_field"],
                               session_field=s["session_field"], task_roles=s["task_roles"],
                               conditional_tasks=s["conditional_tasks"])
        schema.validate(columns, source=str(s["path"]))
        return schema, columns
