"""Batch inputs by row: gathered from the memory-mapped cache (flat memory) or held resident on a device."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtlbench.data import rows as rows_module
from mtlbench.data.rows import ColumnRows, ResidentRows
from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.training.run import build_datamodule, processes_per_node, train

from conftest import FAST, compose_cfg

SMALL = ["dataset.n_users=60", "dataset.n_rows=3000", "dataset.n_items=80", "model=stan"]


def _loaded(tmp_path, *overrides: str):
    dm = build_datamodule(compose_cfg([*SMALL, f"cache_dir={tmp_path}", *overrides]), ("stan_pseudo_label",))
    dm.load()
    return dm


def test_batches_read_the_mapped_cache_without_a_row_sized_copy(tmp_path):
    dm = _loaded(tmp_path)
    inputs = dm.rows()
    assert isinstance(inputs, ColumnRows)
    # every column a batch reads is a view of the memory-mapped Arrow file, not an array of its own
    for col in [*inputs._categorical, *inputs._numeric, *inputs._labels, *inputs._ids.values()]:
        assert not col.flags.owndata and not col.flags.writeable
    batch = inputs.gather(torch.tensor([5, 0, 2999, 5]))
    assert batch["index"].tolist() == [5, 0, 2999, 5]
    assert torch.equal(batch["categorical"][0], batch["categorical"][3])
    user = dm.schema.user_field
    assert batch["user"].tolist() == dm.columns[user][[5, 0, 2999, 5]].tolist()


def test_resident_rows_give_the_same_batches_as_the_mapped_columns(tmp_path):
    inputs = _loaded(tmp_path).rows()
    resident = inputs.resident("cpu")
    assert isinstance(resident, ResidentRows) and set(resident.keys()) == set(inputs.keys())
    idx = torch.randperm(inputs.n, generator=torch.Generator().manual_seed(0))[:777]
    a, b = inputs.gather(idx), resident.gather(idx)
    assert "stan_pseudo_label" in a and set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True, msg=key)


def test_blocked_statistics_match_one_pass(monkeypatch):
    schema = DatasetSchema(
        "num", [Feature("a", "numeric", standardize=True), Feature("b", "numeric", standardize=True)], tasks=["y"]
    )
    rng = np.random.default_rng(0)
    cols = {"a": rng.normal(3, 2, 5000).astype(np.float32), "b": rng.exponential(1, 5000), "y": np.zeros(5000)}
    train = np.sort(rng.choice(5000, 4000, replace=False))
    one = ColumnRows(schema, cols)
    one.standardize(train)
    monkeypatch.setattr(rows_module, "STATS_BLOCK", 97)  # 42 blocks of training rows
    blocked = ColumnRows(schema, cols)
    blocked.standardize(train)
    x = one.column("numeric")
    torch.testing.assert_close(blocked.column("numeric"), x, rtol=0, atol=1e-6)
    z = (cols["a"][train].astype(np.float64) - cols["a"][train].mean(dtype=np.float64)) / cols["a"][train].std(
        dtype=np.float64
    )
    np.testing.assert_allclose(x[torch.from_numpy(train), 0].numpy(), z, atol=1e-5)


@pytest.mark.slow  # two 2-epoch training runs
def test_resident_and_mapped_runs_give_the_same_numbers(tmp_path):
    """The device-resident path (here on the CPU device) trains to exactly the numbers of the host path."""
    results = {}
    for resident in ("false", "true"):
        cfg = compose_cfg([*SMALL[:3], *FAST, "model=mmoe", "trainer.max_epochs=2", f"resident_data={resident}"])
        train(cfg, tmp_path / resident)
        results[resident] = json.loads((tmp_path / resident / "results.json").read_text())["metrics"]
    assert results["true"] == results["false"] and results["true"]["test"]


@pytest.mark.parametrize(
    "trainer, expected",
    [({"devices": 1}, 1), ({"strategy": "ddp", "devices": 2, "accelerator": "cpu"}, 2), ({"devices": "auto"}, 1)],
)
def test_default_threads_divide_the_usable_cpus_by_the_processes(trainer, expected):
    assert processes_per_node(trainer) == expected
