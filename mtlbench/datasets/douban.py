"""Douban multi-domain (movie / book / music) ratings in the layout of the Scenario-Wise-Rec benchmark.

The file (``douban_sample.csv`` in Scenario-Wise-Rec, UTF-8 with or without BOM) has the columns
``user_id, item_id, rating, domain, living_place, join_time, time_bin``: ``rating`` is already binarised
(0/1) and is the one task; ``domain`` is the scenario, one of ``book``, ``movie``, ``music`` (the domains
the Scenario-Wise-Rec sample documents; another value, or an empty cell, fails with one line naming the
file, line and value instead of becoming a new scenario); ``time_bin`` is a coarse interaction time bucket
and the time field (ties inside a bin keep file order), so ``split.method: auto`` is the per-user time
split. Features: user, item, domain, living place and the year the user joined (from ``join_time``).
``path`` is the CSV file or a folder holding one (``pattern``).
"""

from __future__ import annotations

import numpy as np

from mtlbench.data import spill
from mtlbench.data.schema import DatasetSchema, Feature, Role
from mtlbench.data.source import DatasetSource
from mtlbench.datasets.csv_reading import Layout, read_csv
from mtlbench.datasets.features import time_order
from mtlbench.datasets.files import find_files, require_path
from mtlbench.datasets.vocabulary import encode, map_categories
from mtlbench.errors import DataError
from mtlbench.registry import register_dataset

HINT = "the Douban multi-domain CSV (user_id, item_id, rating, domain, living_place, join_time, time_bin)"
DOMAINS = ("book", "movie", "music")


@register_dataset("douban")
class Douban(DatasetSource):
    """Douban movie/book/music ratings; one task (rating 0/1); scenario = domain; time = time_bin."""

    version = "2"  # 2: domain values are checked

    def __init__(self, path: str, pattern: str = "*.csv", min_count: int = 1, max_rows: int | None = None) -> None:
        self.path = require_path(path, "douban", HINT)

    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        s = self.settings
        files = find_files(self.path, [s["pattern"]], "douban", HINT)
        if len(files) > 1:
            raise DataError(
                f"{self.path}: {len(files)} files match {s['pattern']!r} "
                f"({', '.join(f.name for f in files[:3])}); set dataset.pattern to pick one"
            )
        raw = read_csv(
            files[0],
            {
                "user_id": "int",
                "item_id": "int",
                "rating": "label",
                "domain": "cat",
                "living_place": "cat",
                "join_time": "cat",
                "time_bin": "int",
            },
            Layout(","),
            max_rows=s["max_rows"],
        )
        raw.check_known("domain", DOMAINS.__contains__, f"a Douban domain ({', '.join(DOMAINS)})")
        time_bin = raw.integer("time_bin")
        order = time_order(time_bin)
        user = encode([spill.take(raw.integer("user_id"), order)], s["min_count"])
        item = encode([spill.take(raw.integer("item_id"), order)], s["min_count"])
        rating = spill.take(raw.label("rating"), order)
        out: dict[str, np.ndarray] = {"rating": rating, "user_id": user.ids, "item_id": item.ids}
        features = [
            Feature("user_id", "categorical", user.size, "user"),
            Feature("item_id", "categorical", item.size, "item"),
        ]
        join_year = map_categories(raw.pop("join_time"), lambda t: None if not t else t.strip()[:4])
        role: Role
        for name, col, role in (
            ("domain", raw.pop("domain"), "context"),
            ("living_place", raw.pop("living_place"), "user"),
            ("join_year", join_year, "user"),
        ):
            enc = encode([col], s["min_count"], strip=True)
            out[name] = spill.take(enc.ids, order)
            features.append(Feature(name, "categorical", enc.size, role))
        out["time_bin"] = spill.take(time_bin, order)
        schema = DatasetSchema(
            name="douban",
            features=features,
            tasks=["rating"],
            user_field="user_id",
            item_field="item_id",
            scenario_field="domain",
            time_field="time_bin",
        )
        schema.validate(out, source=str(self.path))
        return schema, out
