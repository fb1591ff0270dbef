"""Real-dataset loaders: layouts as published, labels and joins checked against independent computations,
and validation that fails with one line naming the file, the column and the first offending line."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mtlbench.data.cache import load_or_build
from mtlbench.datasets import csv_reading
from mtlbench.datasets.ali_ccp import AliCCP
from mtlbench.datasets.aliexpress import AliExpress
from mtlbench.datasets.census_income import COLUMNS as CENSUS_COLUMNS
from mtlbench.datasets.census_income import CensusIncome
from mtlbench.datasets.csv_reading import read_csv
from mtlbench.datasets.douban import Douban
from mtlbench.datasets.features import recent_items
from mtlbench.datasets.kuairand import KuaiRand
from mtlbench.datasets.movielens import GENRES, MovieLens
from mtlbench.datasets.vocabulary import encode
from mtlbench.datasets.wechat import WeChat
from mtlbench.errors import ConfigError, DataError
from mtlbench.registry import DATASETS
from mtlbench.testing import check_dataset, check_dataset_settings, compose

from conftest import FAST, run_cli, shared_data

FIXTURES = Path(__file__).resolve().parent / "fixtures"


# -- small files in the published layouts --------------------------------------------------------------------
def write_ml100k(folder: Path) -> Path:
    """Two users, four movies, MovieLens 100K layout (tab / pipe separated, no headers)."""
    folder.mkdir(parents=True, exist_ok=True)
    # user item rating timestamp; file order is not time order
    (folder / "u.data").write_text(
        "1\t10\t5\t200\n2\t20\t3\t50\n1\t20\t4\t100\n2\t30\t1\t86500\n1\t30\t2\t300\n2\t40\t5\t90000\n"
    )
    (folder / "u.user").write_text("1|17|M|student|55455\n2|56|F|other|T8H1N\n")
    flags = {10: ["Comedy", "Romance"], 20: ["Action", "Thriller"], 30: ["Animation", "Action"], 40: ["unknown"]}
    lines = []
    for item, genres in flags.items():
        bits = "|".join("1" if g in genres else "0" for g in GENRES)
        lines.append(f"{item}|Movie {item} (1995)|01-Jan-199{item // 10}||http://x|{bits}")
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin1"))
    return folder


def write_ml100k_random(folder: Path, n: int = 600, seed: int = 0) -> Path:
    """A MovieLens 100K-layout folder with ``n`` random ratings of 30 users on 40 movies."""
    write_ml100k(folder)
    rng = np.random.default_rng(seed)
    users, items = rng.integers(1, 31, n), rng.choice([10, 20, 30, 40], n)
    ratings, times = rng.integers(1, 6, n), rng.integers(0, 10**6, n)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in zip(users, items, ratings, times)))
    (folder / "u.user").write_text(
        "".join(f"{u}|{20 + u}|{'MF'[u % 2]}|job{u % 3}|{10000 + u}\n" for u in range(1, 31))
    )
    return folder


def write_csv(path: Path, header: list[str] | None, rows: list[list], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


ALI_HEADER = ["click", "purchase", "101", "205", "301", "D508"]


def ali_rows() -> list[list]:
    return [[1, 1, 7, 100, 1, 0.5], [1, 0, 7, 101, 2, 0.25], [0, 0, 8, 100, 3, 0.0], [0, 0, 9, 102, 1, 1.0]]


def census_line(age: int, marital: str, income: str, year: int = 95) -> str:
    fields = {c: "x" for c in CENSUS_COLUMNS}
    fields.update(
        age=str(age),
        marital_stat=marital,
        income=income,
        year=str(year),
        wage_per_hour="0",
        capital_gains="100",
        capital_losses="0",
        dividends_from_stocks="0",
        instance_weight="1000.5",
        num_persons_worked_for_employer="2",
        weeks_worked_in_year="52",
        education="Bachelors degree",
        detailed_industry_recode="3",
    )
    return ", ".join(fields[c] for c in CENSUS_COLUMNS)


# -- reading and re-indexing ---------------------------------------------------------------------------------
def test_encode_sorts_values_numerically_and_shares_one_id_for_empty_and_rare_values():
    enc = encode([np.array([10, 9, 100, 9])])
    assert enc.ids.tolist() == [1, 0, 2, 0] and enc.values == [9, 10, 100] and enc.size == 3
    import pyarrow as pa

    text = pa.array(["b", "a", None, "b", "c", "b"])
    enc = encode([text])
    assert enc.ids.tolist() == [1, 0, 3, 1, 2, 1] and enc.values == ["a", "b", "c", None] and enc.other == 3
    enc = encode([text], min_count=2)  # a, c and the empty cell share the extra id
    assert enc.ids.tolist() == [0, 1, 1, 0, 1, 0] and enc.values == ["b", None]


def test_streaming_reader_matches_an_independent_parse_across_blocks(tmp_path, monkeypatch):
    """Tiny parse blocks: ids assigned block by block (int -> float -> text) equal a global sort."""
    monkeypatch.setattr(csv_reading, "BLOCK_SIZE", 256)
    rng = np.random.default_rng(0)
    rows, expected = [], []
    for i in range(400):
        if i < 150:
            v = str(int(rng.integers(0, 60)))
        elif i < 300:
            v = f"{rng.integers(0, 30)}.5"
        else:
            v = str(rng.choice(["x", "y", "zz"]))
        rows.append([v, i % 2, float(i)])
        expected.append(v)
    path = write_csv(tmp_path / "f.csv", ["c", "y", "v"], rows)
    raw = read_csv(path, {"c": "cat", "y": "label", "v": "float"})
    assert raw.num_rows == 400
    np.testing.assert_array_equal(raw.label("y"), np.arange(400) % 2)
    np.testing.assert_array_equal(raw.numeric("v"), np.arange(400, dtype=np.float32))
    enc = encode([raw.pop("c")])
    vocab = sorted(set(expected))  # the text order (the column is not all numbers)
    assert enc.values == vocab
    assert enc.ids.tolist() == [vocab.index(v) for v in expected]


def test_encode_builds_one_vocabulary_over_several_files(tmp_path):
    a = read_csv(write_csv(tmp_path / "a.csv", ["k"], [["5"], ["3"]]), {"k": "cat"})
    b = read_csv(write_csv(tmp_path / "b.csv", ["k"], [["4"], ["5"], [""]]), {"k": "cat"})
    enc = encode([a.pop("k"), b.pop("k")])
    assert enc.ids.tolist() == [2, 0, 1, 2, 3] and enc.values == [3, 4, 5, None]


def test_recent_items_are_each_users_previous_items_most_recent_first():
    user = np.array([0, 1, 0, 0, 1])
    item = np.array([5, 6, 7, 8, 9])
    hist = recent_items(user, item, 2)
    assert hist.tolist() == [[-1, -1], [-1, -1], [5, -1], [7, 5], [6, -1]]


# -- validation: one line naming file, column and line; no cache entry ---------------------------------
def bad_ali_files(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (file, substrings the error must contain)."""
    rows = ali_rows()
    out = {}
    p = write_csv(tmp_path / "label.csv", ALI_HEADER, rows[:2] + [[2, 0, 8, 100, 3, 0.0]] + rows[3:])
    out["label outside {0,1}"] = (p, ["label.csv: line 4", "'click'", "value 2"])
    p = write_csv(tmp_path / "nan.csv", ALI_HEADER, rows[:1] + [[1, "", 7, 101, 2, 0.25]] + rows[2:])
    out["NaN label"] = (p, ["nan.csv: line 3", "'purchase'", "empty/NaN"])
    p = write_csv(tmp_path / "misspelt.csv", ["clik", *ALI_HEADER[1:]], rows)
    out["misspelt column"] = (p, ["misspelt.csv: line 1", "'click'", "'clik'"])
    p = write_csv(tmp_path / "missing.csv", ALI_HEADER[:1] + ALI_HEADER[2:], [r[:1] + r[2:] for r in rows])
    out["missing column"] = (p, ["missing.csv: line 1", "missing column 'purchase'"])
    p = write_csv(tmp_path / "semicolon.csv", ALI_HEADER, rows, delimiter=";")
    out["wrong delimiter"] = (p, ["semicolon.csv: line 1", "'click'", "semicolon-separated"])
    p = write_csv(tmp_path / "twice.csv", ALI_HEADER[:-1] + ["101"], [r[:-1] + [1] for r in rows])
    out["duplicated header name"] = (p, ["twice.csv: line 1", "'101' appears twice"])
    p = write_csv(tmp_path / "concatenated.csv", ALI_HEADER, rows[:2] + [ALI_HEADER] + rows[2:])
    out["header line repeated"] = (p, ["concatenated.csv: line 4", "'click'", "header line appears again"])
    p = tmp_path / "empty.csv"
    p.write_text("")
    out["empty file"] = (p, ["empty.csv", "empty"])
    p = write_csv(tmp_path / "header_only.csv", ALI_HEADER, [])
    out["header only"] = (p, ["header_only.csv", "no data rows"])
    p = write_csv(tmp_path / "word.csv", ALI_HEADER, rows[:3] + [[0, 0, 9, 102, 1, "high"]])
    out["word in a number column"] = (p, ["word.csv: line 5", "'D508'", "'high'"])
    p = write_csv(tmp_path / "ragged.csv", ALI_HEADER, rows[:1] + [rows[1] + [9]] + rows[2:])
    out["extra field"] = (p, ["ragged.csv: line 3", "7 fields"])
    p = write_csv(tmp_path / "orphan.csv", ALI_HEADER, rows[:3] + [[0, 1, 9, 102, 1, 1.0]])
    out["purchase without click"] = (p, ["orphan.csv: line 5", "'purchase'"])
    out["missing file"] = (tmp_path / "nowhere.csv", ["nowhere.csv", "exist"])
    return out


