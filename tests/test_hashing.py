"""Ids never pass through floating point; large vocabularies can be hashed into fixed tables."""

import json
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtlbench.data.hashing import apply_hashing, hash_ids
from mtlbench.data.rows import build_tensors
from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.datasets.table import TableDataset

from conftest import FAST, run_cli

BIG = 2**24  # float32 represents integers exactly only up to here


def test_float32_would_collide_but_ids_stay_distinct_through_the_data_path(tmp_path):
    ids = np.array([BIG, BIG + 1, BIG + 3, 2**40 + 7], dtype=np.int64)
    assert np.float32(ids[0]) == np.float32(ids[1])  # the collision a float path would cause
    path = tmp_path / "big.parquet"
    n = 40
    users = np.resize(ids, n)
    pq.write_table(pa.table({"u": users, "y": np.resize([0.0, 1.0], n)}), path)
    schema, cols = TableDataset(
        path=str(path), tasks=["y"], categorical={"u": {"vocab_size": 0, "role": "user"}}, user_field="u"
    ).build()
    assert cols["u"].dtype == np.int64 and np.array_equal(cols["u"], users)
    schema, cols = apply_hashing(schema, cols, 1000)
    assert schema.feature("u").vocab_size == 1000
    hashed = build_tensors(schema, cols)["categorical"][:, 0].numpy()
    assert len(set(hashed[:4].tolist())) == 4  # 2**24 and 2**24 + 1 stay apart
    assert np.array_equal(hashed[:4], hash_ids(ids, 1000, salt=zlib.crc32(b"u")))


def test_hash_is_a_deterministic_integer_function_that_spreads_ids():
    x = np.arange(200_000, dtype=np.int64) + BIG
    h = hash_ids(x, 1024, salt=7)
    assert np.array_equal(h, hash_ids(x, 1024, salt=7))
    assert not np.array_equal(h, hash_ids(x, 1024, salt=8))
    counts = np.bincount(h, minlength=1024)
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()  # ~ 195 ± 14 per bucket


def test_sequences_hash_with_the_table_they_share_and_keep_padding():
    schema = DatasetSchema(
        "s",
        [
            Feature("item", "categorical", 10**9, "item"),
            Feature("hist", "sequence", max_len=3, embedding="item", role="user"),
        ],
        tasks=["y"],
    )
    cols = {
        "item": np.array([5, BIG + 1]),
        "hist": np.array([[BIG + 1, -1, -1], [5, BIG + 1, -1]]),
        "y": np.array([0.0, 1.0], np.float32),
    }
    schema2, out = apply_hashing(schema, cols, {"item": 64})
    schema2.validate(out)
    assert out["hist"][0, 0] == out["item"][1] and out["hist"][1, 0] == out["item"][0]
    assert (out["hist"][:, 2] == -1).all() and out["hist"][0, 1] == -1


@pytest.mark.slow
def test_cli_trains_with_hashed_ids_above_2_to_the_24(tmp_path):
    rng = np.random.default_rng(0)
    n = 2000
    users = BIG + rng.integers(0, 300, n) * 1_000_003  # ids far beyond float32's exact range
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": users, "t": np.arange(n), "y": rng.integers(0, 2, n).astype(float)}), path)
    out = tmp_path / "run"
    proc = run_cli(
        [
            *FAST,
            "dataset=table",
            f"dataset.path={path}",
            "dataset.tasks=[y]",
            "+dataset.categorical={u: {vocab_size: 0, role: user}}",
            "dataset.user_field=u",
            "dataset.time_field=t",
            "hash_buckets=512",
            "model=shared_bottom",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["params"] < 200_000  # the 2**24+-sized table was hashed into 512 rows
