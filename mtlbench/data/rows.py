"""The batch layout every model reads, gathered from the dataset's columns one batch at a time.

Training on a dataset larger than RAM: the cache's columns are zero-copy views of a memory-mapped Arrow file,
and :class:`ColumnRows` reads a batch's rows straight from them (one gather per column per batch), so training
holds no row-sized copy of the data: its anonymous memory is the split and permutation indices (8 bytes a row),
the derived inputs a model asks for, and the evaluation metrics' state. :class:`ResidentRows` is the other path:
the whole layout built once on a device (a GPU when the data fits) and batches gathered there, with no host round
trip per step. Both give the same batches, value for value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from mtlbench.data.schema import DatasetSchema, weights_column

#: rows per block when statistics are computed over the training split (bounded memory; one block, and so the
#: exact reduction of a single pass, for every training split up to this size)
STATS_BLOCK = 1 << 22


def layout_keys(schema: DatasetSchema) -> list[str]:
    """The keys of a batch (before derived inputs), in a fixed order."""
    keys = ["index", "categorical", "numeric"]
    for f in schema.sequences:
        keys.append(f"seq:{f.name}")
        if f.weights:
            keys.append(f"seqw:{f.name}")
    keys.append("labels")
    keys += [k for k, name in _id_fields(schema) if name is not None]
    return keys


def _id_fields(schema: DatasetSchema) -> list[tuple[str, str | None]]:
    return [("user", schema.user_field), ("scenario", schema.scenario_field), ("session", schema.session_field)]


def _stack(columns: list[np.ndarray], rows: np.ndarray, dtype: torch.dtype) -> Tensor:
    """``[len(rows), len(columns)]`` of the columns' values at ``rows`` (numpy's type promotion, then ``dtype``)."""
    if not columns:
        return torch.zeros(len(rows), 0, dtype=dtype)
    return torch.from_numpy(np.stack([c[rows] for c in columns], axis=1)).to(dtype)


class ColumnRows:
    """Row-aligned inputs of one dataset, gathered per batch from its (memory-mapped) columns.

    A batch: ``categorical`` int64 [B, F] (fields in schema order), ``numeric`` float32 [B, F_num] (the
    ``standardize`` fields z-scored with training-split statistics, see :meth:`standardize`), ``seq:<name>``
    int64 [B, L] (PAD = -1) with ``seqw:<name>`` float32 [B, L] when the sequence has weights (0 at padding),
    ``labels`` float32 [B, K] (NaN = no label), ``index`` int64 row numbers, ``user`` / ``scenario`` /
    ``session`` int64 when the schema names them, and every derived input added with :meth:`add`. Analysis-only
    columns are never in a batch.
    """

    device = torch.device("cpu")

    def __init__(self, schema: DatasetSchema, columns: Mapping[str, np.ndarray]) -> None:
        self.schema = schema
        self.n = len(columns[schema.tasks[0]])
        self._categorical = [columns[f.name] for f in schema.categorical]
        self._numeric = [columns[f.name] for f in schema.numeric]
        self._labels = [columns[t] for t in schema.tasks]
        self._sequences: dict[str, np.ndarray] = {}
        for f in schema.sequences:
            self._sequences[f"seq:{f.name}"] = columns[f.name]
            if f.weights:
                self._sequences[f"seqw:{f.name}"] = columns[weights_column(f.name)]
        self._ids = {key: columns[name] for key, name in _id_fields(schema) if name is not None}
        self.derived: dict[str, Tensor] = {}
        #: the standardised numeric columns (positions) and their training mean / std (float64), set by standardize
        self._scale: tuple[list[int], Tensor, Tensor] | None = None

    def keys(self) -> list[str]:
        return layout_keys(self.schema) + list(self.derived)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def add(self, name: str, values: np.ndarray | Tensor) -> None:
        """A derived input (one value or row of values per table row), held in memory and gathered like a column."""
        self.derived[name] = torch.as_tensor(np.ascontiguousarray(values)) if isinstance(values, np.ndarray) else values

    def standardize(self, train_rows: np.ndarray) -> None:
        """z-score the ``numeric`` features that ask for it (``Feature.standardize``), with the training split's
        mean and (population) standard deviation, in float64; a constant column becomes 0.

        This is where numeric features are scaled; the one other place is a publisher's side table scaled over its
        own rows (:func:`mtlbench.datasets.features.standardize_side_table`, KuaiRand and WeChat), said there.
        Statistics are reduced over blocks of :data:`STATS_BLOCK` training rows (sums of blocks, then of squared
        deviations from the mean), so that no split-sized copy is made; up to that size it is one block, the same
        reduction as over the whole split.
        """
        cols = [j for j, f in enumerate(self.schema.numeric) if f.standardize]
        if not cols or len(train_rows) == 0:
            return
        fields = [self._numeric[j] for j in cols]
        blocks = [np.asarray(train_rows[i : i + STATS_BLOCK]) for i in range(0, len(train_rows), STATS_BLOCK)]

        def block(rows: np.ndarray) -> Tensor:
            return _stack(fields, rows, torch.float32).double()  # the float32 inputs models see, in float64

        if len(blocks) == 1:
            train = block(blocks[0])
            mean, std = train.mean(0), train.std(0, unbiased=False)
        else:
            mean = sum((block(b).sum(0) for b in blocks), torch.zeros(len(cols), dtype=torch.float64))
            mean = mean / len(train_rows)
            var = sum(((block(b) - mean).square().sum(0) for b in blocks), torch.zeros_like(mean))
            std = (var / len(train_rows)).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))
        self._scale = (cols, mean, std)

    def gather(self, idx: Tensor, keys: Iterable[str] | None = None) -> dict[str, Tensor]:
        """The batch of rows ``idx`` (row numbers), or only its ``keys``; ``index`` holds them as int64."""
        want = set(self.keys() if keys is None else keys)
        rows = idx.cpu().numpy()
        out: dict[str, Tensor] = {}
        if "index" in want:
            out["index"] = idx.to(torch.int64, copy=True)
        if "categorical" in want:
            out["categorical"] = _stack(self._categorical, rows, torch.int64)
        if "numeric" in want:
            x = _stack(self._numeric, rows, torch.float32)
            if self._scale is not None:
                cols, mean, std = self._scale
                x[:, cols] = ((x[:, cols].double() - mean) / std).float()
            out["numeric"] = x
        for key, col in self._sequences.items():
            if key in want:
                out[key] = torch.from_numpy(np.asarray(col[rows])).to(
                    torch.float32 if key.startswith("seqw:") else torch.int64
                )
        if "labels" in want:
            out["labels"] = _stack(self._labels, rows, torch.float32)
        for key, col in self._ids.items():
            if key in want:
                out[key] = torch.from_numpy(np.asarray(col[rows])).to(torch.int64)
        for key, values in self.derived.items():
            if key in want:
                out[key] = values[idx]
        return out

    def column(self, key: str, rows: np.ndarray | Tensor | None = None) -> Tensor:
        """One input's values at ``rows`` (all rows when None): e.g. a derived input for an analysis."""
        idx = torch.arange(self.n) if rows is None else torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        return self.gather(idx, [key])[key]

    def resident(self, device: torch.device | str) -> ResidentRows:
        """The whole layout built once on ``device``: the device-resident path (see :class:`ResidentRows`)."""
        return ResidentRows({k: v.to(device) for k, v in self.gather(torch.arange(self.n)).items()})


