"""Disk-backed columns while a cache entry is built (mtlbench.data.spill): flat memory, same entries."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mtlbench.data import cache, spill
from mtlbench.data.cache import entry_columns, entry_path, load_or_build, prepare_entry
from mtlbench.data.schema import DatasetSchema, Feature, weights_column
from mtlbench.data.source import DatasetSource
from mtlbench.datasets.table import TableDataset
from mtlbench.errors import DataError

STATUS = Path("/proc/self/status")


def rss_kb(key: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.mark.skipif(not STATUS.exists(), reason="needs /proc/self/status (Linux)")
def test_large_arrays_inside_spilling_are_file_pages_not_anonymous_memory(tmp_path):
    n = 32 << 20  # 256 MiB of float64
    with spill.spilling(tmp_path / "scratch") as folder:
        before = rss_kb("RssAnon:")
        a = spill.empty(n, np.float64)
        a[:] = 1.5
        grown = rss_kb("RssAnon:") - before
        assert not list(folder.iterdir())  # the files were unlinked when mapped: nothing to clean up after a crash
        assert float(a[::4096].sum()) == 1.5 * len(a[::4096])
    assert grown < 32 << 10  # < 32 MiB of the 256 MiB written
    del a
    before = rss_kb("RssAnon:")
    b = spill.empty(n, np.float64)  # outside spilling: plain memory
    b[:] = 1.5
    assert rss_kb("RssAnon:") - before > 200 << 10


def test_small_arrays_stay_in_memory_and_helpers_match_numpy(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 9, (n, 3)).astype(np.int32) for n in (5, 0, 7)]
    with spill.spilling(tmp_path):
        assert spill.active()
        assert isinstance(spill.empty(10, np.int64).base, type(None) | np.ndarray)  # small: np.empty
        monkeypatch.setattr(spill, "MIN_BYTES", 0)
        out = spill.concatenate(parts)
        np.testing.assert_array_equal(out, np.concatenate(parts))
        assert out.dtype == np.int32 and not out.flags.owndata  # a view of a map
        np.testing.assert_array_equal(spill.stow(parts[0]), parts[0])
        np.testing.assert_array_equal(spill.full((2, 3), 7, np.int8), np.full((2, 3), 7, np.int8))
        assert spill.concatenate(parts[:1]) is parts[0]  # one array: no copy
    assert not spill.active()


def _table(tmp_path: Path, n: int, fmt: str) -> TableDataset:
    rng = np.random.default_rng(1)
    table = pa.table(
        {
            "user": rng.integers(0, 50, n),
            "item": rng.integers(0, 80, n),
            "price": rng.random(n).astype(np.float32),
            "click": (rng.random(n) < 0.3).astype(np.float32),
            "buy": np.where(rng.random(n) < 0.2, np.nan, (rng.random(n) < 0.1)).astype(np.float32),
        }
    )
    path = tmp_path / f"t.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=n // 3)
    else:
        pacsv.write_csv(table, path)  # NaN labels are written as empty cells
    return TableDataset(
        path=str(path),
        tasks=["click", "buy"],
        categorical={"user": {"vocab_size": 0, "role": "user"}, "item": {"vocab_size": 0, "role": "item"}},
        numeric=["price"],
        user_field="user",
        item_field="item",
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_entry_built_on_disk_backed_columns_equals_the_in_memory_build(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(spill, "MIN_BYTES", 0)  # spill every column of this small table
    monkeypatch.setattr("mtlbench.datasets.parquet_reading.BATCH_ROWS", 1000)  # several record batches
    source = _table(tmp_path, 5000, fmt)
    schema, expected = source.build()  # outside spilling: in memory
    got_schema, got, path = load_or_build(source, "table", tmp_path / "cache", log=False)
    assert got_schema.to_dict() == schema.to_dict()
    assert sorted(got) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)
    assert not (path.parent / f".{path.name}.spill").exists()  # the scratch folder is gone
    meta = json.loads((path / "meta.json").read_text())
    assert meta["rows"] == 5000 and meta["columns"] == len(expected)
    # prepare_entry finds the intact entry and does not rebuild it
    again, meta2, existed = prepare_entry(source, "table", tmp_path / "cache", log=False)
    assert existed and again == entry_path(source, "table", tmp_path / "cache") and meta2 == meta


def test_raw_aliccp_built_on_disk_backed_columns_and_stowed_rows_equals_the_in_memory_build(tmp_path, monkeypatch):
    """The raw reader's output columns (spill.empty) and the per-row state it keeps until every file is read
    (spill.stow, packed into shared windows) give the same entry as a build in memory."""
    import sys

    from mtlbench.datasets.ali_ccp import AliCCP

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from make_aliccp_raw import write_aliccp_raw

    monkeypatch.setattr(spill, "MIN_BYTES", 0)
    monkeypatch.setattr(spill, "WINDOW_BYTES", 4096)  # many windows, pieces larger than a quarter on their own
    monkeypatch.setattr("mtlbench.datasets.ali_ccp_raw.MERGE_ROWS", 64)  # many merged (stowed) blocks
    source = AliCCP(path=str(write_aliccp_raw(tmp_path / "raw", train_rows=600, test_rows=300)))
    schema, expected = source.build()
    with spill.spilling(tmp_path / "scratch"):
        got_schema, got = source.build()
        assert all(not v.flags.owndata for v in got.values() if v.nbytes)  # every column is a view of a map
    assert got_schema.to_dict() == schema.to_dict() and sorted(got) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_recent_items_built_in_blocks_equal_the_whole_table_formula(monkeypatch):
    """The user's previous items, built a block of rows at a time (bounded temporaries), equal the one-shot form."""
    from mtlbench.data.order import Timeline
    from mtlbench.data.schema import PAD
    from mtlbench.datasets import features

    rng = np.random.default_rng(0)
    monkeypatch.setattr(features, "HISTORY_ROWS", 97)
    for n in (0, 1, 1000, 20000):
        user, item = rng.integers(0, 50, n), rng.integers(0, 999, n).astype(np.int32)
        timeline = Timeline(user)
        lag = np.arange(1, 6)
        prev = np.arange(n)[:, None] - lag
        whole = np.where(timeline.rank[:, None] >= lag, item[timeline.order][np.maximum(prev, 0)], PAD)
        expected = timeline.to_rows(whole).astype(np.int64)
        got = features.recent_items(user, item, 5)
        assert got.dtype == np.int64 and got.shape == (n, 5)
        np.testing.assert_array_equal(got, expected)