@pytest.mark.parametrize(
    "case",
    [
        "label outside {0,1}",
        "NaN label",
        "misspelt column",
        "missing column",
        "wrong delimiter",
        "duplicated header name",
        "header line repeated",
        "empty file",
        "header only",
        "word in a number column",
        "extra field",
        "purchase without click",
        "missing file",
    ],
)
def test_bad_files_fail_with_one_line_naming_file_column_and_line_and_leave_no_cache(tmp_path, case):
    path, needles = bad_ali_files(tmp_path)[case]
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        src = AliCCP(path=str(path)) if path.exists() else _lazy_ali(path)
        load_or_build(src, "ali_ccp", cache, log=False)
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert not cache.exists() or list(cache.iterdir()) == []


def _lazy_ali(path: Path) -> AliCCP:
    """An AliCCP source whose file disappears after construction (the constructor checks the path)."""
    path.write_text("x")
    src = AliCCP(path=str(path))
    path.unlink()
    return src


def test_missing_path_and_missing_files_in_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="dataset.path=<"):
        MovieLens(path="???")
    with pytest.raises(DataError, match="nowhere.*not found"):
        MovieLens(path=str(tmp_path / "nowhere"))
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "u.data").write_text("1\t10\t5\t200\n")
    with pytest.raises(DataError, match=r"ml: no file matching u\.user"):
        MovieLens(path=str(tmp_path / "ml")).build()


