"""The fast reading of raw Ali-CCP (mtlbench/datasets/ali_ccp_raw.py): every column equal to a straightforward
pure-Python parse of the files (the test fixture and the benchmark's generated data), blocks read through numpy or
through pyarrow's CSV reader giving the same columns, and the 64-bit-word number reading against Python's."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import mtlbench.datasets.ali_ccp_raw as reader
from mtlbench.data.cache import load_or_build
from mtlbench.data.schema import weights_column
from mtlbench.datasets.ali_ccp import AliCCP

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from make_aliccp_raw import write_aliccp_raw  # noqa: E402
from prepare_aliccp_raw import generate  # noqa: E402

SEQ = reader.SEQUENCE_FIELDS


# -- a straightforward reading: Python over lines and entries ------------------------------------------------
def parse(cell: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for e in cell.split("\x01") if cell else []:
        field, rest = e.split("\x02")
        fid, value = rest.split("\x03")
        out.setdefault(field, []).append((int(fid), float(value)))
    return out


def lines(path: Path) -> list[str]:
    return [line.rstrip("\r") for line in path.read_text().splitlines() if line.strip("\r")]


def reference(folder: Path, max_len: int = 20, valid_fraction: float = 0.1, split_seed: int = 0) -> dict:
    """Every column the reader should give (min_count 1), computed row by row."""
    rows, names = [], set()
    for split in ("train", "test"):
        common = {}
        for line in lines(folder / f"common_features_{split}.csv"):
            key, _, cell = line.split(",", 2)
            common[key] = parse(cell)
            names |= set(common[key])
        for line in lines(folder / f"sample_skeleton_{split}.csv"):
            _, click, conversion, key, _, cell = line.split(",", 5)
            own = parse(cell)
            names |= set(own)
            if float(conversion) == 1 and float(click) == 0:
                continue
            rows.append((split, int(float(click)), int(float(conversion)), own, common[key]))
    singles = reader._order(names - set(SEQ))
    out: dict[str, np.ndarray] = {}
    sizes = {}
    for f in singles:  # the row's own first entry, else its common row's; ids in sorted raw-id order
        raw = [(own.get(f) or user.get(f) or [(None, 0.0)])[0][0] for _, _, _, own, user in rows]
        known = sorted({v for v in raw if v is not None})
        if f == reader.SCENARIO_FIELD:
            out[f] = np.array([known.index(v) for v in raw], dtype=np.int32)
            sizes[f] = len(known)
            continue
        ids = {v: i for i, v in enumerate(known)}
        out[f] = np.array([ids.get(v, len(known)) for v in raw], dtype=np.int32)
        sizes[f] = max(1, len(known) + (None in raw))
    for f in [f for f in SEQ if f in names]:  # larger value first, ties by smaller id, max_len of them
        seqs = [sorted(own.get(f) or user.get(f, []), key=lambda e: (-e[1], e[0]))[:max_len] for *_, own, user in rows]
        ids = {v: i for i, v in enumerate(sorted({fid for s in seqs for fid, _ in s}))}
        out[f] = np.array([[ids[fid] for fid, _ in s] + [-1] * (max_len - len(s)) for s in seqs], dtype=np.int32)
        out[weights_column(f)] = np.array([[v for _, v in s] + [0.0] * (max_len - len(s)) for s in seqs], np.float32)
        sizes[f] = max(1, len(ids))
    click = np.array([r[1] for r in rows], dtype=np.float32)
    conversion = np.array([r[2] for r in rows], dtype=np.float32)
    out["ctr"] = click
    out["cvr"] = np.where(click == 1, conversion, np.float32(np.nan)).astype(np.float32)
    out["ctcvr"] = click * conversion
    n_train = sum(r[0] == "train" for r in rows)
    part = np.array([0 if r[0] == "train" else 2 for r in rows], dtype=np.int8)
    part[np.random.default_rng(split_seed).permutation(n_train)[: max(1, round(valid_fraction * n_train))]] = 1
    out["split_part"] = part
    return {"columns": out, "sizes": sizes}


def assert_same(got: tuple, want: dict) -> None:
    schema, columns = got
    assert list(columns) == list(want["columns"])  # names and order
    for name, expected in want["columns"].items():
        assert columns[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(columns[name], expected, err_msg=name)
    assert {f.name: schema.vocab_of(f) for f in schema.features} == want["sizes"]


@pytest.fixture(scope="module")
def fixture_files(tmp_path_factory) -> Path:
    return write_aliccp_raw(tmp_path_factory.mktemp("fixture") / "csv")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """The benchmark's data (realistic sizes of lines, ids and values), 3,000 skeleton lines."""
    folder = tmp_path_factory.mktemp("generated")
    generate(folder, 3000, seed=1)
    return folder


