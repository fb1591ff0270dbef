"""dataset=table reads a user's own CSV or Parquet file through the publishers' readers: same columns from
either format, and the same one-line errors naming the file, the line (CSV) or row (Parquet) and the column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mtlbench.data.cache import load_or_build
from mtlbench.datasets.table import TableDataset
from mtlbench.errors import ConfigError, DataError

N = 40
SETTINGS = dict(
    tasks=["click", "buy"],
    categorical={"u": {"vocab_size": 0, "role": "user"}, "i": {"vocab_size": 12, "role": "item"}},
    numeric=["x"],
    user_field="u",
    item_field="i",
    time_field="ts",
    standardize=True,
)


def table(**over: object) -> dict[str, list]:
    rng = np.random.default_rng(0)
    cols: dict[str, list] = {
        "u": rng.integers(0, 5, N).tolist(),
        "i": rng.integers(0, 12, N).tolist(),
        "x": np.round(rng.normal(2.0, 1.0, N), 3).tolist(),
        "click": rng.integers(0, 2, N).astype(float).tolist(),
        "buy": [None if k % 3 else float(k % 2) for k in range(N)],
        "ts": list(range(N)),
    }
    for name, value in over.items():
        if value is None:
            cols.pop(name)
        else:
            cols[name] = value
    return cols


def write_csv(path: Path, cols: dict[str, list]) -> Path:
    """A plain comma-separated file with a header line, empty cells for missing values."""
    names = list(cols)
    lines = [",".join(names)] + [",".join("" if v is None else str(v) for v in row) for row in zip(*cols.values())]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_parquet(path: Path, cols: dict[str, list]) -> Path:
    pq.write_table(pa.table(cols), path)
    return path


def set_row(cols: dict[str, list], name: str, row: int, value: object) -> dict[str, list]:
    """A copy of ``cols`` with one cell changed."""
    out = {k: list(v) for k, v in cols.items()}
    out[name][row] = value
    return out


def fail(path: Path, tmp_path: Path, **settings: object) -> str:
    """The one-line error of building ``path`` through the cache (which must stay empty)."""
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        load_or_build(TableDataset(path=str(path), **{**SETTINGS, **settings}), "table", cache, log=False)
    assert not cache.exists() or list(cache.iterdir()) == []
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_csv_and_parquet_give_the_same_columns(tmp_path):
    cols = table()
    schema_c, c = TableDataset(path=str(write_csv(tmp_path / "log.csv", cols)), **SETTINGS).build()
    schema_p, p = TableDataset(path=str(write_parquet(tmp_path / "log.parquet", cols)), **SETTINGS).build()
    assert schema_c == schema_p
    assert c.keys() == p.keys()
    for k in c:
        assert c[k].dtype == p[k].dtype, k
        np.testing.assert_array_equal(c[k], p[k], err_msg=k)
    assert c["u"].tolist() == cols["u"] and schema_c.feature("u").vocab_size == max(cols["u"]) + 1
    assert np.isnan(c["buy"][1]) and c["buy"][3] == 1.0  # empty cells are "no label"
    assert schema_c.feature("x").standardize and c["x"].dtype == np.float32


def test_a_gzipped_csv_is_read_as_published(tmp_path):
    import gzip

    plain = write_csv(tmp_path / "log.csv", table())
    packed = tmp_path / "log.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    _, a = TableDataset(path=str(plain), **SETTINGS).build()
    _, b = TableDataset(path=str(packed), format="csv", **SETTINGS).build()
    np.testing.assert_array_equal(a["click"], b["click"])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(
    "case",
    [
        "label not 0/1",
        "word in a number column",
        "missing column",
        "misspelt column",
        "empty numeric cell",
        "id outside the vocabulary",
        "negative id",
        "fraction in an id column",
        "empty id",
    ],
)
def test_bad_user_tables_fail_with_one_line_naming_file_place_and_column(tmp_path, fmt, case):
    cols, where = table(), {"csv": "line 5", "parquet": "row 3"}[fmt]  # data row 3: line 5 under a header
    cases = {
        "label not 0/1": (set_row(cols, "click", 3, 2.0), ["label column 'click'", "value 2", "0 or 1"]),
        "word in a number column": (set_row(cols, "x", 3, "high"), ["column 'x'", "'high'", "a number"]),
        "missing column": (table(buy=None), ["missing column 'buy'"]),
        "misspelt column": (table(click=None, clik=cols["click"]), ["missing column 'click'", "'clik'", "misspelt"]),
        "empty numeric cell": (set_row(cols, "x", 3, None), ["numeric column 'x'", "empty"]),
        "id outside the vocabulary": (set_row(cols, "i", 3, 30), ["categorical column 'i'", "id 30", "[0, 12)"]),
        "negative id": (set_row(cols, "u", 3, -1), ["categorical column 'u'", "id -1"]),
        "fraction in an id column": (set_row(cols, "u", 3, 1.5), ["column 'u'", "1.5", "an integer"]),
        "empty id": (set_row(cols, "u", 3, None), ["column 'u'", "empty", "integer"]),
    }
    data, needles = cases[case]
    if case == "word in a number column":  # a text column in Parquet: the other values are texts too
        data["x"] = [str(v) for v in data["x"]]
    if case == "fraction in an id column" and fmt == "parquet":  # a float column whose other values are whole
        data["u"] = [float(v) for v in data["u"]]
    path = (write_csv if fmt == "csv" else write_parquet)(tmp_path / f"log.{fmt}", data)
    msg = fail(path, tmp_path)
    assert msg.startswith(str(path)), msg
    if case not in ("missing column", "misspelt column"):  # a bad value: its line / row
        assert f"{path}: {where}:" in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_a_publisher_file_and_a_user_table_give_the_same_error_for_the_same_bad_label(tmp_path):
    """The label check is the publishers' (RawFile.label): identical wording, only the file differs."""
    from mtlbench.datasets.ali_ccp import AliCCP

    rows = "click,purchase,101,205,301\n1,0,7,100,1\n3,0,8,100,2\n"
    (tmp_path / "ali.csv").write_text(rows)
    (tmp_path / "mine.csv").write_text(rows)
    with pytest.raises(DataError) as publisher:
        AliCCP(path=str(tmp_path / "ali.csv")).build()
    with pytest.raises(DataError) as user:
        TableDataset(path=str(tmp_path / "mine.csv"), tasks=["click"], categorical={"101": {}}).build()
    assert str(publisher.value).replace("ali.csv", "mine.csv") == str(user.value)


