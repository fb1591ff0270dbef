"""KuaiRand (Gao et al., CIKM 2022; https://kuairand.com) in its official layout: KuaiRand-Pure / 1K / 27K.

``path`` is the dataset's ``data/`` folder as published: ``log_standard_*.csv`` (standard recommendation
feed) and ``log_random_*.csv`` (randomly exposed videos) with the columns ``user_id, video_id, date,
hourmin, time_ms, is_click, is_like, is_follow, is_comment, is_forward, is_hate, long_view, play_time_ms,
duration_ms, profile_stay_time, comment_stay_time, is_profile_enter, is_rand, tab``; ``user_features_*.csv``
and ``video_features_basic_*.csv`` joined on ``user_id`` / ``video_id``. ``version`` picks the file suffix
(``pure``, ``1k``, ``27k``; ``auto`` = whatever the folder holds), ``logs`` the standard logs, the random
ones, or both (``is_rand`` is kept for analysis).

Tasks are any of the binary feedback columns (default ``is_click``, ``long_view``, ``is_like``). The
scenario is ``tab`` (the app page; the KuaiRand README documents the range [0, 14]: another value or an
empty cell fails with one line naming the file, line and value instead of becoming a new scenario). Time
order comes from ``time_ms``: rows are sorted by (time_ms, user), so ``split.method: auto`` is the per-user
time split and STAN's pseudo-labels follow real time.

User features (``user_features``; categorical, re-indexed over the user table) include the lifecycle-related
``user_active_degree`` and ``register_days_range``; ``user_numeric`` are log1p + z-scored over the user table.
Video features: ``video_features`` categorical (``tag`` = the first tag of the list), ``video_numeric``
log1p + z-scored over the video table. These numeric features are scaled with the statistics of the
publisher's side tables, not of the training split: ``user_features_*.csv`` and ``video_features_basic_*.csv``
are published as tables of one row per user / video, and that row is the unit (each user or video counts
once, however many impressions it has; no label enters).

With ``rule_stage`` set to a column name, a rule-based lifecycle stage (0 New, 1 Wander, 2 Stick, 3 Loyal,
the simulator's coding) is added as an analysis column, never a model input:
New if ``user_active_degree`` is ``day_new`` / ``2_14_day_new`` or ``register_days`` < ``stage_new_days``;
else Loyal if ``full_active`` and ``register_days`` >= ``stage_loyal_days``; else Stick if ``full_active`` /
``high_active``; else Wander (middle / low / single-low active, 30-day retention, UNKNOWN). KuaiRand has no
ground-truth stage; this rule is a proxy built from the publisher's own activity labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlbench.data import spill
from mtlbench.data.schema import DatasetSchema, Feature, Role
from mtlbench.data.source import DatasetSource
from mtlbench.datasets.csv_reading import Layout, read_csv
from mtlbench.datasets.features import concat, join_rows, recent_items, standardize_side_table, time_order
from mtlbench.datasets.files import find_files, require_path
from mtlbench.datasets.raw_file import Kind, RawFile
from mtlbench.datasets.vocabulary import decode_values, encode, map_categories
from mtlbench.errors import ConfigError, DataError
from mtlbench.registry import register_dataset

ONEHOT_FEATURES = tuple(f"onehot_feat{i}" for i in range(18))  # the user table's onehot_feat0..17
LOG_COLUMNS = (
    "user_id",
    "video_id",
    "date",
    "hourmin",
    "time_ms",
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "play_time_ms",
    "duration_ms",
    "profile_stay_time",
    "comment_stay_time",
    "is_profile_enter",
    "is_rand",
    "tab",
)
LABELS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view", "is_profile_enter")
USER_COLUMNS = (
    "user_id",
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num",
    "follow_user_num_range",
    "fans_user_num",
    "fans_user_num_range",
    "friend_user_num",
    "friend_user_num_range",
    "register_days",
    "register_days_range",
    *ONEHOT_FEATURES,
)
VIDEO_COLUMNS = (
    "video_id",
    "author_id",
    "video_type",
    "upload_dt",
    "upload_type",
    "visible_status",
    "video_duration",
    "server_width",
    "server_height",
    "music_id",
    "music_type",
    "tag",
)
STAGES = ("New", "Wander", "Stick", "Loyal")
TABS = range(15)  # the README: "tab ... In range of [0,14]"
NEW_DEGREES = ("day_new", "2_14_day_new")
STICK_DEGREES = ("full_active", "high_active")
HINT = (
    "the KuaiRand data/ folder: log_standard_*.csv (and/or log_random_*.csv), user_features_*.csv, "
    "video_features_basic_*.csv"
)


@register_dataset("kuairand")
class KuaiRand(DatasetSource):
    """KuaiRand-Pure / 1K / 27K logs joined with user and video features; scenario = tab, time = time_ms."""

    version = "2"  # 2: tab values are checked

    def __init__(
        self,
        path: str,
        version: str = "auto",
        logs: str = "standard",
        tasks: tuple[str, ...] = ("is_click", "long_view", "is_like"),
        user_features: tuple[str, ...] = (
            "user_active_degree",
            "is_lowactive_period",
            "is_live_streamer",
            "is_video_author",
            "follow_user_num_range",
            "fans_user_num_range",
            "friend_user_num_range",
            "register_days_range",
            *ONEHOT_FEATURES,
        ),
        user_numeric: tuple[str, ...] = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days"),
        video_features: tuple[str, ...] = (
            "author_id",
            "video_type",
            "upload_type",
            "visible_status",
            "music_type",
            "tag",
        ),
        video_numeric: tuple[str, ...] = ("video_duration",),
        rule_stage: str | None = None,
        stage_new_days: int = 30,
        stage_loyal_days: int = 365,
        hist_len: int = 0,
        min_count: int = 1,
        max_rows: int | None = None,
    ) -> None:
        self.path = require_path(path, "kuairand", HINT)
        if version not in ("auto", "pure", "1k", "27k"):
            raise ConfigError(f"kuairand: version must be auto, pure, 1k or 27k, got {version!r}")
        if logs not in ("standard", "random", "all"):
            raise ConfigError(f"kuairand: logs must be standard, random or all, got {logs!r}")
        for setting, allowed in (
            ("tasks", LABELS),
            ("user_features", USER_COLUMNS[1:]),
            ("user_numeric", USER_COLUMNS[1:]),
            ("video_features", VIDEO_COLUMNS[1:]),
            ("video_numeric", VIDEO_COLUMNS[1:]),
        ):
            unknown = [c for c in self.settings[setting] if c not in allowed]
            if unknown:
                raise ConfigError(f"kuairand: {setting} has unknown column(s) {unknown}; known: {list(allowed)}")
        if not tasks:
            raise ConfigError(f"kuairand: no tasks; pick from {list(LABELS)}")
        if rule_stage is not None and rule_stage in LOG_COLUMNS + USER_COLUMNS + VIDEO_COLUMNS:
            raise ConfigError(f"kuairand: rule_stage names the new analysis column; {rule_stage!r} is taken")
        self.tasks = list(tasks)

    # -- files --------------------------------------------------------------------------------------------
    def _files(self, pattern: str, required: bool = True) -> list[Path]:
        version = self.settings["version"]
        suffix = "*" if version == "auto" else f"*{version}*"
        return find_files(self.path, [f"{pattern}{suffix}.csv"], "kuairand", HINT, required=required)

    def log_files(self) -> list[Path]:
        logs = self.settings["logs"]
        files = []
        if logs in ("standard", "all"):
            files += self._files("log_standard_")
        if logs in ("random", "all"):
            files += self._files("log_random_")
        return files

    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        s = self.settings
        wanted: dict[str, Kind] = {
            "user_id": "int",
            "video_id": "int",
            "time_ms": "int",
            "is_rand": "int",
            "tab": "cat",
        }
        wanted |= {t: "label" for t in self.tasks}
        raws = [read_csv(f, wanted, Layout(","), max_rows=s["max_rows"]) for f in self.log_files()]
        for r in raws:
            r.check_known("tab", is_tab, f"KuaiRand's tab (scenario), an integer in [0, {TABS.stop - 1}]")
        user_raw = concat([r.integer("user_id") for r in raws])
        video_raw = concat([r.integer("video_id") for r in raws])
        time_ms = concat([r.integer("time_ms") for r in raws])
        labels = {t: concat([r.label(t) for r in raws]) for t in self.tasks}
        is_rand = concat([r.integer("is_rand", allow_missing=True, fill=0) for r in raws])
        is_rand = is_rand.astype(np.int8)
        tab = encode([r.pop("tab") for r in raws], strip=True)
        log = _Concat(raws)

        users = self._table(
            "user_features_",
            USER_COLUMNS[0],
            s["user_features"],
            s["user_numeric"],
            with_stage=s["rule_stage"] is not None,
        )
        videos = self._table("video_features_basic_", VIDEO_COLUMNS[0], s["video_features"], s["video_numeric"])
        u_row = log.join(user_raw, users, "user_id")
        v_row = log.join(video_raw, videos, "video_id")

        order = time_order(time_ms, user_raw)
        user = encode([spill.take(user_raw, order)], s["min_count"])
        video = encode([spill.take(video_raw, order)], s["min_count"])
        u_row, v_row = spill.take(u_row, order), spill.take(v_row, order)
        out: dict[str, np.ndarray] = {t: spill.take(labels.pop(t), order) for t in self.tasks}
        out["user_id"], out["video_id"], out["tab"] = user.ids, video.ids, spill.take(tab.ids, order)
        features = [Feature("user_id", "categorical", user.size, "user"), Feature("tab", "categorical", tab.size)]
        features += _gather(out, users, u_row, "user")
        features.append(Feature("video_id", "categorical", video.size, "item"))
        features += _gather(out, videos, v_row, "item")
        if s["hist_len"]:
            out["hist_videos"] = recent_items(user.ids, video.ids, int(s["hist_len"]))
            features.append(
                Feature("hist_videos", "sequence", role="user", max_len=int(s["hist_len"]), embedding="video_id")
            )
        out["time_ms"] = spill.take(time_ms, order)
        out["is_rand"] = spill.take(is_rand, order)
        analysis = ["is_rand"]
        if s["rule_stage"] is not None:
            out[s["rule_stage"]] = users["stage"][u_row]
            analysis.append(s["rule_stage"])
        schema = DatasetSchema(
            name="kuairand",
            features=features,
            tasks=list(self.tasks),
            user_field="user_id",
            item_field="video_id",
            scenario_field="tab",
            time_field="time_ms",
            analysis_fields=analysis,
        )
        schema.validate(out, source=str(self.path))
        return schema, out

    def _table(self, prefix: str, key: str, cats: list[str], nums: list[str], with_stage: bool = False) -> dict:
        """A side table: its keys, re-indexed categorical columns and z-scored numeric columns."""
        files = self._files(prefix)
        if len(files) > 1:
            raise DataError(
                f"{self.path}: several {prefix}*.csv files ({', '.join(f.name for f in files)}); "
                "set dataset.version to pick one"
            )
        wanted: dict[str, Kind] = {key: "int"}
        wanted |= {c: "cat" for c in cats}
        wanted |= {c: "float" for c in nums}
        if with_stage:
            wanted |= {"user_active_degree": "cat", "register_days": "float"}
        raw = read_csv(files[0], wanted, Layout(","))
        out: dict = {"file": raw, "keys": raw.integer(key), "cat": {}, "num": {}}
        if with_stage:
            out["stage"] = self._stage(raw)
        for c in cats:
            col = raw.pop(c)
            if c == "tag":  # a comma-separated list of tag ids: keep the first
                col = map_categories(col, lambda t: None if t is None else t.split(",")[0].strip() or None)
            enc = encode([col], self.settings["min_count"], strip=True)
            out["cat"][c] = (enc.ids, enc.size)
        for c in nums:  # the publisher's side table is the unit of scaling: each user / video once
            out["num"][c] = standardize_side_table(raw.numeric(c), log=True)
        return out

    def _stage(self, raw: RawFile) -> np.ndarray:
        """Rule-based lifecycle stage per user (see the module docstring)."""
        s = self.settings
        indices, texts = decode_values(raw["user_active_degree"])
        degree = np.array([t if t is not None else "" for t in texts] + [""], dtype=object)[indices]
        days = np.asarray(raw["register_days"], dtype=np.float64)
        days = np.where(np.isnan(days), np.inf, days)
        stage = np.full(len(degree), 1, dtype=np.int8)  # Wander
        stage[np.isin(degree, STICK_DEGREES)] = 2
        stage[(degree == "full_active") & (days >= s["stage_loyal_days"])] = 3
        stage[np.isin(degree, NEW_DEGREES) | (days < s["stage_new_days"])] = 0
        return stage


def is_tab(text: str) -> bool:
    """KuaiRand's tab (scenario): an integer in [0, 14], as its README documents."""
    try:
        return float(text).is_integer() and int(float(text)) in TABS
    except ValueError:
        return False


class _Concat:
    """Error locations over several log files read one after another."""

    def __init__(self, raws: list[RawFile]) -> None:
        self.raws = raws
        self.ends = np.cumsum([r.num_rows for r in raws])

    def join(self, keys: np.ndarray, table: dict, column: str) -> np.ndarray:
        rows = np.empty(len(keys), dtype=np.int64)
        start = 0
        for raw, end in zip(self.raws, self.ends):
            rows[start:end] = join_rows(keys[start:end], table["keys"], raw, column, table["file"])
            start = end
        return rows


def _gather(out: dict[str, np.ndarray], table: dict, rows: np.ndarray, role: Role) -> list[Feature]:
    features = []
    for c, (ids, size) in table["cat"].items():
        out[c] = ids[rows]
        features.append(Feature(c, "categorical", size, role))
    for c, x in table["num"].items():
        out[c] = x[rows]
        features.append(Feature(c, "numeric", role=role))
    return features
