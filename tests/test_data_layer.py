"""Cache, splits and batch loader."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlbench.data.cache import entry_path, load_or_build
from mtlbench.data.loader import BatchLoader
from mtlbench.data.order import Timeline
from mtlbench.data.rows import ColumnRows, ResidentRows
from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.data.source import DatasetSource
from mtlbench.data.splits import make_splits, user_time_split
from mtlbench.errors import ConfigError, DataError


class Counting(DatasetSource):
    builds = 0

    def build(self):
        type(self).builds += 1
        if self.settings.get("fail"):
            raise DataError("boom")
        n = self.settings.get("n", 100)
        rng = np.random.default_rng(0)
        schema = DatasetSchema(
            "counting",
            [
                Feature("u", "categorical", 10, "user"),
                Feature("v", "numeric"),
                Feature("h", "sequence", max_len=3, embedding="u"),
            ],
            tasks=["y"],
            user_field="u",
            time_field="t",
        )
        cols = {
            "u": rng.integers(0, 10, n),
            "v": rng.random(n).astype(np.float32),
            "h": rng.integers(-1, 10, (n, 3)),
            "y": rng.integers(0, 2, n).astype(np.float32),
            "t": np.arange(n),
        }
        return schema, cols


def test_cache_builds_once_then_memory_maps(tmp_path):
    Counting.builds = 0
    s1, c1, p1 = load_or_build(Counting(n=50), "counting", tmp_path, log=False)
    s2, c2, p2 = load_or_build(Counting(n=50), "counting", tmp_path, log=False)
    assert Counting.builds == 1 and p1 == p2 and s1 == s2
    assert not c2["v"].flags.writeable  # a view of the memory-mapped file, not a parsed copy
    assert c2["h"].shape == (50, 3)
    for k in c1:
        np.testing.assert_array_equal(c1[k], c2[k])
    load_or_build(Counting(n=60), "counting", tmp_path, log=False)
    assert Counting.builds == 2  # different settings -> different key


def test_failed_build_leaves_no_cache_entry(tmp_path):
    with pytest.raises(DataError):
        load_or_build(Counting(fail=True), "counting", tmp_path, log=False)
    assert not entry_path(Counting(fail=True), "counting", tmp_path).exists()
    assert list(tmp_path.iterdir()) == []


class Settled(DatasetSource):
    """A source whose constructor checks and converts, and never passes its arguments on."""

    def __init__(
        self, path: str, tasks: tuple[str, ...] = ("a", "b"), extra: dict | None = None, scale: float = 1.0
    ) -> None:
        if scale <= 0:
            raise ConfigError("scale must be positive")
        self.settings["extra"] = dict(extra or {})  # a conversion beyond plain data stays the constructor's

    def build(self):
        raise NotImplementedError


class Narrowed(Settled):
    """A subclass that calls its parent's constructor with arguments of its own."""

    def __init__(self, path: str, level: int = 2) -> None:
        super().__init__(path, tasks=("z",) * level)


def test_settings_are_captured_from_the_constructor_signature(tmp_path):
    src = Settled(Path("data") / "x.csv", extra=None)
    assert src.settings == {"path": "data/x.csv", "tasks": ["a", "b"], "extra": {}, "scale": 1.0}
    assert Settled("p", ("c",), {"k": 1}, 2.0).settings == {
        "path": "p",
        "tasks": ["c"],
        "extra": {"k": 1},
        "scale": 2.0,
    }
    # a tuple default and the list a YAML file gives are one setting, so one cache key
    p = str(tmp_path)
    assert Settled(p).fingerprint() == Settled(p, tasks=["a", "b"]).fingerprint()
    assert Settled(p).fingerprint() != Settled(p, scale=2.0).fingerprint()
    # the constructor that was called names the settings; its parent's conversions still run
    assert Narrowed("p").settings == {"path": "p", "level": 2, "extra": {}}
    assert list(inspect.signature(Settled).parameters) == ["path", "tasks", "extra", "scale"]
    assert Counting(n=5, fail=False).settings == {"n": 5, "fail": False}  # no constructor: the keywords
    assert Counting(nested={"k": (1, 2)}).settings == {"nested": {"k": [1, 2]}}  # plain data all the way down
    with pytest.raises(ConfigError, match="scale"):
        Settled("p", scale=0)
    with pytest.raises(TypeError):
        Settled("p", nope=1)


def test_timeline_orders_each_user_by_time_then_row():
    user = np.array([1, 0, 1, 0, 1])
    time = np.array([5, 3, 5, 1, 2])
    t = Timeline(user, time)
    assert t.order.tolist() == [3, 1, 4, 0, 2]  # user 0: t=1, t=3; user 1: t=2, t=5 (row 0 before row 2)
    assert t.first.tolist() == [0, 0, 2, 2, 2] and t.end.tolist() == [2, 2, 5, 5, 5]
    assert t.rank.tolist() == [0, 1, 0, 1, 2] and t.length.tolist() == [2, 2, 3, 3, 3]
    ones = np.ones(5)
    assert t.sum(ones, "earlier_rows").tolist() == [0, 1, 0, 1, 2]
    assert t.sum(ones, "earlier_times").tolist() == [0, 1, 0, 1, 1]  # rows 0 and 2 share t=5
    assert t.sum(ones, "user").tolist() == [2, 2, 3, 3, 3]
    assert t.to_rows(t.rank).tolist() == [1, 1, 2, 0, 0]
    no_time = Timeline(user)  # the table's row order is the time order; every row its own time
    assert no_time.to_rows(no_time.rank).tolist() == [0, 0, 1, 1, 2]
    assert no_time.sum(ones, "earlier_times").tolist() == no_time.sum(ones, "earlier_rows").tolist()
    assert len(Timeline(np.zeros(0, np.int64))) == 0


