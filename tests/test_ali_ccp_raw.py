"""Ali-CCP in Tianchi's raw layout (mtlbench/datasets/ali_ccp_raw.py): the join, the fields, the behaviour
sequences with their counts, the scenarios, the official split, the dropped rows and every input error, checked
against an independent pure-Python reading of the synthetic fixture (tests/fixtures/make_aliccp_raw.py)."""

from __future__ import annotations

import json
import logging
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mtlbench.cli.data import main
from mtlbench.data.cache import load_or_build
from mtlbench.data.rows import build_tensors
from mtlbench.data.schema import DatasetSchema, Feature, weights_column
from mtlbench.data.splits import make_splits, resolve_method
from mtlbench.datasets.ali_ccp import AliCCP
from mtlbench.datasets.ali_ccp_raw import SEQUENCE_FIELDS, find_raw
from mtlbench.errors import DataError

from conftest import FAST, run_cli

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_aliccp_raw import ORPHAN_LINE, SCENARIO_VALUES, pack_archives, write_aliccp_raw  # noqa: E402

USER = ["101", "121", "122", "124", "125", "126", "127", "128", "129"]
ITEM = ["205", "206", "207", "210", "216"]
CONTEXT = ["508", "509", "702", "853", "301"]


# -- an independent reading of the raw files ---------------------------------------------------------------
def entries(cell: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for e in cell.split("\x01") if cell else []:
        field, rest = e.split("\x02")
        fid, value = rest.split("\x03")
        out.setdefault(field, []).append((int(fid), float(value)))
    return out


def oracle(folder: Path, max_len: int = 20) -> list[dict]:
    """Every kept skeleton row (train file, then test file) as {split, click, conversion, fields, seqs}."""
    rows = []
    for split in ("train", "test"):
        common = {}
        for line in (folder / f"common_features_{split}.csv").read_text().splitlines():
            key, _, cell = line.split(",", 2)
            common[key] = entries(cell)
        for line in (folder / f"sample_skeleton_{split}.csv").read_text().splitlines():
            _, click, conversion, key, _, cell = line.split(",", 5)
            if conversion == "1" and click == "0":
                continue
            own, user = entries(cell), common[key]
            fields = {f: (own.get(f) or user.get(f) or [(None, 0)])[0][0] for f in USER + ITEM + CONTEXT}
            seqs = {
                f: sorted(own.get(f) or user.get(f, []), key=lambda e: (-e[1], e[0]))[:max_len] for f in SEQUENCE_FIELDS
            }
            rows.append(
                {"split": split, "click": int(click), "conversion": int(conversion), "fields": fields, "seqs": seqs}
            )
    return rows


def vocab(values) -> dict:
    """Raw id -> id: sorted raw ids, then one shared id for 'absent' (None)."""
    known = sorted({v for v in values if v is not None})
    out = {v: i for i, v in enumerate(known)}
    out[None] = len(known)
    return out


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return write_aliccp_raw(tmp_path_factory.mktemp("aliccp") / "csv")


@pytest.fixture(scope="module")
def built(raw):
    return AliCCP(path=str(raw)).build()


def lines_of(path: Path) -> list[str]:
    return path.read_text().split("\n")


def edit(path: Path, line: int, fn) -> None:
    lines = lines_of(path)
    lines[line - 1] = fn(lines[line - 1])
    path.write_text("\n".join(lines))


# -- reading ------------------------------------------------------------------------------------------------
def test_the_raw_folder_is_detected_and_other_paths_keep_the_processed_reader(raw, tmp_path):
    layout = find_raw(raw)
    assert layout["train"].skeleton.path == raw / "sample_skeleton_train.csv" and layout["test"].archive is None
    assert find_raw(tmp_path) is None and find_raw(raw / "sample_skeleton_train.csv") is None
    (tmp_path / "sample_skeleton_train.csv").write_text("1,0,0,k,1,301\x029351665\x031.0\n")
    with pytest.raises(DataError, match=r"common_features_train\.csv: file not found"):
        find_raw(tmp_path)
    (tmp_path / "common_features_train.csv").write_text("k,0,\n")
    with pytest.raises(DataError, match=r"needs the test split too: sample_skeleton_test\.csv"):
        find_raw(tmp_path)


def test_fields_roles_and_ids_follow_the_raw_files(raw, built):
    schema, c = built
    want = oracle(raw)
    assert len(c["ctr"]) == len(want) == 449  # 300 + 150 skeleton lines, one dropped
    assert [f.name for f in schema.categorical] == USER + ITEM + CONTEXT
    assert [f.name for f in schema.sequences] == list(SEQUENCE_FIELDS)
    assert {f.role for f in schema.features if f.name in USER + list(SEQUENCE_FIELDS)} == {"user"}
    assert {f.role for f in schema.features if f.name in ITEM} == {"item"}
    assert {f.role for f in schema.features if f.name in CONTEXT} == {"context"}
    assert (schema.user_field, schema.item_field, schema.scenario_field) == ("101", "205", "301")
    for f in USER + ITEM + CONTEXT[:-1]:
        ids = vocab(r["fields"][f] for r in want)
        assert c[f].tolist() == [ids[r["fields"][f]] for r in want], f
        assert schema.feature(f).vocab_size == len(ids) - (None not in [r["fields"][f] for r in want]), f
    # 124 (user side) and 216 (item side) are missing on some rows: one shared id, the last
    assert c["124"].max() == schema.feature("124").vocab_size - 1 and (c["124"] == c["124"].max()).sum() > 0
    assert (c["216"] == schema.feature("216").vocab_size - 1).sum() == sum(r["fields"]["216"] is None for r in want)
    # 210 is listed 1-3 times per row: the first entry counts
    assert schema.feature("210").vocab_size == 20


def test_sequences_most_frequent_first_padded_with_their_counts(raw):
    schema, c = AliCCP(path=str(raw), max_len=4).build()
    want = oracle(raw, max_len=4)
    ties = 0
    for f in SEQUENCE_FIELDS:
        feat = schema.feature(f)
        assert (feat.kind, feat.max_len, feat.weights, feat.role) == ("sequence", 4, True, "user")
        ids = vocab(fid for r in want for fid, _ in r["seqs"][f])
        assert feat.vocab_size == len(ids) - 1
        ids_col, w = c[f], c[weights_column(f)]
        assert ids_col.shape == w.shape == (len(want), 4) and w.dtype == np.float32
        for i, r in enumerate(want):
            seq = r["seqs"][f]
            assert ids_col[i].tolist() == [ids[fid] for fid, _ in seq] + [-1] * (4 - len(seq))
            np.testing.assert_allclose(w[i], [v for _, v in seq] + [0.0] * (4 - len(seq)), rtol=1e-6)
            ties += sum(a[1] == b[1] for a, b in zip(seq, seq[1:]))
    assert ties > 50  # tied counts are ordered by id (checked above)
    assert (c["109_14"] == -1).any() and (c["109_14"] >= 0).all(axis=1).any()  # padded and truncated rows
    tensors = build_tensors(schema, c)
    assert tensors["seqw:109_14"].shape == tensors["seq:109_14"].shape
    assert tensors["seqw:109_14"].dtype.is_floating_point


def test_labels_and_the_dropped_conversion_without_click(raw, built, caplog):
    schema, c = built
    want = oracle(raw)
    assert c["ctr"].tolist() == [r["click"] for r in want]
    assert c["ctcvr"].tolist() == [r["click"] * r["conversion"] for r in want]
    cvr = c["cvr"]
    assert np.isnan(cvr[c["ctr"] == 0]).all() and cvr[c["ctr"] == 1].tolist() == [
        r["conversion"] for r in want if r["click"]
    ]
    assert 0 < c["ctcvr"].sum() < c["ctr"].sum()
    assert schema.conditional_tasks == {"cvr": "ctr"}
    assert schema.task_roles == {"click": "ctr", "conversion": "ctcvr", "conversion_given_click": "cvr"}
    assert schema.stats == {"skeleton_rows": 450, "dropped_conversion_without_click": 1}
    with caplog.at_level(logging.WARNING):
        AliCCP(path=str(raw), max_rows=10).build()
    assert (
        f"dropped 1 skeleton row(s) with conversion=1 and click=0 (first: {raw / 'sample_skeleton_train.csv'}: "
        f"line {ORPHAN_LINE})" in caplog.text
    )


def test_scenarios_map_the_three_301_ids(raw, built):
    schema, c = built
    want = oracle(raw)
    assert list(SCENARIO_VALUES) == sorted(SCENARIO_VALUES)  # discovered ids: scenario = ascending raw-id order
    assert c["301"].tolist() == [SCENARIO_VALUES.index(r["fields"]["301"]) for r in want]
    assert schema.num_scenarios == 3 and schema.scenario_labels == ["B1", "B2", "B3"]
    assert set(c["301"][c["split_part"] == 2]) == {0, 1, 2}
    order = [SCENARIO_VALUES[2], SCENARIO_VALUES[0], SCENARIO_VALUES[1]]
    _, c2 = AliCCP(path=str(raw), scenario_values=order).build()
    assert c2["301"].tolist() == [order.index(r["fields"]["301"]) for r in want]
    with pytest.raises(
        DataError,
        match=r"field 301 has value 9351667, not one of dataset.scenario_values "
        r"\[9351665, 9351666\]",
    ):
        AliCCP(path=str(raw), scenario_values=[9351665, 9351666]).build()


def test_official_split_test_file_and_a_seeded_validation_carve(raw, built):
    schema, c = built
    part = c["split_part"]
    assert (part[-150:] == 2).all() and (part[:-150] != 2).all()  # the test file's rows, after the train file's
    assert (part == 1).sum() == round(0.1 * 299)
    assert resolve_method(schema, "auto") == "column:split_part" and schema.auto_split == "column:split_part"
    splits = make_splits(schema, c, "auto")
    assert {k: len(v) for k, v in splits.items()} == {"train": 269, "valid": 30, "test": 150}
    _, again = AliCCP(path=str(raw)).build()
    assert (again["split_part"] == part).all()  # deterministic
    _, other = AliCCP(path=str(raw), split_seed=1).build()
    assert (other["split_part"] == 2).sum() == 150 and (other["split_part"] != part).any()
    _, more = AliCCP(path=str(raw), valid_fraction=0.25).build()
    assert (more["split_part"] == 1).sum() == round(0.25 * 299)
    assert make_splits(schema, c, "random", (0.5, 0.25, 0.25))["test"].size == 113  # other methods still apply


def test_archives_and_split_subfolders_read_the_same(raw, built, tmp_path):
    _, want = built
    tar = write_aliccp_raw(tmp_path / "tar", form="tar")  # train: skeleton member first; test: common first
    dirs = write_aliccp_raw(tmp_path / "dirs", form="dirs")
    assert sorted(p.name for p in tar.iterdir()) == ["sample_test.tar.gz", "sample_train.tar.gz"]
    assert find_raw(tar)["train"].archive == tar / "sample_train.tar.gz"
    assert find_raw(dirs)["test"].skeleton.path == dirs / "test" / "sample_skeleton_test.csv"
    for folder in (tar, dirs):
        schema, got = AliCCP(path=str(folder)).build()
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{folder.name}: {k}")


def test_lines_longer_than_a_block_are_read_whole(raw, built, tmp_path, monkeypatch):
    import mtlbench.datasets.ali_ccp_raw as reader

    monkeypatch.setattr(reader, "RAW_BLOCK_SIZE", 300)  # common-features lines are ~1 KB, skeleton lines ~200 B
    tar = write_aliccp_raw(tmp_path / "tar", form="tar")
    for folder in (raw, tar):
        _, got = AliCCP(path=str(folder)).build()
        for k, v in built[1].items():
            np.testing.assert_array_equal(got[k], v, err_msg=f"{folder.name}: {k}")


def test_max_rows_and_fields_given_in_the_skeleton(raw, tmp_path):
    _, c = AliCCP(path=str(raw), max_rows=50).build()
    assert len(c["ctr"]) == 99 and (c["split_part"] == 2).sum() == 50
    folder = write_aliccp_raw(tmp_path / "own")
    skeleton = folder / "sample_skeleton_train.csv"
    # line 2 brings its own user field 124 and behaviour 109_14: they win over its common-features row
    edit(skeleton, 2, lambda s: s + "\x01124\x02777\x031.0\x01109_14\x02999\x032.0\x01109_14\x02998\x032.0")
    schema, c = AliCCP(path=str(folder)).build()
    assert c["124"][1] == 0  # 777: the smallest raw id of 124
    assert c["109_14"][1].tolist() == [0, 1] + [-1] * 18  # 998 then 999 (the smallest raw ids; tied counts)
    assert c["109_14:weights"][1, :2].tolist() == [2.0, 2.0]
    assert c["109_14"][0].tolist() != c["109_14"][1].tolist()  # line 1 keeps its user's sequence


# -- errors: one line naming the file, the line and the value; nothing cached ----------------------------
def _fail(folder: Path, cache: Path, **settings) -> str:
    with pytest.raises(DataError) as e:
        load_or_build(AliCCP(path=str(folder), **settings), "ali_ccp", cache, log=False)
    assert not cache.exists() or list(cache.iterdir()) == []
    msg = str(e.value)
    assert "\n" not in msg
    return msg


BAD_CASES = {
    "unknown key": (
        "sample_skeleton_train.csv",
        5,
        lambda s: ",".join(s.split(",")[:3] + ["ffffffffffffffff"] + s.split(",")[4:]),
        "sample_skeleton_train.csv: line 5: common_feature_index 'ffffffffffffffff' has no row in ",
    ),
    "missing \\x02": (
        "sample_skeleton_train.csv",
        3,
        lambda s: s.replace("\x02", "", 1),
        "sample_skeleton_train.csv: line 3: malformed feature_list: entry '",
    ),
    "missing \\x03": (
        "sample_skeleton_test.csv",
        7,
        lambda s: s.replace("\x03", "", 1),
        "sample_skeleton_test.csv: line 7: malformed feature_list: entry '",
    ),
    "non-numeric value": (
        "common_features_train.csv",
        2,
        lambda s: s.replace("\x031.0", "\x03abc", 1),
        "common_features_train.csv: line 2: malformed feature_list: entry '",
    ),
    "non-integer id": (
        "sample_skeleton_train.csv",
        9,
        lambda s: s.replace("\x02", "\x027x", 1),
        "sample_skeleton_train.csv: line 9: malformed feature_list: entry '",
    ),
    "label": (
        "sample_skeleton_train.csv",
        4,
        lambda s: ",".join(s.split(",")[:1] + ["2"] + s.split(",")[2:]),
        "sample_skeleton_train.csv: line 4: column 'click' has value '2'; labels must be 0 or 1",
    ),
    "unknown 301": (
        "sample_skeleton_test.csv",
        6,
        lambda s: s.replace("301\x02935166", "301\x028935166", 1),
        "sample_skeleton_test.csv: line 6: field 301 has value 893516",
    ),
    "no 301": (
        "sample_skeleton_test.csv",
        10,
        lambda s: (
            s.rsplit(",", 1)[0]
            + ","
            + "\x01".join(e for e in s.rsplit(",", 1)[1].split("\x01") if not e.startswith("301\x02"))
        ),
        "sample_skeleton_test.csv: line 10: the row has no field 301 (the scenario)",
    ),
    "duplicate key": (
        "common_features_test.csv",
        3,
        lambda s: s,  # replaced below by line 2's key
        "common_features_test.csv: line 3: common_feature_index ",
    ),
    "fields": (
        "sample_skeleton_train.csv",
        11,
        lambda s: s.rsplit(",", 1)[0],
        "sample_skeleton_train.csv: line 11: 5 comma-separated fields where the format has 6",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_naming_file_line_and_value(case, tmp_path):
    name, line, fn, expected = BAD_CASES[case]
    folder = write_aliccp_raw(tmp_path / "raw")
    if case == "duplicate key":
        key = lines_of(folder / name)[1].split(",")[0]
        fn = lambda s: key + s[16:]  # noqa: E731
    edit(folder / name, line, fn)
    msg = _fail(folder, tmp_path / "cache")
    assert expected in msg, msg
    if case.startswith("missing") or case.startswith("non-"):
        assert "\\x0" in msg  # the entry is shown with its separators escaped
    if case == "non-numeric value":
        assert "value 'abc' is not a finite number" in msg
    if case == "non-integer id":
        assert "is not a non-negative integer" in msg
    if case == "unknown 301":  # the files' three ids are known by then (the train file holds all three)
        assert "a 4th distinct value; Ali-CCP's field 301 has 3 ([9351665, 9351666, 9351667] so far)" in msg
    if case == "duplicate key":
        assert "appears again (first on line 2)" in msg


def test_errors_inside_archives_name_the_member(tmp_path):
    folder = write_aliccp_raw(tmp_path / "csv")
    edit(folder / "sample_skeleton_train.csv", 12, lambda s: s.replace("\x03", "", 1))
    archives = pack_archives(folder, tmp_path / "tar")
    msg = _fail(archives, tmp_path / "cache")
    assert f"{archives / 'sample_train.tar.gz'}:sample_skeleton_train.csv: line 12: malformed feature_list" in msg
    good = write_aliccp_raw(tmp_path / "good", form="tar")
    (good / "sample_test.tar.gz").write_bytes(b"not a gzip file")
    assert f"{good / 'sample_test.tar.gz'}: cannot read the archive" in _fail(good, tmp_path / "cache")
    with tarfile.open(good / "sample_test.tar.gz", "w:gz") as tar:  # no common features in it
        tar.add(folder / "sample_skeleton_test.csv", "sample_skeleton_test.csv")
    msg = _fail(good, tmp_path / "cache")
    assert f"{good / 'sample_test.tar.gz'}: the archive has no common_features_test.csv" in msg


def test_the_command_reports_a_bad_file_in_one_line_and_exit_2(tmp_path, capsys):
    folder = write_aliccp_raw(tmp_path / "raw")
    edit(folder / "sample_skeleton_test.csv", 3, lambda s: s.replace("\x02935166", "\x02135166", 1))
    cache = tmp_path / "cache"
    with pytest.raises(SystemExit) as e:
        main(["prepare", "ali_ccp", f"path={folder}", f"cache_dir={cache}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "sample_skeleton_test.csv: line 3: field 301" in err
    assert not cache.exists() or list(cache.iterdir()) == []


# -- schema / describe / training ---------------------------------------------------------------------------
def test_weights_columns_are_validated():
    seq = Feature("s", "sequence", 5, "user", max_len=3, weights=True)
    schema = DatasetSchema("d", [Feature("u", "categorical", 2, "user"), seq], ["y"])
    cols = {"u": np.zeros(2, np.int64), "s": np.full((2, 3), -1, np.int64), "y": np.zeros(2, np.float32)}
    with pytest.raises(DataError, match=r"missing column\(s\) \['s:weights'\]"):
        schema.validate(cols)
    with pytest.raises(DataError, match="must hold finite float32 weights of shape"):
        schema.validate({**cols, "s:weights": np.zeros((2, 2), np.float32)})
    schema.validate({**cols, "s:weights": np.zeros((2, 3), np.float32)})
    bad = np.zeros((2, 3), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="must hold finite float32 weights; row 1 has a non-finite one"):
        schema.validate({**cols, "s:weights": bad})
    with pytest.raises(DataError, match="has weights but is not a sequence"):
        DatasetSchema("d", [Feature("u", "categorical", 2, weights=True)], ["y"])


def test_describe_lists_the_behaviour_sequences_and_the_dropped_rows(raw, tmp_path, capsys):
    args = ["describe", "ali_ccp", f"path={raw}", f"cache_dir={tmp_path / 'cache'}"]
    assert main([*args, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    seqs = [f for f in d["features"] if f["kind"] == "sequence"]
    assert [(f["name"], f["role"], f["max_len"]) for f in seqs] == [(n, "user", 20) for n in SEQUENCE_FIELDS]
    assert d["split"] == {"method": "auto", "resolved": "column:split_part", "ratios": [0.8, 0.1, 0.1]}
    assert d["splits"] == {"train": 269, "valid": 30, "test": 150} and d["rows"] == 449
    assert d["stats"] == {"skeleton_rows": 450, "dropped_conversion_without_click": 1}
    assert d["scenario"]["labels"] == ["B1", "B2", "B3"] and sum(d["scenario"]["rows"]) == 449
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "splits (auto -> column:split_part" in out and "dropped_conversion_without_click 1" in out
    assert re.search(r"\n  109_14 +sequence +\d+  user max_len=20\n", out)
    assert "scenarios (301): 3 (B1, B2, B3)" in out
    assert "task roles: click=ctr, conversion=ctcvr, conversion_given_click=cvr" in out
    assert main(["prepare", "ali_ccp", f"path={raw}", f"cache_dir={tmp_path / 'cache'}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["dropped_conversion_without_click"] == 1


@pytest.mark.slow
def test_sfpnet_trains_on_the_raw_layout_from_the_command_line(raw, tmp_path):
    out = tmp_path / "run"
    fast = [a for a in FAST if not a.startswith("batch_size=")]
    proc = run_cli(
        [
            "model=sfpnet",
            "dataset=ali_ccp",
            f"dataset.path={raw}",
            "tasks=[ctr]",
            *fast,
            "batch_size=64",
            "eval_batch_size=256",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == "sfpnet" and list(res["metrics"]["test"]) == ["ctr"]
    assert 0.0 < res["metrics"]["test"]["ctr"]["auc"] < 1.0
    assert res["scenario_labels"] == ["B1", "B2", "B3"]
