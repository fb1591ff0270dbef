"""Ali-CCP (Taobao, ESMM paper: Ma et al., SIGIR 2018) in the processed CSV layout of AITM / torch-rechub /
Scenario-Wise-Rec.

The layout: one header line, labels ``click`` and ``purchase``, categorical fields named by their Ali-CCP
field ids (``101`` user, ``121``-``129`` user profile, ``205`` item, ``206``/``207``/``210``/``216`` item
side, ``508``... crosses, ``109_14``... behaviour histories), dense ``D*`` fields (weights of the multi-hot
fields, numeric features kept as published, not scaled), and field ``301`` the 3-way scenario. Every
column other than the labels and ``D*`` is a categorical field, so both the 33-column torch-rechub /
Scenario-Wise-Rec files and the 20-column AITM files read as published. A file without a header line
(PaddleRec's AITM test file) takes the column names of a headed file with the same number of fields, or the
published 20 / 33 column lists.

``path`` is one file or a folder (``pattern`` selects its files); several files are read together, with
one vocabulary per field over all of them, and the publisher's split kept in the analysis column
``split_part`` (0 / 1 / 2 for files named train / val / test).

Tasks (``tasks``, any of): ``ctr`` = click over all impressions; ``cvr`` = purchase on clicked impressions
only (NaN elsewhere: no label outside the click space); ``ctcvr`` = click and purchase over all impressions
(ESMM's entire-space label). Purchase implies click in Ali-CCP; a row with purchase = 1 and click = 0 fails
with its file and line (``purchase_without_click: error``), or, with ``ignore``, counts as no purchase.

Ali-CCP has no timestamp, so ``split.method: auto`` is the seeded random split.

A folder holding Tianchi's raw files (``sample_skeleton_{train,test}.csv`` + ``common_features_{train,test}.csv``,
the ``sample_{train,test}.tar.gz`` downloads, or ``train/`` + ``test/`` subfolders) is read in the raw layout
instead (:mod:`mtlbench.datasets.ali_ccp_raw`: behaviour sequences with counts, the official split); the
settings ``max_len``, ``valid_fraction``, ``split_seed`` and ``scenario_values`` are that layout's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlbench.data.schema import DatasetSchema, Feature, Role
from mtlbench.data.source import DatasetSource
from mtlbench.datasets.ali_ccp_raw import DEFAULT_MAX_LEN, build_raw, find_raw
from mtlbench.datasets.csv_reading import Layout, check_header, first_line, read_csv, release_memory, split_line
from mtlbench.datasets.features import concat
from mtlbench.datasets.files import check_file, find_files, require_path
from mtlbench.datasets.funnel import check_funnel_settings, funnel_labels, funnel_roles, split_part_of
from mtlbench.datasets.raw_file import Kind
from mtlbench.datasets.vocabulary import encode
from mtlbench.errors import ConfigError, DataError
from mtlbench.registry import register_dataset

AITM_COLUMNS = (
    "click",
    "purchase",
    "101",
    "121",
    "122",
    "124",
    "125",
    "126",
    "127",
    "128",
    "129",
    "205",
    "206",
    "207",
    "216",
    "508",
    "509",
    "702",
    "853",
    "301",
)
RECHUB_COLUMNS = (
    "click",
    "purchase",
    "101",
    "121",
    "122",
    "124",
    "125",
    "126",
    "127",
    "128",
    "129",
    "205",
    "206",
    "207",
    "210",
    "216",
    "508",
    "509",
    "702",
    "853",
    "301",
    "109_14",
    "110_14",
    "127_14",
    "150_14",
    "D109_14",
    "D110_14",
    "D127_14",
    "D150_14",
    "D508",
    "D509",
    "D702",
    "D853",
)
USER_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "109_14", "110_14", "127_14", "150_14")
ITEM_FIELDS = ("205", "206", "207", "210", "216")
HINT = "an Ali-CCP CSV file (click, purchase, 101, ..., 301, D*) or a folder of them"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@register_dataset("ali_ccp")
class AliCCP(DatasetSource):
    """Ali-CCP processed CSVs or Tianchi's raw files; tasks CTR, CVR (clicked rows only), CTCVR; scenario 301."""

    version = "3"  # 2: cvr recorded as labelled on clicks only; 3: the raw layout, task roles

    def __init__(
        self,
        path: str,
        pattern: str = "*.csv",
        tasks: tuple[str, ...] = ("ctr", "cvr", "ctcvr"),
        scenario_field: str | None = "301",
        user_field: str | None = "101",
        item_field: str | None = "205",
        min_count: int = 1,
        purchase_without_click: str = "error",
        max_rows: int | None = None,
        max_len: int = DEFAULT_MAX_LEN,
        valid_fraction: float = 0.1,
        split_seed: int = 0,
        scenario_values: tuple[int, ...] | None = None,
    ) -> None:
        if scenario_values is not None:
            self.settings["scenario_values"] = [int(v) for v in scenario_values]
        self.path = require_path(path, "ali_ccp", HINT)
        check_funnel_settings("ali_ccp", list(tasks), purchase_without_click)
        self.tasks = list(tasks)
        if int(max_len) < 1:
            raise ConfigError(f"ali_ccp: max_len must be >= 1, got {max_len}")
        if not 0.0 < float(valid_fraction) < 1.0:
            raise ConfigError(f"ali_ccp: valid_fraction must be in (0, 1), got {valid_fraction}")
        if scenario_values is not None and (not scenario_values or len(set(scenario_values)) < len(scenario_values)):
            raise ConfigError(
                f"ali_ccp: scenario_values must be distinct raw ids of field 301, got {list(scenario_values)}"
            )
        self.raw = find_raw(self.path)  # Tianchi's raw files: None keeps the processed-CSV reader

    def layouts(self) -> list[tuple[Path, Layout, list[str]]]:
        """(file, layout, column names) of every file; headerless files borrow a headed file's names."""
        files = find_files(self.path, [self.settings["pattern"]], "ali_ccp", HINT)
        heads = {}
        for f in files:
            check_file(f)
            heads[f] = [x.strip() for x in split_line(first_line(f), ",")]
        known = {len(h): h for h in heads.values() if "click" in h}
        known.setdefault(len(AITM_COLUMNS), list(AITM_COLUMNS))
        known.setdefault(len(RECHUB_COLUMNS), list(RECHUB_COLUMNS))
        out = []
        for f in files:
            head = heads[f]
            if not all(_is_number(x) for x in head) or len(head) not in known:
                names = check_header(f, first_line(f), Layout(","), ["click", "purchase"])
                out.append((f, Layout(","), names))
            else:
                names = known[len(head)]
                out.append((f, Layout(",", tuple(names)), names))
        first = out[0][2]
        for f, _, names in out[1:]:
            if sorted(names) != sorted(first):
                raise DataError(
                    f"{f}: line 1: columns differ from {out[0][0].name} (e.g. "
                    f"{sorted(set(names) ^ set(first))[:3]}); read files of one layout together"
                )
        return out

    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        s = self.settings
        if self.raw is not None:
            return build_raw(self.raw, s, self.tasks)
        layouts = self.layouts()
        names = layouts[0][2]
        dense = [c for c in names if c.startswith("D")]
        cats = [c for c in names if c not in ("click", "purchase") and c not in dense]
        for field in (s["scenario_field"], s["user_field"], s["item_field"]):
            if field is not None and field not in cats:
                raise ConfigError(
                    f"ali_ccp: field {field!r} is not a categorical column of the files (columns: {cats})"
                )
        wanted: dict[str, Kind] = {"click": "label", "purchase": "label"}
        wanted |= {c: "cat" for c in cats}
        wanted |= {c: "float" for c in dense}
        raws = [read_csv(f, wanted, layout, max_rows=s["max_rows"]) for f, layout, _ in layouts]
        columns: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        for raw in raws:
            labels = funnel_labels(
                self.tasks, raw.label("click"), raw.label("purchase"), raw, "purchase", s["purchase_without_click"]
            )
            for t in self.tasks:
                columns[t].append(labels[t])
        out = {t: concat(v) for t, v in columns.items()}
        features = []
        for c in cats:  # one column at a time: each raw column is freed once re-indexed
            enc = encode([raw.pop(c) for raw in raws], s["min_count"])
            release_memory()
            out[c] = enc.ids
            role: Role = "user" if c in USER_FIELDS else "item" if c in ITEM_FIELDS else "context"
            features.append(Feature(c, "categorical", enc.size, role))
        for c in dense:
            out[c] = concat([raw.numeric(c) for raw in raws])
            release_memory()
            features.append(Feature(c, "numeric"))
        out["split_part"] = concat([np.full(raw.num_rows, split_part_of(raw.path), np.int8) for raw in raws])
        schema = DatasetSchema(
            name="ali_ccp",
            features=features,
            tasks=list(self.tasks),
            user_field=s["user_field"],
            item_field=s["item_field"],
            scenario_field=s["scenario_field"],
            analysis_fields=["split_part"],
            conditional_tasks={"cvr": "ctr"} if "cvr" in self.tasks else {},
            task_roles=funnel_roles(self.tasks),
        )
        schema.validate(out, source=str(self.path))
        return schema, out
