"""Turn validated numpy columns into the row-aligned tensors that batches are gathered from."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlbench.data.schema import DatasetSchema, weights_column


def _t(a: np.ndarray, dtype: torch.dtype) -> Tensor:
    """A private, writable copy (cache columns are read-only memory maps)."""
    return torch.from_numpy(np.array(a, copy=True, order="C")).to(dtype)


def standardize_numeric(schema: DatasetSchema, tensors: dict[str, Tensor], train_rows: np.ndarray) -> None:
    """z-score, in place, the ``numeric`` columns whose feature asks for it, with training-split statistics.

    This is where numeric features are scaled; the one other place is a publisher's side table scaled over its
    own rows (:func:`mtlbench.datasets.features.standardize_side_table`, KuaiRand and WeChat), said there.
    """
    cols = [j for j, f in enumerate(schema.numeric) if f.standardize]
    if not cols or len(train_rows) == 0:
        return
    x = tensors["numeric"]
    train = x[torch.from_numpy(np.asarray(train_rows))][:, cols].double()
    mean, std = train.mean(0), train.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column becomes 0
    x[:, cols] = ((x[:, cols].double() - mean) / std).float()


def build_tensors(schema: DatasetSchema, columns: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Batch layout shared by every model.

    ``categorical`` int64 [N, F] (fields in schema order), ``numeric`` float32 [N, F_num],
    ``seq:<name>`` int64 [N, L] (PAD = -1) with ``seqw:<name>`` float32 [N, L] when the sequence has weights
    (e.g. Ali-CCP's behaviour counts; 0 at padding), ``labels`` float32 [N, K] (NaN = no label), ``index`` int64 row
    numbers, and ``user`` / ``scenario`` / ``session`` int64 when the schema names them. Analysis-only
    columns are left out on purpose.
    """
    n = len(columns[schema.tasks[0]])
    out: dict[str, Tensor] = {"index": torch.arange(n, dtype=torch.int64)}
    cat = schema.categorical
    out["categorical"] = (
        _t(np.stack([columns[f.name] for f in cat], axis=1), torch.int64)
        if cat
        else torch.zeros(n, 0, dtype=torch.int64)
    )
    num = schema.numeric
    out["numeric"] = (
        _t(np.stack([columns[f.name] for f in num], axis=1), torch.float32)
        if num
        else torch.zeros(n, 0, dtype=torch.float32)
    )
    for f in schema.sequences:
        out[f"seq:{f.name}"] = _t(columns[f.name], torch.int64)
        if f.weights:
            out[f"seqw:{f.name}"] = _t(columns[weights_column(f.name)], torch.float32)
    out["labels"] = _t(np.stack([columns[t] for t in schema.tasks], axis=1), torch.float32)
    for key, name in (
        ("user", schema.user_field),
        ("scenario", schema.scenario_field),
        ("session", schema.session_field),
    ):
        if name is not None:
            out[key] = _t(columns[name], torch.int64)
    return out