def test_validation_in_row_blocks_names_the_row_of_the_whole_table(monkeypatch):
    """validate checks a block of rows at a time (bounded temporaries); errors still name the table's row."""
    from mtlbench.data import schema as schema_module
    from mtlbench.data.schema import DatasetSchema, Feature
    from mtlbench.errors import DataError

    monkeypatch.setattr(schema_module, "VALIDATE_ROWS", 7)
    schema = DatasetSchema(
        "d",
        [Feature("u", "categorical", 5, "user"), Feature("x", "numeric"), Feature("s", "sequence", 4, max_len=2)],
        ["y"],
    )
    n = 30
    cols = {
        "u": np.zeros(n, np.int64),
        "x": np.zeros(n, np.float32),
        "s": np.full((n, 2), -1, np.int64),
        "y": np.zeros(n, np.float32),
    }
    schema.validate(cols)
    for column, row, value, words in [
        ("y", 23, 2.0, "label column 'y' has value 2.0 at row 23"),
        ("x", 15, np.inf, "numeric column 'x' has inf at row 15"),
        ("u", 29, 5, "column 'u' has id 5 at row 29"),
        ("s", 8, 4, "column 's' has id [-1, 4] at row 8"),
    ]:
        bad = {k: v.copy() for k, v in cols.items()}
        if column == "s":
            bad[column][row, 1] = value
        else:
            bad[column][row] = value
        with pytest.raises(DataError, match=re.escape(words)):
            schema.validate(bad)


# -- the entry's data file written once (cache.entry_columns) ---------------------------------------------------
class _LaidOut(DatasetSource):
    """Columns from ``entry_columns`` when the build offers them (else in memory), filled with known values;
    ``hand`` = "laid_out" returns them as laid out, "reordered" / "copied" / "extra" returns something else."""

    def __init__(self, n: int = 5000, hand: str = "laid_out", fail: bool = False, bad_row: int = -1) -> None:
        self.n, self.hand, self.fail, self.bad_row = n, hand, fail, bad_row

    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        n = self.n
        layout = {
            "u": ((n,), np.int32),
            "s": ((n, 3), np.int32),
            weights_column("s"): ((n, 3), np.float32),
            "y": ((n,), np.float32),
            "part": ((n,), np.int8),
        }
        cols = entry_columns(layout)
        if cols is None:
            cols = {k: np.empty(shape, dtype) for k, (shape, dtype) in layout.items()}
        if self.fail:
            raise DataError("the reader failed after laying out its columns")
        rng = np.random.default_rng(n)
        cols["u"][:] = rng.integers(0, 7, n)
        cols["s"][:] = rng.integers(-1, 5, (n, 3))
        cols[weights_column("s")][:] = rng.random((n, 3))
        cols["y"][:] = np.where(rng.random(n) < 0.2, np.nan, rng.random(n) < 0.5)
        cols["part"][:] = rng.integers(0, 3, n)
        if self.bad_row >= 0:
            cols["s"][self.bad_row, 1] = 5  # outside the vocabulary
        if self.hand == "reordered":
            cols = dict(reversed(cols.items()))
        elif self.hand == "copied":
            cols["u"] = cols["u"].copy()
        elif self.hand == "extra":
            cols["v"] = cols["u"] + 1
        schema = DatasetSchema(
            "laid",
            [
                Feature("u", "categorical", 7, "user"),
                Feature("s", "sequence", 5, "user", max_len=3, weights=True),
                *([Feature("v", "categorical", 8, "item")] if "v" in cols else []),
            ],
            ["y"],
            analysis_fields=["part"],
        )
        return schema, cols


