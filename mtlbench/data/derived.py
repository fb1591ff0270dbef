"""Per-row inputs derived from a whole dataset in preprocessing (e.g. STAN's pseudo-labels).

A model (or weighting strategy) lists the names it needs in ``required_inputs``; the data module
computes them once over the full table, vectorised, and gathers them into batches like any column. A derived
input is a function ``fn(schema, columns, train_rows, **settings) -> array`` registered with
``mtlbench.register_derived(name)``.
"""

from __future__ import annotations

import numpy as np

from mtlbench.data.schema import DatasetSchema
from mtlbench.registry import DERIVED


def compute_derived(
    name: str, schema: DatasetSchema, columns: dict[str, np.ndarray], train_rows: np.ndarray, **settings
) -> np.ndarray:
    """Compute derived input ``name``; ``train_rows`` lets a rule learn thresholds from training data only."""
    return DERIVED.get(name)(schema, columns, train_rows, **settings)
