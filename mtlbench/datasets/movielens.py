"""MovieLens 100K / 1M (GroupLens, Harper & Konstan 2015) as a multi-task, multi-scenario rating log.

Reads the files as GroupLens ships them: 100K ``u.data`` (tab-separated ``user item rating timestamp``),
``u.user`` and ``u.item`` (``|``-separated, latin-1); 1M ``ratings.dat``, ``users.dat``, ``movies.dat``
(``::``-separated). ``format: auto`` picks whichever the folder holds.

Tasks are thresholds on the 1-5 star rating, ``label = rating >= threshold``: by default ``like``
(>= 4) and ``love`` (= 5); ``task_thresholds`` defines more, ``tasks`` picks which are trained. Every
row is a rated movie, so these are "how much did the user like what they watched" tasks.

The real unix timestamps give each user's time order: rows are sorted by (timestamp, user), the time
field is ``timestamp`` (so ``split.method: auto`` is the per-user time split and STAN's running
pseudo-labels follow the true order; ties within one second keep file order), and a session is one
user's ratings on one UTC day. ``scenario`` picks a user or item grouping: ``age_bucket`` (MovieLens 1M's
seven age groups, applied to 100K's raw ages), ``gender``, ``occupation`` or ``genre_family`` (the first
family in ``genre_families``, in config order, that holds one of the movie's genres; "other" when none).

Features: user id, gender, age bucket, occupation, zip region (first character of the zip code), item id,
genre family, release decade, the movie's genres as a sequence field, and with ``hist_len > 0`` the
user's previous movies (most recent first).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pyarrow as pa

from mtlbench.data import spill
from mtlbench.data.schema import PAD, DatasetSchema, Feature
from mtlbench.data.source import DatasetSource
from mtlbench.datasets.csv_reading import Layout, read_csv
from mtlbench.datasets.features import join_rows, recent_items, time_order
from mtlbench.datasets.files import find_files, require_path
from mtlbench.datasets.raw_file import Kind
from mtlbench.datasets.vocabulary import decode_values, encode, map_categories
from mtlbench.errors import ConfigError, DataError
from mtlbench.registry import register_dataset

GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
MAX_GENRES = 6  # the most genres one movie has in either release
#: MovieLens 1M's age groups (Under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+): lower edges of groups 1..6
AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
SCENARIOS = ("age_bucket", "gender", "occupation", "genre_family")
DAY_S = 86400

FORMATS = {
    "100k": {
        "ratings": ("u.data", Layout("\t", ("user_id", "item_id", "rating", "timestamp"))),
        "users": ("u.user", Layout("|", ("user_id", "age", "gender", "occupation", "zip"))),
        "items": (
            "u.item",
            Layout(
                "|",
                ("item_id", "title", "release_date", "video_release_date", "url") + tuple(f"g_{g}" for g in GENRES),
                "latin1",
            ),
        ),
    },
    "1m": {
        "ratings": ("ratings.dat", Layout("::", ("user_id", "item_id", "rating", "timestamp"))),
        "users": ("users.dat", Layout("::", ("user_id", "gender", "age", "occupation", "zip"))),
        "items": ("movies.dat", Layout("::", ("item_id", "title", "genres"), "latin1")),
    },
}
HINT = "the MovieLens folder: u.data, u.user, u.item (100K) or ratings.dat, users.dat, movies.dat (1M)"
#: genre_family of a movie: the first family (in this order) holding one of its genres (read-only: a default)
DEFAULT_FAMILIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "children": ("Animation", "Children's"),
        "action": ("Action", "Adventure", "Sci-Fi", "Fantasy", "War", "Western"),
        "thriller": ("Thriller", "Crime", "Mystery", "Horror", "Film-Noir"),
        "comedy": ("Comedy", "Musical"),
        "drama": ("Drama", "Romance", "Documentary"),
    }
)
#: task -> rating threshold (label = rating >= threshold)
DEFAULT_THRESHOLDS: Mapping[str, int] = MappingProxyType({"like": 4, "love": 5})


@register_dataset("movielens")
class MovieLens(DatasetSource):
    """MovieLens 100K / 1M ratings with per-user time order; tasks are rating thresholds."""

    version = "1"

    def __init__(
        self,
        path: str,
        format: str = "auto",
        tasks: tuple[str, ...] = ("like", "love"),
        task_thresholds: Mapping[str, int] | None = DEFAULT_THRESHOLDS,
        scenario: str | None = None,
        genre_families: Mapping[str, Sequence[str]] | None = DEFAULT_FAMILIES,
        hist_len: int = 0,
        min_count: int = 1,
        max_rows: int | None = None,
    ) -> None:
        thresholds = dict(task_thresholds or DEFAULT_THRESHOLDS)
        families = {k: list(v) for k, v in (genre_families or DEFAULT_FAMILIES).items()}
        self.settings.update(task_thresholds=thresholds, genre_families=families)  # null: the defaults
        self.path = require_path(path, "movielens", HINT)
        if format not in ("auto", "100k", "1m"):
            raise ConfigError(f"movielens: format must be auto, 100k or 1m, got {format!r}")
        missing = [t for t in tasks if t not in thresholds]
        if missing or not tasks:
            raise ConfigError(f"movielens: task(s) {missing} have no threshold; task_thresholds is {thresholds}")
        bad = {t: v for t, v in thresholds.items() if not 1 <= int(v) <= 5}
        if bad:
            raise ConfigError(f"movielens: rating thresholds must be in 1..5, got {bad}")
        if scenario is not None and scenario not in SCENARIOS:
            raise ConfigError(f"movielens: scenario must be null or one of {list(SCENARIOS)}, got {scenario!r}")
        unknown = sorted({g for gs in families.values() for g in gs} - set(GENRES))
        if unknown:
            raise ConfigError(f"movielens: unknown genre(s) {unknown} in genre_families; known: {list(GENRES)}")
        if hist_len < 0:
            raise ConfigError(f"movielens: hist_len must be >= 0, got {hist_len}")
        self.tasks, self.thresholds, self.scenario = list(tasks), thresholds, scenario
        self.families, self.hist_len = families, int(hist_len)

    def detect_format(self) -> str:
        if self.settings["format"] != "auto":
            return self.settings["format"]
        for fmt in ("100k", "1m"):
            if find_files(self.path, [FORMATS[fmt]["ratings"][0]], "movielens", HINT, required=False):
                return fmt
        raise DataError(
            f"{self.path}: neither u.data (MovieLens 100K) nor ratings.dat (1M) found; "
            f"dataset 'movielens' expects {HINT}"
        )

    def _file(self, fmt: str, kind: str) -> tuple[Path, Layout]:
        name, layout = FORMATS[fmt][kind]
        if self.path.is_file():
            if kind == "ratings":
                return self.path, layout
            folder = self.path.parent
        else:
            folder = self.path
        return find_files(folder, [name], "movielens", HINT)[0], layout

    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        fmt = self.detect_format()
        path, layout = self._file(fmt, "ratings")
        ratings = read_csv(
            path,
            {"user_id": "int", "item_id": "int", "rating": "int", "timestamp": "int"},
            layout,
            max_rows=self.settings["max_rows"],
        )
        user_raw, item_raw = ratings.integer("user_id"), ratings.integer("item_id")
        rating, timestamp = ratings.integer("rating"), ratings.integer("timestamp")
        bad = (rating < 1) | (rating > 5)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{ratings.at(row)}: column 'rating' has value {int(rating[row])}; ratings are 1..5")

        users = self._users(fmt)
        items = self._items(fmt)
        u_row = join_rows(user_raw, users["user_id"], ratings, "user_id", users["file"])
        i_row = join_rows(item_raw, items["item_id"], ratings, "item_id", items["file"])

        order = time_order(timestamp, user_raw)
        user_raw, item_raw, rating, timestamp = (spill.take(a, order) for a in (user_raw, item_raw, rating, timestamp))
        u_row, i_row = spill.take(u_row, order), spill.take(i_row, order)
        columns: dict[str, np.ndarray] = {}
        for t in self.tasks:
            columns[t] = (rating >= int(self.thresholds[t])).astype(np.float32)
        user = encode([user_raw], self.settings["min_count"])
        item = encode([item_raw], self.settings["min_count"])
        columns["user_id"], columns["item_id"] = user.ids, item.ids
        features = [Feature("user_id", "categorical", user.size, "user")]
        for name in ("gender", "age_bucket", "occupation", "zip_region"):
            ids, size = users[name]
            columns[name] = ids[u_row]
            features.append(Feature(name, "categorical", size, "user"))
        features.append(Feature("item_id", "categorical", item.size, "item"))
        for name in ("genre_family", "release_decade"):
            ids, size = items[name]
            columns[name] = ids[i_row]
            features.append(Feature(name, "categorical", size, "item"))
        columns["genres"] = items["genres"][i_row]
        features.append(Feature("genres", "sequence", len(GENRES), "item", max_len=MAX_GENRES))
        if self.hist_len:
            columns["hist_items"] = recent_items(user.ids, item.ids, self.hist_len)
            features.append(Feature("hist_items", "sequence", role="user", max_len=self.hist_len, embedding="item_id"))
        columns["timestamp"] = timestamp
        columns["session_id"] = np.unique(user_raw * 1_000_000 + timestamp // DAY_S, return_inverse=True)[1]
        columns["session_id"] = columns["session_id"].reshape(-1).astype(np.int64)
        schema = DatasetSchema(
            name="movielens",
            features=features,
            tasks=list(self.tasks),
            user_field="user_id",
            item_field="item_id",
            scenario_field=self.scenario,
            time_field="timestamp",
            session_field="session_id",
        )
        schema.validate(columns, source=str(self.path))
        return schema, columns

    # -- side tables ------------------------------------------------------------------------------------
    def _users(self, fmt: str) -> dict:
        path, layout = self._file(fmt, "users")
        raw = read_csv(
            path, {"user_id": "int", "age": "int", "gender": "cat", "occupation": "cat", "zip": "cat"}, layout
        )
        out: dict = {"file": raw, "user_id": raw.integer("user_id")}
        age = raw.integer("age")
        bucket = np.searchsorted(AGE_EDGES, age, side="right").astype(np.int32)
        out["age_bucket"] = (bucket, len(AGE_EDGES) + 1)
        for name in ("gender", "occupation"):
            enc = encode([raw.pop(name)], strip=True)
            out[name] = (enc.ids, enc.size)
        region = map_categories(raw.pop("zip"), lambda z: (z or "").strip()[:1] or None)
        enc = encode([region])
        out["zip_region"] = (enc.ids, enc.size)
        return out

    def _items(self, fmt: str) -> dict:
        path, layout = self._file(fmt, "items")
        if fmt == "100k":
            cols: dict[str, Kind] = {"item_id": "int", "release_date": "cat"}
            cols |= {f"g_{g}": "int" for g in GENRES}
            raw = read_csv(path, cols, layout)
            flags = np.stack([raw.integer(f"g_{g}", allow_missing=True, fill=0) for g in GENRES], axis=1) > 0
            years = [_year(t, r"(\d{4})\s*$") for t in raw.pop("release_date").to_pylist()]
        else:
            raw = read_csv(path, {"item_id": "int", "title": "cat", "genres": "cat"}, layout)
            indices, texts = decode_values(raw.pop("genres"))
            position = {g: i for i, g in enumerate(GENRES)}
            table = np.zeros((len(texts) + 1, len(GENRES)), dtype=bool)
            for k, text in enumerate(texts):
                for g in (text or "").split("|"):
                    if g in position:
                        table[k, position[g]] = True
            flags = table[indices]
            years = [_year(t, r"\((\d{4})\)\s*$") for t in raw.pop("title").to_pylist()]
        out: dict = {"file": raw, "item_id": raw.integer("item_id")}
        # genres as a padded id sequence, in GENRES order
        rank = np.cumsum(flags, axis=1) - 1
        seq = np.full((len(flags), MAX_GENRES), PAD, dtype=np.int64)
        r, g = np.nonzero(flags & (rank < MAX_GENRES))
        seq[r, rank[r, g]] = g
        out["genres"] = seq
        # genre family: the first configured family (config order) holding one of the movie's genres
        family = np.full(len(flags), len(self.families), dtype=np.int32)
        for k, members in reversed(list(enumerate(self.families.values()))):
            has = flags[:, [GENRES.index(m) for m in members]].any(axis=1)
            family[has] = k
        out["genre_family"] = (family, len(self.families) + int((family == len(self.families)).any()))
        decade = pa.array([None if y is None else y // 10 * 10 for y in years], type=pa.int64())
        enc = encode([decade])
        out["release_decade"] = (enc.ids, enc.size)
        return out


def _year(text: str | None, pattern: str) -> int | None:
    """The release year in a MovieLens date or title ("01-Jan-1995", "Toy Story (1995)"); None if absent."""
    m = re.search(pattern, text or "")
    return int(m.group(1)) if m else None
