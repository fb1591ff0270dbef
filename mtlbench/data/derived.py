"""Per-row inputs derived from a whole dataset in preprocessing (e.g. STAN's pseudo-labels).

A model (or weighting strategy) lists the names it needs in ``required_inputs``; the data module
computes them once over the full table, vectorised, and gathers them into batches like any column.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import UnknownNameError

DerivedFn = Callable[..., np.ndarray]
DERIVED_INPUTS: dict[str, DerivedFn] = {}


def register_derived(name: str) -> Callable[[DerivedFn], DerivedFn]:
    def decorator(fn: DerivedFn) -> DerivedFn:
        DERIVED_INPUTS[name] = fn
        return fn

    return decorator


def compute_derived(name: str, schema: DatasetSchema, columns: dict[str, np.ndarray],
                    train_rows: np.ndarray, **settings) -> np.ndarray:
    """Compute derived input ``name``; ``train_rows`` lets a rule learn thresholds from training data only."""
    from mtlbench.registry import load_plugins

    load_plugins()
    if name not in DERIVED_INPUTS:
        raise UnknownNameError(f"unknown derived input {name!r}; known: {', '.join(sorted(DERIVED_INPUTS))}")
    return DERIVED_INPUTS[name](schema, columns, train_rows, **settings)