def test_settings_errors_are_config_errors(tmp_path):
    path = write_csv(tmp_path / "log.csv", table())
    with pytest.raises(ConfigError, match="format must be one of auto, csv, parquet"):
        TableDataset(path=str(path), tasks=["click"], format="tsv")
    with pytest.raises(ConfigError, match="column 'x' is named both as a numeric column and as a task"):
        TableDataset(path=str(path), tasks=["x"], numeric=["x"]).build()
    with pytest.raises(DataError, match="is a folder"):
        TableDataset(path=str(tmp_path), tasks=["click"]).build()
    bad = tmp_path / "broken.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match="broken.parquet: cannot be read as Parquet"):
        TableDataset(path=str(bad), tasks=["click"]).build()


def test_null_mappings_and_lists_in_the_config_mean_empty(tmp_path):
    path = write_parquet(tmp_path / "log.parquet", table())
    a = TableDataset(
        path=str(path), tasks=["click"], categorical=None, numeric=None, task_roles=None, conditional_tasks=None
    )
    b = TableDataset(path=str(path), tasks=["click"])
    assert a.settings == b.settings and a.fingerprint() == b.fingerprint()
    assert a.settings["categorical"] == {} and a.settings["numeric"] == []


def test_the_table_is_csv_write_compatible_with_pyarrow(tmp_path):
    """A CSV written by pyarrow (quoted header, "nan" for missing floats) reads like the Parquet file."""
    cols = table()
    t = pa.table(cols)
    pacsv.write_csv(t, tmp_path / "arrow.csv")
    _, c = TableDataset(path=str(tmp_path / "arrow.csv"), **SETTINGS).build()
    _, p = TableDataset(path=str(write_parquet(tmp_path / "log.parquet", cols)), **SETTINGS).build()
    for k in p:
        np.testing.assert_array_equal(c[k], p[k], err_msg=k)
