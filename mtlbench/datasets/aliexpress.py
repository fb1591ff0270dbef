"""AliExpress search logs (Li et al., CIKM 2020): per-country CSVs of the MTReclib / AITM / PLE benchmarks.

Each country ships as its own files (MTReclib layout: ``AliExpress_NL/train.csv``, ``AliExpress_NL/test.csv``)
with the columns ``search_id``, ``categorical_1..16``, ``numerical_1..63``, ``click``, ``conversion``.
``path`` is one file or a folder; the country of a file is the two-letter code in its folder or file name
(``AliExpress_NL``, ``aliexpress_es_train.csv``), else the file's folder name. With files of several
countries, ``country`` becomes a categorical feature and the scenario field; ``countries`` keeps a subset.
The country codes are the publisher's: NL, ES, FR, US (the MTReclib / AITM per-country folders) and RU (the
fifth country of the Tianchi release). A file named for another code, or, with several countries, a file
whose name carries no code, fails with one line naming the file and the value instead of becoming a new
scenario.

Tasks: ``ctr`` (click), ``ctcvr`` (conversion over all impressions, the label these benchmarks train) by
default; ``cvr`` (conversion on clicked impressions, NaN elsewhere) is also available. A conversion without
a click fails with its line unless ``purchase_without_click: ignore``. ``search_id`` (one search request)
is the session field, per country. Categorical ids are re-indexed over all files; numerical features are
published already normalised and are kept as they are (empty cells -> 0). The publisher's train/test files
are kept in ``split_part`` (0 / 2); there is no user, item or time, so ``split.method: auto`` is random.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.data.source import DatasetSource
from mtlbench.datasets.csv_reading import Layout, check_header, first_line, read_csv
from mtlbench.datasets.features import concat
from mtlbench.datasets.files import find_files, require_path
from mtlbench.datasets.funnel import check_funnel_settings, funnel_labels, funnel_roles, split_part_of
from mtlbench.datasets.raw_file import Kind
from mtlbench.datasets.vocabulary import encode
from mtlbench.errors import ConfigError, DataError
from mtlbench.registry import register_dataset

CATEGORICAL = tuple(f"categorical_{i}" for i in range(1, 17))
NUMERICAL = tuple(f"numerical_{i}" for i in range(1, 64))
HINT = "an AliExpress country CSV (search_id, categorical_*, numerical_*, click, conversion) or a folder of them"
COUNTRY_RE = re.compile(r"(?:^|[^a-z])aliexpress[_\-]?([a-z]{2})(?:[^a-z]|$)", re.IGNORECASE)
#: the countries of the published dataset (MTReclib's AliExpress_NL/_ES/_FR/_US folders; RU in the Tianchi release)
COUNTRIES = ("ES", "FR", "NL", "RU", "US")


def country_code(path: Path) -> str | None:
    """Two-letter country code from the file's or its folders' names (AliExpress_NL/train.csv -> NL)."""
    for part in (path.name, *(p.name for p in path.parents)):
        m = COUNTRY_RE.search(part)
        if m:
            return m.group(1).upper()
    return None


def country_of(path: Path) -> str:
    """The country code of a file (see :func:`country_code`), else its folder's name."""
    return country_code(path) or path.parent.name or path.stem


def check_countries(files: list[Path]) -> None:
    """A one-line DataError for a country code that is not one of the dataset's, naming the file and value."""
    codes = {f: country_code(f) for f in files}
    for f, code in codes.items():
        if code is not None and code not in COUNTRIES:
            raise DataError(
                f"{f}: country {code!r} (from its name, every row of the file) is not an AliExpress "
                f"country; known: {', '.join(COUNTRIES)}"
            )
    if len({country_of(f) for f in files}) > 1:
        for f, code in codes.items():
            if code is None:
                raise DataError(
                    f"{f}: no AliExpress country in its name (value {country_of(f)!r}, every row of "
                    f"the file), with files of several countries; put it in a folder AliExpress_<code> "
                    f"with a code of {', '.join(COUNTRIES)}"
                )


