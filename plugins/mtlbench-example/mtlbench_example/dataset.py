"""A dataset a third party might add: a small synthetic log with two tasks and a learnable signal.

Each user u and item i get a hidden bias and vector; with a = b_u + b_i + p_u·q_i, ``click`` ~ Bernoulli(σ(a)) and
``like`` ~ Bernoulli(σ(a − 1)) on clicked rows (0 elsewhere). A real reader would take ``path`` and read it with
``mtlbench.datasets.csv_reading.read_csv`` (see ``mtlbench/datasets/table.py``).
"""

from __future__ import annotations

import numpy as np

from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.data.source import DatasetSource
from mtlbench.registry import register_dataset


@register_dataset("example_toy")
class ExampleToy(DatasetSource):
    """``n_rows`` impressions of ``n_users`` users on ``n_items`` items, generated from ``seed``.

    The constructor only names the settings: ``DatasetSource`` records them (they key the cache entry).
    """

    def __init__(
        self, n_rows: int = 20000, n_users: int = 500, n_items: int = 200, dim: int = 4, seed: int = 0
    ) -> None:
        self.shape = (n_rows, n_users, n_items, dim)
        self.seed = seed

    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        n, n_users, n_items, dim = self.shape
        rng = np.random.default_rng(self.seed)
        p, q = rng.normal(size=(n_users, dim)), rng.normal(size=(n_items, dim))
        user, item = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
        b_user, b_item = rng.normal(size=n_users), rng.normal(size=n_items)
        affinity = b_user[user] + b_item[item] + (p[user] * q[item]).sum(1) / np.sqrt(dim)
        click = rng.random(n) < 1 / (1 + np.exp(-affinity))
        like = click & (rng.random(n) < 1 / (1 + np.exp(-(affinity - 1.0))))
        schema = DatasetSchema(
            name="example_toy",
            features=[
                Feature("user", vocab_size=n_users, role="user"),
                Feature("item", vocab_size=n_items, role="item"),
            ],
            tasks=["click", "like"],
            user_field="user",
            item_field="item",
        )
        columns = {
            "user": user.astype(np.int64),
            "item": item.astype(np.int64),
            "click": click.astype(np.float32),
            "like": like.astype(np.float32),
        }
        return schema, columns