def test_user_time_split_puts_each_users_past_in_train():
    rng = np.random.default_rng(1)
    user = rng.integers(0, 50, 2000)
    time = rng.permutation(2000)
    parts = user_time_split(user, time, (0.8, 0.1, 0.1))
    allrows = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(allrows), np.arange(2000))
    for u in range(50):
        tr, va, te = (time[p[user[p] == u]] for p in parts.values())
        if len(va):
            assert tr.max() < va.min()
        if len(te):
            assert max(tr.max(), va.max() if len(va) else -1) < te.min()
    assert abs(len(parts["train"]) / 2000 - 0.8) < 0.03


def test_random_split_is_seeded_and_ratios_are_checked():
    s, c = Counting(n=1000).build()
    s.time_field = None
    a = make_splits(s, c, "auto", (0.6, 0.2, 0.2), seed=3)
    b = make_splits(s, c, "auto", (0.6, 0.2, 0.2), seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a) and len(a["train"]) == 600
    with pytest.raises(ConfigError, match="sum"):
        make_splits(s, c, "auto", (0.6, 0.2, 0.3))
    with pytest.raises(ConfigError, match="needs a time field"):
        make_splits(s, c, "user_time", (0.8, 0.1, 0.1))


def _loader(rows, world, rank, shuffle, epoch=0, bs=7):
    source = ResidentRows({"index": torch.arange(1000), "x": torch.arange(1000) * 10})
    return BatchLoader(source, rows, bs, shuffle=shuffle, seed=5, rank=rank, world=world, epoch_fn=lambda: epoch)


def test_eval_loader_sees_every_row_exactly_once_across_uneven_ranks():
    rows = torch.arange(3, 103)  # 100 rows, not divisible by 3
    seen = torch.cat([b["x"] for r in range(3) for b in _loader(rows, 3, r, False)])
    assert torch.equal(torch.sort(seen).values, rows * 10)
    assert sum(len(_loader(rows, 3, r, False)) for r in range(3)) == sum(
        len(list(_loader(rows, 3, r, False))) for r in range(3)
    )


def test_ranks_together_see_the_global_batches_of_one_process():
    rows = torch.arange(101)
    single = [b["x"] for b in _loader(rows, 1, 0, True, bs=8)]
    ranks = [list(_loader(rows, 2, r, True, bs=4)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == len(_loader(rows, 2, 0, True, bs=4)) == 13
    for i, whole in enumerate(single[:-1]):
        assert torch.equal(torch.cat([ranks[0][i]["x"], ranks[1][i]["x"]]), whole)
    assert torch.equal(torch.cat([ranks[0][-1]["x"], ranks[1][-1]["x"]]), single[-1][:4])  # 5 rows -> 2 + 2


def test_train_loader_shards_are_disjoint_equal_and_reshuffled_each_epoch():
    rows = torch.arange(101)
    shards = [torch.cat([b["x"] for b in _loader(rows, 2, r, True)]) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    again = torch.cat([b["x"] for b in _loader(rows, 2, 0, True)])
    assert torch.equal(again, shards[0])  # same seed and epoch: same order
    other = torch.cat([b["x"] for b in _loader(rows, 2, 0, True, epoch=1)])
    assert not torch.equal(other, shards[0])


def test_training_order_is_the_int64_permutation_held_in_int32():
    """The loader draws its permutation in int32 (half the memory at 50M rows): the same order as int64."""
    rows = torch.arange(3, 903)
    got = torch.cat([b["x"] for b in _loader(rows, 1, 0, True, epoch=2)])
    g = torch.Generator().manual_seed(5 * 1_000_003 + 2)
    assert torch.equal(got, rows[torch.randperm(len(rows), generator=g)] * 10)


def test_column_split_uses_the_datasets_own_assignment():
    s, c = Counting(n=30).build()
    c["part"] = np.arange(30) % 3
    parts = make_splits(s, c, "column:part")
    assert [p.tolist() for p in parts.values()] == [list(range(i, 30, 3)) for i in range(3)]
    with pytest.raises(ConfigError, match="no column 'nope'"):
        make_splits(s, c, "column:nope")


def test_numeric_features_are_standardized_with_training_rows_only():
    schema = DatasetSchema(
        "num",
        [
            Feature("u", "categorical", 4, "user"),
            Feature("a", "numeric", standardize=True),
            Feature("b", "numeric"),
            Feature("c", "numeric", standardize=True),
        ],
        tasks=["y"],
    )
    a = np.array([1.0, 2.0, 3.0, 4.0, 100.0, -50.0], dtype=np.float32)
    cols = {
        "u": np.zeros(6, np.int64),
        "a": a,
        "b": a.copy(),
        "c": np.full(6, 7.0, np.float32),
        "y": np.zeros(6, np.float32),
    }
    train = np.array([0, 1, 2, 3])
    inputs = ColumnRows(schema, cols)
    inputs.standardize(train)
    x = inputs.column("numeric")
    expected = (a - a[train].mean()) / a[train].std()  # valid/test rows (100, -50) don't move the scaling
    np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(x[:, 1].numpy(), a)  # not asked for: as given
    np.testing.assert_array_equal(x[:, 2].numpy(), np.zeros(6))  # constant column
    np.testing.assert_array_equal(cols["a"], [1, 2, 3, 4, 100, -50])  # the (memory-mapped) columns are untouched