def test_headerless_formats_name_the_line_and_the_wrong_delimiter(tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    (folder / "u.data").write_text("1,10,5,200\n")
    with pytest.raises(
        DataError,
        match=r"u\.data: line 1: the file is comma-separated, but this format is "
        r"tab-separated",
    ):
        MovieLens(path=str(folder)).build()
    write_ml100k(folder)
    (folder / "u.user").write_text("id|age|gender|occupation|zip\n1|17|M|student|55455\n2|56|F|other|T8H1N\n")
    with pytest.raises(
        DataError,
        match=r"u\.user: line 1: column 'user_id' has 'id', expected an integer; "
        "this format has no header line",
    ):
        MovieLens(path=str(folder)).build()
    write_ml100k(folder)
    (folder / "u.data").write_text("1\t10\t5\t200\n1\t99\t4\t300\n")
    with pytest.raises(
        DataError,
        match=r"u\.data: line 2: column 'item_id' has id 99, which u\.item "
        "does not",
    ):
        MovieLens(path=str(folder)).build()
    (folder / "u.data").write_text("1\t10\t5\t200\n1\t20\t6\t300\n")
    with pytest.raises(DataError, match=r"u\.data: line 2: column 'rating' has value 6"):
        MovieLens(path=str(folder)).build()


def test_repeated_header_in_text_only_columns(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "b"], [["x", "y"], ["a", "b"], ["z", "w"]])
    with pytest.raises(DataError, match=r"t\.csv: line 3: the header line appears again"):
        read_csv(path, {"a": "cat", "b": "cat"})