def test_columns_equal_a_pure_python_reading(fixture_files, generated):
    assert_same(AliCCP(path=str(fixture_files)).build(), reference(fixture_files))
    assert_same(AliCCP(path=str(generated)).build(), reference(generated))
    assert_same(AliCCP(path=str(generated), max_len=3).build(), reference(generated, max_len=3))


def test_blocks_read_by_pyarrow_give_the_same_columns(fixture_files, generated, monkeypatch):
    want = {f: AliCCP(path=str(f)).build() for f in (fixture_files, generated)}
    monkeypatch.setattr(reader, "fast_block", lambda *a: None)  # every block through pyarrow's CSV reader
    for folder, (schema, columns) in want.items():
        got_schema, got = AliCCP(path=str(folder)).build()
        assert got_schema.to_dict() == schema.to_dict()
        assert list(got) == list(columns)
        for name, col in columns.items():
            np.testing.assert_array_equal(got[name], col, err_msg=name)


def test_small_blocks_on_threads_or_not_give_the_same_columns(generated, monkeypatch):
    _, want = AliCCP(path=str(generated)).build()
    monkeypatch.setattr(reader, "RAW_BLOCK_SIZE", 4096)  # ~10 skeleton lines a block, handed back in order
    monkeypatch.setattr(reader, "MERGE_ROWS", 100)  # merged by ~10
    monkeypatch.setattr(reader, "SEQUENCE_ROWS", 7)  # common rows' sequences counted and encoded 7 at a time
    for threads in (1, 3):
        monkeypatch.setattr(pa, "cpu_count", lambda n=threads: n)
        _, got = AliCCP(path=str(generated)).build()
        for name, col in want.items():
            np.testing.assert_array_equal(got[name], col, err_msg=f"{threads} thread(s): {name}")


def test_columns_in_populated_memory_are_cached_and_read_back(generated, tmp_path, monkeypatch):
    _, want = AliCCP(path=str(generated)).build()
    monkeypatch.setattr(reader, "POPULATE_BYTES", 0)  # every column in memory mapped at once
    schema, got, _ = load_or_build(AliCCP(path=str(generated)), "ali_ccp", tmp_path / "cache", log=False)
    assert schema.name == "ali_ccp" and list(got) == list(want)
    for name, col in want.items():
        np.testing.assert_array_equal(got[name], col, err_msg=name)


def test_other_forms_of_lines_and_numbers_are_read_by_pyarrow(fixture_files, tmp_path):
    """CRLF line ends, blank lines, no '\\n' at the end, numbers the numpy path does not read (exponents, signs,
    17+ digits, 16+ characters): those blocks go to pyarrow, and the columns still equal Python's reading."""
    folder = tmp_path / "odd"
    folder.mkdir()
    for f in fixture_files.iterdir():
        text = f.read_text()
        if f.name == "common_features_train.csv":
            text = text.replace("\x031.0\x01", "\x031e0\x01", 3).replace(
                "\x030.69315", "\x03+0.69314718055994530941", 2
            )
            text = text.replace("\n", "\r\n", 5)
        if f.name == "sample_skeleton_train.csv":
            text = text.replace("\x031.0\x01", "\x03.5e1\x01", 2).replace("\x02", "\x02000", 4).replace("\n", "\n\n", 1)
        if f.name == "sample_skeleton_test.csv":
            text = text.replace("\x029351665", "\x0200000000009351665", 2).rstrip("\n")  # 17 digits; no last \\n
        (folder / f.name).write_text(text)
    fast = []
    monkeypatch = pytest.MonkeyPatch()
    real = reader.fast_block
    monkeypatch.setattr(reader, "fast_block", lambda *a: fast.append(real(*a)) or fast[-1])
    try:
        got = AliCCP(path=str(folder)).build()
    finally:
        monkeypatch.undo()
    assert any(p is None for p in fast) and any(p is not None for p in fast)
    assert_same(got, reference(folder))