def _spy_finish(monkeypatch) -> list[bool]:
    done: list[bool] = []
    finish = cache._DataFile.finish

    def spy(self, columns, dest):
        done.append(finish(self, columns, dest))
        return done[-1]

    monkeypatch.setattr(cache._DataFile, "finish", spy)
    return done


def _copy_written(tmp_path: Path, source: DatasetSource) -> bytes:
    """data.arrow as write_entry writes it from the columns built in memory (the copying writer)."""
    schema, columns = source.build()
    ref = tmp_path / "ref" / "entry"
    cache.write_entry(ref, schema, columns, {})
    return (ref / "data.arrow").read_bytes()


@pytest.mark.parametrize("hand", ["laid_out", "reordered", "copied", "extra"])
def test_laid_out_columns_become_the_data_file_as_the_copying_writer_writes_it(tmp_path, monkeypatch, hand):
    source = _LaidOut(hand=hand)
    done = _spy_finish(monkeypatch)
    path, meta, existed = prepare_entry(source, "laid", tmp_path / "cache", log=False)
    assert not existed and meta["rows"] == 5000
    assert done == ([True] if hand == "laid_out" else [])  # written in place, or copied when not the layout
    assert (path / "data.arrow").read_bytes() == _copy_written(tmp_path, source)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [path.name]  # no scratch, no lock left
    schema, got, _ = load_or_build(source, "laid", tmp_path / "cache", log=False)
    _, want = source.build()
    assert list(got) == list(want)
    for name, values in want.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_laid_out_file_without_o_tmpfile_or_proc_link(tmp_path, monkeypatch):
    """A file system without O_TMPFILE: a named file in the scratch folder, renamed into the entry; no
    /proc to link the unlinked file: the columns are copied. The same bytes either way."""
    want = _copy_written(tmp_path, _LaidOut())
    done = _spy_finish(monkeypatch)
    monkeypatch.delattr(os, "O_TMPFILE")
    path, _, _ = prepare_entry(_LaidOut(), "laid", tmp_path / "named", log=False)
    assert done == [True] and (path / "data.arrow").read_bytes() == want
    monkeypatch.undo()
    done = _spy_finish(monkeypatch)

    def no_proc(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "link", no_proc)
    path, _, _ = prepare_entry(_LaidOut(), "laid", tmp_path / "copied", log=False)
    assert done == [False] and (path / "data.arrow").read_bytes() == want
    for folder in ("named", "copied"):
        assert [p.name for p in (tmp_path / folder).iterdir()] == [path.name]


def test_entry_columns_only_inside_a_build_and_a_failed_build_leaves_nothing(tmp_path):
    assert entry_columns({"y": ((10,), np.float32)}) is None  # no entry being built: the reader allocates
    with spill.spilling(tmp_path / "scratch"):
        assert entry_columns({"y": ((10,), np.float32)}) is None
    source = _LaidOut(n=0)  # no rows: nothing to lay out
    path, meta, _ = prepare_entry(source, "laid", tmp_path / "empty", log=False)
    assert meta["rows"] == 0 and (path / "data.arrow").read_bytes() == _copy_written(tmp_path, source)
    with pytest.raises(DataError, match="failed after laying out"):
        prepare_entry(_LaidOut(fail=True), "laid", tmp_path / "failed", log=False)
    assert list((tmp_path / "failed").iterdir()) == []


def test_raw_aliccp_entry_is_written_once_and_equals_the_copy_of_the_in_memory_build(tmp_path, monkeypatch):
    import sys

    from mtlbench.datasets.ali_ccp import AliCCP

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from make_aliccp_raw import write_aliccp_raw

    source = AliCCP(path=str(write_aliccp_raw(tmp_path / "raw", train_rows=600, test_rows=300)))
    want = _copy_written(tmp_path, source)
    done = _spy_finish(monkeypatch)
    path, meta, _ = prepare_entry(source, "ali_ccp", tmp_path / "cache", log=False)
    assert done == [True] and (path / "data.arrow").read_bytes() == want


def test_the_cache_validates_slices_on_threads_and_names_the_row_of_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "VALIDATE_SLICE", 300)  # 17 slices of the 5000 rows
    monkeypatch.setattr(pa, "cpu_count", lambda: 3)
    prepare_entry(_LaidOut(), "laid", tmp_path / "good", log=False)
    schema, columns = _LaidOut(bad_row=4321).build()
    with pytest.raises(DataError) as whole:
        schema.validate(columns, source="laid")
    assert "at row 4321" in str(whole.value)
    with pytest.raises(DataError) as built:
        prepare_entry(_LaidOut(bad_row=4321), "laid", tmp_path / "bad", log=False)
    assert str(built.value) == str(whole.value)
    assert list((tmp_path / "bad").iterdir()) == []


def test_no_space_for_the_laid_out_file_is_one_line_naming_the_entry(tmp_path, monkeypatch):
    from mtlbench.rundir import WriteError

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)  # the file's blocks are allocated when it is laid out
    source = _LaidOut()
    with pytest.raises(WriteError, match="could not write .*laid-.*: No space left on device"):
        prepare_entry(source, "laid", tmp_path / "cache", log=False)
    assert list((tmp_path / "cache").iterdir()) == []