# -- MovieLens -------------------------------------------------------------------------------------------
def test_movielens_100k_layout_labels_time_order_and_side_tables(tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    schema, c = MovieLens(path=str(folder), scenario="genre_family", hist_len=2).build()
    # rows sorted by (timestamp, user):
    # (2,20,3,50) (1,20,4,100) (1,10,5,200) (1,30,2,300) (2,30,1,86500) (2,40,5,90000)
    assert c["timestamp"].tolist() == [50, 100, 200, 300, 86500, 90000]
    assert c["like"].tolist() == [0, 1, 1, 0, 0, 1] and c["love"].tolist() == [0, 0, 1, 0, 0, 1]
    assert c["user_id"].tolist() == [1, 0, 0, 0, 1, 1] and c["item_id"].tolist() == [1, 1, 0, 2, 2, 3]
    # user 2: age 56 -> group 6 (56+); user 1: age 17 -> group 0 (under 18); zip region: first character
    assert c["age_bucket"].tolist() == [6, 0, 0, 0, 6, 6]
    # genre families in config order: children, action, thriller, comedy, drama, + other (unknown)
    fam = {10: 3, 20: 1, 30: 0, 40: 5}
    assert c["genre_family"].tolist() == [fam[i] for i in (20, 20, 10, 30, 30, 40)]
    assert schema.scenario_field == "genre_family" and schema.num_scenarios == 6
    g = c["genres"]
    assert g[2].tolist() == [GENRES.index("Comedy"), GENRES.index("Romance"), -1, -1, -1, -1]
    # sessions: one user on one UTC day (user 2's ratings at 50 s and 86,500 s are on different days)
    s = c["session_id"]
    assert s[1] == s[2] == s[3] and len({s[0], s[4], s[5]}) == 2 and s[4] == s[5] and s[0] != s[1]
    # the user's previous movies (item ids), most recent first
    assert c["hist_items"].tolist() == [[-1, -1], [-1, -1], [1, -1], [0, 1], [1, -1], [2, 1]]
    assert schema.time_field == "timestamp" and schema.user_field == "user_id"


def test_movielens_1m_layout_with_double_colon_separator(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::2::5::978300760\n2::1::3::978302109\n1::1::4::978301968\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (folder / "movies.dat").write_bytes(
        "1::Toy Story: The Return (1995)::Animation|Children's|Comedy\n"
        "2::Jumanji (1995)::Adventure|Children's|Fantasy\n".encode("latin1")
    )
    schema, c = MovieLens(path=str(folder), tasks=["like"], scenario="age_bucket").build()
    assert c["timestamp"].tolist() == [978300760, 978301968, 978302109]
    assert c["like"].tolist() == [1, 1, 0] and c["age_bucket"].tolist() == [0, 0, 6]
    assert c["genres"][0][:3].tolist() == [
        GENRES.index("Adventure"),
        GENRES.index("Children's"),
        GENRES.index("Fantasy"),
    ]
    assert schema.feature("release_decade").vocab_size == 1  # both from the 1990s


def test_movielens_real_100k():
    folder = shared_data("movielens-100k")
    schema, c = MovieLens(path=str(folder)).build()
    ratings = np.loadtxt(folder / "u.data", dtype=np.int64)
    assert len(c["like"]) == 100_000
    assert c["like"].sum() == (ratings[:, 2] >= 4).sum() and c["love"].sum() == (ratings[:, 2] == 5).sum()
    assert schema.feature("user_id").vocab_size == 943 and schema.feature("item_id").vocab_size == 1682
    assert (np.diff(c["timestamp"]) >= 0).all()
    # a user's label sequence in time order equals the file's, sorted by timestamp
    u = ratings[ratings[:, 0] == 196]
    u = u[np.argsort(u[:, 3], kind="stable")]
    rows = np.flatnonzero(c["user_id"] == 195)  # raw id 196 -> id 195 (ids 1..943 sorted)
    np.testing.assert_array_equal(c["like"][rows], (u[:, 2] >= 4).astype(np.float32))


# -- Census-Income ---------------------------------------------------------------------------------------
def test_census_income_raw_layout_labels_and_mmoe_split(tmp_path):
    folder = tmp_path / "census"
    folder.mkdir()
    train = [census_line(30, "Never married", "- 50000."), census_line(50, "Divorced", "50000+.", 94)]
    test = [
        census_line(20, "Never married", "50000+."),
        census_line(40, "Widowed", "- 50000."),
        census_line(60, "Never married", "- 50000."),
    ]
    with gzip.open(folder / "census-income.data.gz", "wt") as f:
        f.write("\n".join(train) + "\n")
    (folder / "census-income.test").write_text("\n".join(test) + "\n")
    schema, c = CensusIncome(path=str(folder), scenario="year").build()
    assert c["income"].tolist() == [0, 1, 1, 0, 0] and c["never_married"].tolist() == [1, 0, 1, 0, 1]
    names = [f.name for f in schema.features]
    assert "marital_stat" not in names and "income" not in names and "instance_weight" not in names
    assert schema.scenario_field == "year" and c["year"].tolist() == [1, 0, 1, 1, 1]
    np.testing.assert_array_equal(c["age"], [30, 50, 20, 40, 60])  # cached unscaled ...
    assert schema.feature("age").standardize  # ... and z-scored with training statistics when loaded
    assert c["split_part"][:2].tolist() == [0, 0]
    assert sorted(c["split_part"][2:].tolist()) in ([1, 2, 2], [1, 1, 2])
    (folder / "census-income.test").write_text(census_line(20, "Never married", "50000+") + "\n")
    with pytest.raises(DataError, match=r"census-income\.test: line 1: column 'income' has '50000\+'"):
        CensusIncome(path=str(folder)).build()
    # the scenario field's documented values: a year other than 94 / 95 is an error, not a third scenario
    (folder / "census-income.test").write_text(census_line(20, "Never married", "50000+.", 96) + "\n")
    with pytest.raises(DataError, match=r"census-income\.test: line 1: column 'year' has '96'; expected a survey"):
        CensusIncome(path=str(folder), scenario="year").build()
    CensusIncome(path=str(folder)).build()  # without the year scenario the column is an ordinary feature


@pytest.mark.slow  # parses the 99,762-row real file twice
def test_census_income_real_test_split():
    path = shared_data("census-income-kdd") / "census-income.test.gz"
    schema, c = CensusIncome(path=str(path), scenario="year").build()
    with gzip.open(path, "rt") as f:  # independent parse with the csv module
        rows = [[x.strip() for x in r] for r in csv.reader(f)]
    assert len(c["income"]) == len(rows) == 99_762
    assert c["income"].sum() == sum(r[-1] == "50000+." for r in rows) == 6_186
    assert c["never_married"].sum() == sum(r[7] == "Never married" for r in rows)
    assert np.bincount(c["year"]).tolist() == [49_816, 49_946]
    assert schema.feature("sex").vocab_size == 2


# -- Ali-CCP / AliExpress --------------------------------------------------------------------------------
def test_ali_ccp_funnel_labels_files_and_headerless_files(tmp_path):
    folder = tmp_path / "ali"
    write_csv(folder / "train.csv", ALI_HEADER, ali_rows())
    write_csv(folder / "test.csv", None, [[0, 0, 9, 100, 2, 0.5], [1, 0, 7, 103, 3, 0.5]])  # no header line
    schema, c = AliCCP(path=str(folder)).build()
    assert schema.tasks == ["ctr", "cvr", "ctcvr"] and schema.conditional_tasks == {"cvr": "ctr"}
    # test.csv sorts first among the files
    assert c["ctr"].tolist() == [0, 1, 1, 1, 0, 0]
    np.testing.assert_array_equal(c["cvr"], [np.nan, 0, 1, 0, np.nan, np.nan])
    assert c["ctcvr"].tolist() == [0, 0, 1, 0, 0, 0]
    assert c["split_part"].tolist() == [2, 2, 0, 0, 0, 0]
    assert c["101"].tolist() == [2, 0, 0, 0, 1, 2] and c["205"].tolist() == [0, 3, 0, 1, 0, 2]
    assert schema.scenario_field == "301" and c["301"].tolist() == [1, 2, 0, 1, 2, 0]
    assert schema.feature("D508").kind == "numeric"
    write_csv(folder / "test.csv", None, [[0, 1, 9, 100, 2, 0.5]])
    _, c = AliCCP(path=str(folder), purchase_without_click="ignore").build()
    assert c["ctcvr"][0] == 0 and np.isnan(c["cvr"][0])


def test_ali_ccp_real_samples():
    folder = shared_data("ali-ccp")
    schema, c = AliCCP(path=str(folder), pattern="scenariowiserec_*").build()
    train = c["split_part"] == 0
    assert train.sum() == 100 and len(c["ctr"]) == 200
    assert np.bincount(c["301"][train]).tolist() == [69, 19, 12]  # PROVENANCE: counts 69/19/12
    assert c["ctr"][train].sum() == 7 and np.nanmax(c["cvr"]) == 1
    assert (c["ctcvr"] <= c["ctr"]).all()
    with pytest.raises(DataError, match=r"paddlerec_aitm_test_sample\.csv: line 7: column 'purchase' is 1"):
        AliCCP(path=str(folder), pattern="paddlerec_*").build()


def test_aliexpress_countries_make_the_scenario(tmp_path):
    header = [
        "search_id",
        *(f"categorical_{i}" for i in range(1, 17)),
        *(f"numerical_{i}" for i in range(1, 64)),
        "click",
        "conversion",
    ]

    def rows(seed):
        rng = np.random.default_rng(seed)
        out = []
        for k in range(6):
            click = int(k % 2 == 0)
            cats, nums = rng.integers(0, 5, 16).tolist(), np.round(rng.random(63), 3).tolist()
            out.append([k // 2, *cats, *nums, click, int(click and k == 0)])
        return out

    for country in ("NL", "ES"):
        write_csv(tmp_path / f"AliExpress_{country}" / "train.csv", header, rows(1))
        write_csv(tmp_path / f"AliExpress_{country}" / "test.csv", header, rows(2))
    schema, c = AliExpress(path=str(tmp_path), tasks=["ctr", "cvr", "ctcvr"]).build()
    assert schema.scenario_field == "country" and np.bincount(c["country"]).tolist() == [12, 12]
    assert c["ctr"].sum() == 12 and c["ctcvr"].sum() == 4 and np.isnan(c["cvr"]).sum() == 12
    # sessions: search_id within a country (3 ids per file, shared by train/test of one country)
    assert len(np.unique(c["search_session"])) == 6
    assert schema.session_field == "search_session"
    schema, c = AliExpress(path=str(tmp_path), countries=["nl"]).build()
    assert schema.scenario_field is None and len(c["ctr"]) == 12


def test_aliexpress_real_sample():
    folder = shared_data("aliexpress")
    _, c = AliExpress(path=str(folder)).build()
    train = c["split_part"] == 0
    assert train.sum() == 100 and (~train).sum() == 20
    assert c["ctr"][train].sum() == 60 and c["ctcvr"][train].sum() == 2
    assert c["ctr"][~train].sum() == 10 and c["ctcvr"][~train].sum() == 2


# -- KuaiRand / WeChat / Douban ------------------------------------------------------------------------------
def read_dicts(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_kuairand_fixture_time_order_joins_and_rule_stage():
    folder = FIXTURES / "kuairand"
    schema, c = KuaiRand(path=str(folder), rule_stage="rule_stage").build()
    logs = read_dicts(folder / "log_standard_4_08_to_4_21_pure.csv") + read_dicts(
        folder / "log_standard_4_22_to_5_08_pure.csv"
    )
    logs.sort(key=lambda r: (int(r["time_ms"]), int(r["user_id"])))
    assert len(c["is_click"]) == len(logs) == 64
    assert c["time_ms"].tolist() == [int(r["time_ms"]) for r in logs]
    assert c["long_view"].tolist() == [float(r["long_view"]) for r in logs]
    assert (schema.scenario_field, schema.time_field, schema.item_field) == ("tab", "time_ms", "video_id")
    users = {int(r["user_id"]): r for r in read_dicts(folder / "user_features_pure.csv")}
    degrees = sorted({r["user_active_degree"] for r in users.values()})
    assert [degrees[i] for i in c["user_active_degree"]] == [
        users[int(r["user_id"])]["user_active_degree"] for r in logs
    ]
    # 0 New, 1 Wander, 2 Stick, 3 Loyal, by the rule in the module docstring, per fixture user
    expected = {0: 3, 1: 2, 2: 0, 3: 1, 4: 2, 5: 1, 6: 1, 7: 0}
    assert c["rule_stage"].tolist() == [expected[int(r["user_id"])] for r in logs]
    assert "rule_stage" in schema.analysis_fields and "rule_stage" not in [f.name for f in schema.features]
    _, c = KuaiRand(path=str(folder), logs="all").build()
    assert len(c["is_click"]) == 74 and c["is_rand"].sum() == 10


def test_kuairand_fixture_logs_with_the_real_user_and_video_tables(tmp_path):
    real = shared_data("kuairand-pure")
    for f in (FIXTURES / "kuairand").glob("log_*.csv"):
        shutil.copy(f, tmp_path / f.name)
    for name in ("user_features_pure.csv", "video_features_basic_pure.csv"):
        (tmp_path / name).symlink_to(real / name)
    schema, c = KuaiRand(path=str(tmp_path), version="pure").build()
    assert len(c["is_click"]) == 64
    assert schema.feature("user_active_degree").vocab_size == 9  # the 9 values listed in PROVENANCE
    assert schema.feature("register_days_range").vocab_size == 8


def test_wechat_fixture_day_split_and_feed_join():
    folder = FIXTURES / "wechat"
    schema, c = WeChat(path=str(folder)).build()
    actions = read_dicts(folder / "user_action.csv")
    actions.sort(key=lambda r: int(r["date_"]))  # stable: file order within a day
    assert c["like"].tolist() == [float(r["like"]) for r in actions]
    assert c["date_"].tolist() == [int(r["date_"]) for r in actions]
    assert c["split_part"].tolist() == [
        2 if int(r["date_"]) == 14 else 1 if int(r["date_"]) == 13 else 0 for r in actions
    ]
    feeds = {int(r["feedid"]): r for r in read_dicts(folder / "feed_info.csv")}
    authors = sorted({int(r["authorid"]) for r in feeds.values()})
    assert [authors[i] for i in c["authorid"]] == [int(feeds[int(r["feedid"])]["authorid"]) for r in actions]
    missing = [r["bgm_song_id"] == "" for r in (feeds[int(a["feedid"])] for a in actions)]
    song = schema.feature("bgm_song_id").vocab_size - 1  # the shared id of empty cells
    assert ((c["bgm_song_id"] == song) == np.array(missing)).all()
    assert schema.tasks == ["like", "click_avatar", "forward"] and schema.time_field == "date_"
    with pytest.raises(ConfigError, match="overlap"):
        WeChat(path=str(folder), valid_days=[13], test_days=[13])


def test_wechat_user_side_fields_device_and_history_before_the_row():
    folder = FIXTURES / "wechat"
    schema, c = WeChat(path=str(folder), hist_len=3).build()
    assert WeChat.version == "2"  # device's role changed from context
    assert [f.name for f in schema.features if f.role == "user"] == ["userid", "device", "hist_feeds"]
    hist = schema.feature("hist_feeds")
    assert (hist.kind, hist.max_len, hist.embedding) == ("sequence", 3, "feedid")
    actions = read_dicts(folder / "user_action.csv")
    actions.sort(key=lambda r: int(r["date_"]))  # the loader's time order: day, then file order
    feed_ids = sorted({int(r["feedid"]) for r in actions})
    seen: dict[str, list[int]] = {}
    for i, r in enumerate(actions):  # the user's feeds in the rows before this one, most recent first
        want = seen.get(r["userid"], [])[::-1][:3]
        assert c["hist_feeds"][i].tolist() == [feed_ids.index(f) for f in want] + [-1] * (3 - len(want))
        seen.setdefault(r["userid"], []).append(int(r["feedid"]))
    assert WeChat(path=str(folder)).settings["hist_len"] == 10  # the default, as in configs/dataset/wechat.yaml
    schema, c = WeChat(path=str(folder), hist_len=0).build()
    assert "hist_feeds" not in c and [f.name for f in schema.features if f.role == "user"] == ["userid", "device"]
    with pytest.raises(ConfigError, match="hist_len"):
        WeChat(path=str(folder), hist_len=-1)


def test_douban_real_sample():
    path = shared_data("douban-multidomain") / "douban_sample.csv"
    schema, c = Douban(path=str(path)).build()
    assert len(c["rating"]) == 3000 and c["rating"].sum() == 1936
    assert np.bincount(c["domain"]).tolist() == [364, 2299, 337]  # book, movie, music (sorted)
    assert schema.feature("user_id").vocab_size == 1352 and schema.feature("item_id").vocab_size == 2502
    assert (np.diff(c["time_bin"]) >= 0).all() and schema.scenario_field == "domain"


def test_settings_are_the_config_as_plain_data(tmp_path):
    """``settings`` (the cache key's input) is each dataset config as written, defaults included, whatever
    container types the constructor's defaults use."""
    from omegaconf import OmegaConf

    from mtlbench.data.source import DATASET_KEYS

    for yaml in sorted((Path(__file__).resolve().parents[1] / "configs" / "dataset").glob("*.yaml")):
        cfg = OmegaConf.to_container(compose([f"dataset={yaml.stem}"]).dataset, throw_on_missing=False)  # defaults
        settings = {k: v for k, v in cfg.items() if k not in DATASET_KEYS}
        settings.update({k: str(tmp_path) for k in ("path",) if k in settings})
        settings.update({k: ["y"] for k in ("tasks",) if settings.get(k) == "???"})
        assert check_dataset_settings(cfg["name"], **settings).settings == settings, yaml.name  # every key
    wechat = WeChat(path=str(FIXTURES / "wechat")).settings  # the constructor's tuple defaults
    assert wechat["tasks"] == ["like", "click_avatar", "forward"] and wechat["valid_days"] == [13]
    assert MovieLens(path=str(tmp_path), task_thresholds=None).settings["task_thresholds"] == {"like": 4, "love": 5}
    assert AliExpress(path=str(tmp_path), countries=[]).settings["countries"] is None


@pytest.mark.parametrize("name", ["kuairand", "wechat", "movielens"])
def test_dataset_contract_on_fixtures(tmp_path, name):
    """The dataset contract (mtlbench.testing.check_dataset) on small files in each publisher's layout: settings,
    validated columns, 0/1 labels with both classes, the same columns from a second build, batches MMoE trains on,
    and the dataset's config."""
    path = write_ml100k_random(tmp_path / "ml") if name == "movielens" else FIXTURES / name
    schema, cols = check_dataset(name, path=str(path))
    assert schema.name == name and all(len(cols[t]) == len(cols[schema.tasks[0]]) for t in schema.tasks)


def test_every_real_dataset_is_registered_and_rejects_unknown_settings():
    for name in ("census_income", "movielens", "ali_ccp", "aliexpress", "kuairand", "wechat", "douban"):
        assert name in DATASETS
    with pytest.raises(ConfigError, match="unknown task"):
        CensusIncome(path=str(FIXTURES), tasks=["college"])
    with pytest.raises(ConfigError, match="scenario must be"):
        MovieLens(path=str(FIXTURES), scenario="zip")
    with pytest.raises(ConfigError, match="unknown column"):
        KuaiRand(path=str(FIXTURES), tasks=["is_click", "clicked"])


# -- end to end ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mmoe_trains_on_the_real_census_test_split(tmp_path):
    path = shared_data("census-income-kdd") / "census-income.test.gz"
    out = tmp_path / "run"
    proc = run_cli(
        [
            "dataset=census_income",
            f"dataset.path={path}",
            "dataset.max_rows=20000",
            "model=mmoe",
            *FAST,
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"] == "census_income"
    for task in ("income", "never_married"):
        assert 0.7 < res["metrics"]["test"][task]["auc"] <= 1.0  # both tasks are easy on census


@pytest.mark.slow
def test_movielens_fixture_trains_end_to_end_and_bad_data_exits_with_one_line(tmp_path):
    folder = write_ml100k_random(tmp_path / "ml")
    out = tmp_path / "run"
    proc = run_cli(
        [
            "dataset=movielens",
            f"dataset.path={folder}",
            "model=shared_bottom",
            "dataset.hist_len=2",
            *FAST,
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "results.json").exists()
    (folder / "u.data").write_text("1\t10\t5\t200\n1\t20\tx\t300\n")
    proc = run_cli(
        ["dataset=movielens", f"dataset.path={folder}", *FAST, f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path
    )
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("mtlbench: error:") and "u.data: line 2: column 'rating' has 'x'" in line
    assert not (tmp_path / "bad" / "results.json").exists()
