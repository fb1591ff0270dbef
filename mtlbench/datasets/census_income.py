"""UCI Census-Income (KDD), the multi-task benchmark of the MMoE paper (Ma et al., KDD 2018, sec. 6.3).

Reads the raw UCI files as published: ``census-income.data(.gz)`` (199,523 rows, the training split) and/or
``census-income.test(.gz)`` (99,762 rows): no header, 42 comma+space separated fields in the order of
``census-income.names``, the last one the income class ("- 50000." / "50000+.").

Tasks, as in the MMoE paper: ``income`` (income > 50K) and ``never_married`` (marital status is "Never
married"). The columns a label is derived from are never features. ``instance weight`` is dropped, as
census-income.names asks. The seven continuous fields (as torch-rechub's preprocessing lists them) are
numeric features (the four money fields after log1p, ``log_money``), z-scored at load time with the training
split's mean and std (``Feature.standardize``); every other
field is categorical, re-indexed over all rows of all given files. ``scenario: year`` makes the survey year
(1994 / 1995) a 2-way scenario.

The paper's split (train on the training file, the test file halved 1:1 into validation and test) is kept
in the analysis column ``split_part`` (0 train file, 1 / 2 the seeded halves of the test file). The data
has no user or time, so ``split.method: auto`` is the seeded random split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.data.source import DatasetSource
from mtlbench.datasets.csv_reading import Layout, read_csv
from mtlbench.datasets.features import concat
from mtlbench.datasets.files import find_files, require_path
from mtlbench.datasets.raw_file import Kind
from mtlbench.datasets.vocabulary import decode_values, encode
from mtlbench.errors import ConfigError, DataError
from mtlbench.registry import register_dataset

#: the 42 fields of census-income.names, in file order
COLUMNS = (
    "age",
    "class_of_worker",
    "detailed_industry_recode",
    "detailed_occupation_recode",
    "education",
    "wage_per_hour",
    "enroll_in_edu_inst_last_wk",
    "marital_stat",
    "major_industry_code",
    "major_occupation_code",
    "race",
    "hispanic_origin",
    "sex",
    "member_of_a_labor_union",
    "reason_for_unemployment",
    "full_or_part_time_employment_stat",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "tax_filer_stat",
    "region_of_previous_residence",
    "state_of_previous_residence",
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "instance_weight",
    "migration_code_change_in_msa",
    "migration_code_change_in_reg",
    "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt",
    "num_persons_worked_for_employer",
    "family_members_under_18",
    "country_of_birth_father",
    "country_of_birth_mother",
    "country_of_birth_self",
    "citizenship",
    "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits",
    "weeks_worked_in_year",
    "year",
    "income",
)
NUMERIC = (
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
)
MONEY = ("wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks")
#: task -> (source column, label function of the trimmed published text; None = not a valid value)
TASKS = {
    "income": ("income", {"- 50000.": 0.0, "50000+.": 1.0}),
    "never_married": ("marital_stat", None),
}
YEARS = ("94", "95")  # the survey years, as the file writes them (1994, 1995)
LAYOUT = Layout(delimiter=",", names=COLUMNS)
HINT = "a folder with census-income.data.gz and/or census-income.test.gz, or one of those files"


@register_dataset("census_income")
class CensusIncome(DatasetSource):
    """UCI Census-Income (KDD) from its raw files; tasks income > 50K and never-married."""

    version = "3"  # 2: numeric columns cached unscaled, z-scored at load with training statistics; 3: year checked

    def __init__(
        self,
        path: str,
        tasks: Sequence[str] = ("income", "never_married"),
        scenario: str | None = None,
        log_money: bool = True,
        min_count: int = 1,
        split_seed: int = 0,
        max_rows: int | None = None,
    ) -> None:
        tasks = list(tasks)
        self.path = require_path(path, "census_income", HINT)
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise ConfigError(f"census_income: unknown task(s) {unknown}; known: {list(TASKS)}")
        if scenario not in (None, "year"):
            raise ConfigError(f"census_income: scenario must be null or 'year', got {scenario!r}")
        self.tasks, self.scenario = tasks, scenario

    def files(self) -> list[tuple[Path, bool]]:
        """(file, is the official test split) for each raw file given."""
        files = find_files(self.path, ["census-income.data*", "census-income.test*"], "census_income", HINT)
        return [(f, "test" in f.name) for f in files]

    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        s = self.settings
        label_sources = {TASKS[t][0] for t in self.tasks}
        skip = {"instance_weight", "income"} | label_sources
        cat_cols = [c for c in COLUMNS if c not in NUMERIC and c not in skip]
        wanted: dict[str, Kind] = {c: ("float" if c in NUMERIC else "cat") for c in COLUMNS if c != "instance_weight"}
        raws = [(read_csv(f, wanted, LAYOUT, max_rows=s["max_rows"]), is_test) for f, is_test in self.files()]
        if self.scenario == "year":  # the survey years the UCI documentation lists: 1994 and 1995
            for raw, _ in raws:
                raw.check_known("year", YEARS.__contains__, f"a survey year ({' or '.join(YEARS)})")

        columns: dict[str, np.ndarray] = {}
        for t in self.tasks:
            columns[t] = concat([self._label(raw, t) for raw, _ in raws])
        features = []
        for c in cat_cols:
            enc = encode([raw.pop(c) for raw, _ in raws], s["min_count"], strip=True)
            columns[c] = enc.ids
            features.append(Feature(c, "categorical", enc.size, "context"))
        for c in NUMERIC:
            x = concat([raw.numeric(c) for raw, _ in raws])
            log = s["log_money"] and c in MONEY
            columns[c] = (np.log1p(np.maximum(x, 0.0, dtype=np.float64)) if log else x).astype(np.float32)
            features.append(Feature(c, "numeric", standardize=True))
        columns["split_part"] = self._split_part([(raw.num_rows, is_test) for raw, is_test in raws])
        schema = DatasetSchema(
            name="census_income",
            features=features,
            tasks=list(self.tasks),
            scenario_field="year" if self.scenario == "year" else None,
            analysis_fields=["split_part"],
        )
        schema.validate(columns, source=str(self.path))
        return schema, columns

    def _label(self, raw, task: str) -> np.ndarray:
        """Label from the published text of the task's source column; unknown texts fail with the line."""
        column, mapping = TASKS[task]
        indices, texts = decode_values(raw[column])
        if mapping is None:  # never_married: any marital status is valid
            table = np.array([1.0 if t == "Never married" else 0.0 for t in texts] + [np.nan], np.float32)
        else:
            table = np.array([mapping.get(t, np.nan) for t in texts] + [np.nan], np.float32)
        y = table[indices]  # index -1 (empty cell) -> NaN
        bad = np.isnan(y)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = texts[indices[row]] if indices[row] >= 0 else ""
            raise DataError(
                f"{raw.at(row)}: column {column!r} has {value!r}; expected one of "
                f"{sorted(mapping) if mapping else 'a marital status'}"
            )
        return y

    def _split_part(self, parts: list[tuple[int, bool]]) -> np.ndarray:
        """MMoE's split: the training file -> 0; the test file halved at random (seeded): 1 valid, 2 test."""
        rng = np.random.default_rng(self.settings["split_seed"])
        out = []
        for n, is_test in parts:
            if is_test:
                half = np.zeros(n, dtype=np.int64)
                half[rng.permutation(n)[n // 2 :]] = 1
                out.append(1 + half)
            else:
                out.append(np.zeros(n, dtype=np.int64))
        return concat(out)