class ResidentRows:
    """The whole batch layout held on one device (a GPU when the data fits, or RAM); batches are gathered there.

    The same batches as :class:`ColumnRows` value for value (it is built by gathering every row from one), for
    the price of the whole table in the device's memory.
    """

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors
        self.n = len(tensors["index"])
        self.device = tensors["index"].device

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, key: object) -> bool:
        return key in self.tensors

    def gather(self, idx: Tensor, keys: Iterable[str] | None = None) -> dict[str, Tensor]:
        idx = idx.to(self.device)
        return {k: self.tensors[k][idx] for k in (self.tensors if keys is None else keys)}

    def column(self, key: str, rows: np.ndarray | Tensor | None = None) -> Tensor:
        t = self.tensors[key]
        return t if rows is None else t[torch.as_tensor(np.asarray(rows), dtype=torch.int64).to(self.device)]

    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in self.tensors.values())


def layout_nbytes(rows: ColumnRows) -> int:
    """Bytes the whole layout takes once resident (to decide whether a device can hold it)."""
    probe = rows.gather(torch.arange(min(rows.n, 1024)))
    per_row = sum(t.element_size() * t[0].nelement() for t in probe.values() if len(t))
    return per_row * rows.n


def build_tensors(schema: DatasetSchema, columns: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Every row of ``columns`` as one batch (no standardisation): for tests and small tools."""
    rows = ColumnRows(schema, columns)
    return rows.gather(torch.arange(rows.n))
