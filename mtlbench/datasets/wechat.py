"""WeChat Big Data Challenge 2021 (WeChat Channels), the public dataset of the STAN paper.

``path`` is the challenge folder (``wechat_algo_data1/``) with ``user_action.csv`` (``userid, feedid, date_,
device, read_comment, comment, like, play, stay, click_avatar, forward, follow, favorite``) and
``feed_info.csv`` (``feedid, authorid, videoplayseconds, description, ..., bgm_song_id, bgm_singer_id,
manual_tag_list, ...``), joined on ``feedid``. ``feed_embeddings.csv`` and the unlabelled ``test_a.csv`` are
not read.

Tasks: ``like``, ``click_avatar``, ``forward`` by default (the STAN paper's choice), ``read_comment``,
``comment``, ``follow``, ``favorite`` on request. ``play`` / ``stay`` are outcomes of the impression, so they
are not features. User-side features (role ``user``, the user feature set U of STAN's preference network):
the user id, ``device`` (the user's device type) and, with ``hist_len > 0``, ``hist_feeds``: the user's
``hist_len`` most recent feeds in the rows before this one, most recent first (the current row never
included). Item-side: feed, author, background song and singer (empty = one shared missing id), the first
manual tag, and log1p + z-scored ``videoplayseconds``. That one numeric feature is scaled with the statistics
of ``feed_info.csv``, not of the training split: the challenge publishes it as a table of one row per feed,
and that row is the unit (each feed counts once, however often it was shown; no label enters).

Time: ``date_`` (day 1..14) is the only time the challenge publishes; rows are sorted by day keeping the
file order within a day (ties that the per-user split and STAN's pseudo-labels keep in file order). The
challenge split by day (the official baseline trained on days <= 12 and evaluated on day 13, day 15 was the
unlabelled test): ``valid_days`` / ``test_days`` write that exact split to the analysis column
``split_part`` (0 / 1 / 2), which the config's default ``split.method: column:split_part`` uses;
``global_time`` cuts the day-ordered rows by the split ratios, i.e. the latest days test.
"""

from __future__ import annotations

import numpy as np

from mtlbench.data import spill
from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.data.source import DatasetSource
from mtlbench.datasets.csv_reading import Layout, read_csv
from mtlbench.datasets.features import join_rows, recent_items, standardize_side_table, time_order
from mtlbench.datasets.files import find_files, require_path
from mtlbench.datasets.raw_file import Kind
from mtlbench.datasets.vocabulary import encode, map_categories
from mtlbench.errors import ConfigError
from mtlbench.registry import register_dataset

ACTIONS = ("read_comment", "comment", "like", "click_avatar", "forward", "follow", "favorite")
HINT = "the challenge folder with user_action.csv and feed_info.csv"


@register_dataset("wechat")
class WeChat(DatasetSource):
    """WeChat Channels actions joined with feed info; tasks like / click_avatar / forward; time = date_."""

    version = "2"  # 2: device has role user

    def __init__(
        self,
        path: str,
        tasks: tuple[str, ...] = ("like", "click_avatar", "forward"),
        valid_days: tuple[int, ...] = (13,),
        test_days: tuple[int, ...] = (14,),
        hist_len: int = 10,
        min_count: int = 1,
        max_rows: int | None = None,
    ) -> None:
        self.path = require_path(path, "wechat", HINT)
        unknown = [t for t in tasks if t not in ACTIONS]
        if unknown or not tasks:
            raise ConfigError(f"wechat: unknown task(s) {unknown}; known: {list(ACTIONS)}")
        if int(hist_len) < 0:
            raise ConfigError(f"wechat: hist_len must be >= 0, got {hist_len}")
        if set(valid_days) & set(test_days):
            raise ConfigError(f"wechat: valid_days {list(valid_days)} and test_days {list(test_days)} overlap")
        self.tasks = list(tasks)

    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        s = self.settings
        action_file = find_files(self.path, ["user_action.csv"], "wechat", HINT)[0]
        folder = self.path if self.path.is_dir() else self.path.parent
        feed_file = find_files(folder, ["feed_info.csv"], "wechat", HINT)[0]
        actions: dict[str, Kind] = {"userid": "int", "feedid": "int", "date_": "int", "device": "cat"}
        actions |= {t: "label" for t in self.tasks}
        log = read_csv(action_file, actions, Layout(","), max_rows=s["max_rows"])
        feeds = read_csv(
            feed_file,
            {
                "feedid": "int",
                "authorid": "cat",
                "videoplayseconds": "float",
                "bgm_song_id": "cat",
                "bgm_singer_id": "cat",
                "manual_tag_list": "cat",
            },
            Layout(","),
        )
        user_raw, feed_raw, day = log.integer("userid"), log.integer("feedid"), log.integer("date_")
        labels = {t: log.label(t) for t in self.tasks}
        device = encode([log.pop("device")], strip=True)
        f_row = join_rows(feed_raw, feeds.integer("feedid"), log, "feedid", feeds)

        order = time_order(day)  # stable: file order within a day
        user = encode([spill.take(user_raw, order)], s["min_count"])
        feed = encode([spill.take(feed_raw, order)], s["min_count"])
        f_row = spill.take(f_row, order)
        out: dict[str, np.ndarray] = {t: spill.take(labels.pop(t), order) for t in self.tasks}
        out["userid"], out["device"], out["feedid"] = user.ids, spill.take(device.ids, order), feed.ids
        features = [
            Feature("userid", "categorical", user.size, "user"),
            Feature("device", "categorical", device.size, "user"),
            Feature("feedid", "categorical", feed.size, "item"),
        ]
        tags = map_categories(
            feeds.pop("manual_tag_list"), lambda t: None if t is None else t.split(";")[0].strip() or None
        )
        for name, col in (
            ("authorid", feeds.pop("authorid")),
            ("bgm_song_id", feeds.pop("bgm_song_id")),
            ("bgm_singer_id", feeds.pop("bgm_singer_id")),
            ("manual_tag", tags),
        ):
            enc = encode([col], s["min_count"], strip=True)
            out[name] = enc.ids[f_row]
            features.append(Feature(name, "categorical", enc.size, "item"))
        # the publisher's feed table is the unit of scaling: each feed once, then joined to its impressions
        out["videoplayseconds"] = standardize_side_table(feeds.numeric("videoplayseconds"), log=True)[f_row]
        features.append(Feature("videoplayseconds", "numeric", role="item"))
        if s["hist_len"]:
            out["hist_feeds"] = recent_items(user.ids, feed.ids, int(s["hist_len"]))
            features.append(
                Feature("hist_feeds", "sequence", role="user", max_len=int(s["hist_len"]), embedding="feedid")
            )
        out["date_"] = spill.take(day, order)
        part = np.zeros(len(order), dtype=np.int8)
        part[np.isin(out["date_"], s["valid_days"])] = 1
        part[np.isin(out["date_"], s["test_days"])] = 2
        out["split_part"] = part
        schema = DatasetSchema(
            name="wechat",
            features=features,
            tasks=list(self.tasks),
            user_field="userid",
            item_field="feedid",
            time_field="date_",
            analysis_fields=["split_part"],
        )
        schema.validate(out, source=str(self.path))
        return schema, out