# -- reading numbers from 64-bit words ------------------------------------------------------------------------
def block_of(cells: list[str]) -> np.ndarray:
    text = "".join(f"k{i},1,{cell}\n" for i, cell in enumerate(cells)).encode()
    return np.concatenate([np.zeros(16, np.uint8), np.frombuffer(text, np.uint8), np.zeros(16, np.uint8)])


def test_ids_and_values_read_from_words_equal_python(monkeypatch):
    rng = random.Random(0)
    ids = [
        rng.choice(["0", "7", "00012"]) if i % 50 == 0 else str(rng.randrange(10 ** rng.randrange(1, 17)))
        for i in range(3000)
    ]
    values = []
    for _ in range(3000):
        digits = rng.randrange(1, 15)
        text = "".join(rng.choice("0123456789") for _ in range(digits))
        dot = rng.randrange(0, digits) if digits > 1 else 0
        values.append(text[:dot] + "." + text[dot:] if dot else text)
    cells = [f"109_14\x02{i}\x03{v}" for i, v in zip(ids, values)]
    parsed = reader.fast_block(block_of(cells), False, reader.FieldCodes(), reader.GrowingKeys(1 << 16), 1)
    assert parsed is not None
    got_ids, got_values = parsed.seqs["109_14"]
    assert got_ids[:, 0].tolist() == [int(i) for i in ids]
    assert got_values[:, 0].tolist() == [float(np.float32(float(v))) for v in values]
    # the float64 before the cast: exactly Python's (correctly rounded) reading
    buf = block_of(cells)
    text = "".join(f"k{i},1,{c}\n" for i, c in enumerate(cells))
    ends = np.array([m for m in range(len(text)) if text[m] == "\n"])
    starts = ends - np.array([len(v) for v in values])
    digits = reader._values_of(buf[16:-16], reader._words(buf), starts, ends)
    assert digits is not None
    assert digits.decimals(np.arange(len(values))).tolist() == [float(v) for v in values]


@pytest.mark.parametrize(
    "cell",
    [
        "109_14\x021\x031e5",
        "109_14\x02-1\x031.0",
        "109_14\x021\x03.5",
        "109_14\x021\x03.",
        "109_14\x021\x03a",
        "109_14\x021\x03/",
        "109_14\x021\x035.",
        "109_14\x021\x031.2.3",
        "109_14\x021\x03+1",
        "109_14\x021\x03 1",
        "109_14\x0212345678901234567\x031",
        "109_14\x021\x031234567890123456",
        "109_14\x021\x03nan",
        "\x021\x031.0",
        "109_14\x02\x031.0",
        "109_14\x021\x03",
        "109_14\x021\x031.0\x01",
        "a_long_field\x021\x031.0",
        "109_14\x021x\x031.0",
        "109_14\u00e9\x021\x031.0",
    ],
)
def test_the_numpy_path_leaves_other_forms_to_pyarrow(cell):
    assert reader.fast_block(block_of([cell]), False, reader.FieldCodes(), reader.GrowingKeys(16), 20) is None
    assert reader.fast_block(block_of(["109_14\x021\x031.0"]), False, reader.FieldCodes(), reader.GrowingKeys(16), 20)


def test_key_index_finds_exactly_the_known_keys():
    rng = np.random.default_rng(0)
    for n in (1, 5, 30, 300, 5000):
        keys = np.unique(rng.integers(0, 2**64 - 1, n, dtype=np.uint64))
        index = reader.KeyIndex(keys)
        probe = np.concatenate([keys, rng.integers(0, 2**64 - 1, 1000, dtype=np.uint64), np.zeros(1, np.uint64)])
        want = np.array([np.searchsorted(keys, k) if k in set(keys.tolist()) else -1 for k in probe.tolist()])
        np.testing.assert_array_equal(index(probe), want)
