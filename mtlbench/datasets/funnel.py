"""ESMM's funnel on impression logs (Ali-CCP, AliExpress): CTR / CVR / CTCVR labels from click and conversion
columns, their task roles, and the settings that choose them.

``ctr`` = click over all impressions; ``cvr`` = conversion on clicked impressions only (NaN elsewhere: no label
outside the click space); ``ctcvr`` = click and conversion over all impressions (the entire-space label).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlbench.datasets.raw_file import RawFile
from mtlbench.errors import ConfigError, DataError

FUNNEL_TASKS = ("ctr", "cvr", "ctcvr")
#: the funnel roles of these tasks (DatasetSchema.task_roles), for ESMM / AITM / AEM2TL
FUNNEL_ROLES = {"click": "ctr", "conversion": "ctcvr", "conversion_given_click": "cvr"}


def funnel_roles(tasks: list[str]) -> dict[str, str]:
    """The funnel roles of the selected tasks."""
    return {role: task for role, task in FUNNEL_ROLES.items() if task in tasks}


def check_funnel_settings(dataset: str, tasks: list[str], policy: str) -> None:
    unknown = [t for t in tasks if t not in FUNNEL_TASKS]
    if unknown or not tasks:
        raise ConfigError(f"{dataset}: unknown task(s) {unknown}; known: {list(FUNNEL_TASKS)}")
    if policy not in ("error", "ignore"):
        raise ConfigError(f"{dataset}: purchase_without_click must be error or ignore, got {policy!r}")


def funnel_labels(
    tasks: list[str], click: np.ndarray, purchase: np.ndarray, raw: RawFile | None, purchase_column: str, policy: str
) -> dict[str, np.ndarray]:
    """CTR / CVR / CTCVR labels of one file (ESMM's funnel); purchase without click per ``policy``.

    ``raw`` is the file the labels come from, named by an error; None for labels of no single file.
    """
    orphan = (purchase == 1) & (click == 0)
    if orphan.any():
        if policy == "error":
            row = int(np.flatnonzero(orphan)[0])
            where = raw.at(row) if raw is not None else f"row {row}"
            raise DataError(
                f"{where}: column {purchase_column!r} is 1 but 'click' is 0; a conversion "
                "needs a click (set dataset.purchase_without_click=ignore to count it as none)"
            )
        purchase = np.where(orphan, np.float32(0), purchase)
    out = {}
    for t in tasks:
        if t == "ctr":
            out[t] = click
        elif t == "cvr":
            out[t] = np.where(click == 1, purchase, np.float32(np.nan)).astype(np.float32)
        else:
            out[t] = (click * purchase).astype(np.float32)
    return out


def split_part_of(path: Path) -> int:
    """0 / 1 / 2 for a file named like train / val(id) / test (train when the name says neither)."""
    name = path.name.lower()
    if "test" in name:
        return 2
    if "val" in name or "dev" in name:
        return 1
    return 0