@register_dataset("aliexpress")
class AliExpress(DatasetSource):
    """AliExpress per-country CSVs; tasks CTR and CTCVR (CVR optional); country as the scenario."""

    version = "3"  # 2: cvr recorded as labelled on clicks only; 3: country codes checked, task roles

    def __init__(
        self,
        path: str,
        pattern: str = "*.csv",
        countries: tuple[str, ...] | None = None,
        tasks: tuple[str, ...] = ("ctr", "ctcvr"),
        min_count: int = 1,
        purchase_without_click: str = "error",
        max_rows: int | None = None,
    ) -> None:
        if not countries:
            self.settings["countries"] = None  # every country
        self.path = require_path(path, "aliexpress", HINT)
        check_funnel_settings("aliexpress", list(tasks), purchase_without_click)
        self.tasks = list(tasks)

    def files(self) -> list[tuple[Path, str]]:
        found = find_files(self.path, [self.settings["pattern"]], "aliexpress", HINT)
        files = [(f, country_of(f)) for f in found]
        wanted = self.settings["countries"]
        if wanted:
            wanted = [c.upper() for c in wanted]
            present = sorted({c for _, c in files})
            missing = [c for c in wanted if c not in present]
            if missing:
                raise ConfigError(f"aliexpress: no files for countries {missing} in {self.path} (found {present})")
            files = [(f, c) for f, c in files if c in wanted]
        check_countries([f for f, _ in files])
        return files

    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        s = self.settings
        files = self.files()
        layout = Layout(",")
        wanted: dict[str, Kind] = {"search_id": "cat", "click": "label", "conversion": "label"}
        wanted |= {c: "cat" for c in CATEGORICAL}
        wanted |= {c: "float" for c in NUMERICAL}
        for f, _ in files:  # every header first, so a bad file fails before any parsing
            check_header(f, first_line(f), layout, list(wanted))
        raws = [read_csv(f, wanted, layout, max_rows=s["max_rows"]) for f, _ in files]
        labels: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        for raw in raws:
            got = funnel_labels(
                self.tasks, raw.label("click"), raw.label("conversion"), raw, "conversion", s["purchase_without_click"]
            )
            for t in self.tasks:
                labels[t].append(got[t])
        out = {t: concat(v) for t, v in labels.items()}
        names = sorted({c for _, c in files})
        multi = len(names) > 1
        features = []
        if multi:
            country = encode([pa.array(np.full(raw.num_rows, c)) for raw, (_, c) in zip(raws, files)])
            out["country"] = country.ids
            features.append(Feature("country", "categorical", country.size, "context"))
        for c in CATEGORICAL:
            enc = encode([raw.pop(c) for raw in raws], s["min_count"])
            out[c] = enc.ids
            features.append(Feature(c, "categorical", enc.size, "context"))
        for c in NUMERICAL:
            out[c] = concat([raw.numeric(c) for raw in raws])
            features.append(Feature(c, "numeric"))
        # session: one search request of one country
        sid = encode([raw.pop("search_id") for raw in raws]).ids.astype(np.int64)
        ci = concat([np.full(raw.num_rows, names.index(c)) for raw, (_, c) in zip(raws, files)])
        out["search_session"] = np.unique(ci * (int(sid.max()) + 1) + sid, return_inverse=True)[1].reshape(-1)
        out["split_part"] = concat([np.full(raw.num_rows, split_part_of(raw.path), np.int8) for raw in raws])
        schema = DatasetSchema(
            name="aliexpress",
            features=features,
            tasks=list(self.tasks),
            scenario_field="country" if multi else None,
            session_field="search_session",
            analysis_fields=["split_part"],
            conditional_tasks={"cvr": "ctr"} if "cvr" in self.tasks else {},
            task_roles=funnel_roles(self.tasks),
        )
        schema.validate(out, source=str(self.path))
        return schema, out
