"""Integrity of cache entries: a damaged entry is named in one warning and rebuilt, never used as it is.

The faults are produced on a written entry's files: bytes overwritten in the middle of ``data.arrow``, the file
truncated, ``schema.json`` edited, ``meta.json`` cut short.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest

from mtlbench.data.cache import checksum, load_or_build, verify_entry
from mtlbench.datasets.lifecycle import LifecycleSimulator

SETTINGS = {"n_users": 60, "n_items": 80, "n_rows": 3000}


def _prepare(tmp_path):
    schema, columns, path = load_or_build(LifecycleSimulator(**SETTINGS), "lifecycle", tmp_path, log=False)
    return schema, {k: np.array(v) for k, v in columns.items()}, path


def _overwrite_middle(path):
    data = path / "data.arrow"
    raw = bytearray(data.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(b ^ 0xFF for b in raw[mid : mid + 64])
    data.write_bytes(bytes(raw))


def _truncate(path):
    data = path / "data.arrow"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def _edit_schema(path):
    schema = json.loads((path / "schema.json").read_text())
    schema["name"] = "edited"
    (path / "schema.json").write_text(json.dumps(schema, indent=1))


def _cut_meta(path):
    meta = (path / "meta.json").read_text()
    (path / "meta.json").write_text(meta[: len(meta) // 2])


@pytest.mark.parametrize("damage", [_overwrite_middle, _truncate, _edit_schema, _cut_meta])
def test_a_damaged_entry_is_named_and_rebuilt(damage, tmp_path, caplog):
    schema, columns, path = _prepare(tmp_path)
    assert verify_entry(path) is None
    damage(path)
    assert verify_entry(path) is not None
    with caplog.at_level(logging.WARNING, logger="mtlbench"):
        schema2, columns2, path2 = load_or_build(LifecycleSimulator(**SETTINGS), "lifecycle", tmp_path, log=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "rebuilding" in warnings[0], warnings
    assert "\n" not in warnings[0]
    assert path2 == path and schema2 == schema
    for k, v in columns.items():  # the rebuilt data, not the damaged file's
        np.testing.assert_array_equal(columns2[k], v, err_msg=k)
    assert verify_entry(path) is None  # the entry on disk is whole again
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # the damaged copy is gone


def test_an_intact_entry_is_used_without_rebuilding(tmp_path, caplog):
    _, columns, path = _prepare(tmp_path)
    built = (path / "data.arrow").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="mtlbench"):
        _, again, _ = load_or_build(LifecycleSimulator(**SETTINGS), "lifecycle", tmp_path)
    assert not [r for r in caplog.records if "prepared" in r.getMessage() or r.levelno >= logging.WARNING]
    assert (path / "data.arrow").stat().st_mtime_ns == built
    assert not again["click"].flags.writeable  # still the memory-mapped file


def test_the_checksum_reads_a_bounded_sample_of_a_large_file(tmp_path):
    folder = tmp_path / "entry"
    folder.mkdir()
    (folder / "schema.json").write_text("{}")
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 64 << 20, dtype=np.uint8)  # 64 MiB
    (folder / "data.arrow").write_bytes(data.tobytes())
    start = time.perf_counter()
    first = checksum(folder)
    assert time.perf_counter() - start < 0.5  # 4 MiB read, not 64
    # a change in a sampled block (the first, the last, one between) is seen; the sizes catch any truncation
    for offset in (10, (64 << 20) - 10, (64 << 20) // 63 * 5 + 100):
        changed = data.copy()
        changed[offset] ^= 1
        (folder / "data.arrow").write_bytes(changed.tobytes())
        assert checksum(folder)["data_blocks"] != first["data_blocks"], offset
