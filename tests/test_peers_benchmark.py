"""benchmarks/peers.py end to end on a tiny size: mtlbench and the fused loop (peers are optional extras)."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

sys.path.insert(0, str(REPO / "benchmarks"))
import peers  # noqa: E402


def test_generated_data_follows_the_stated_design():
    cols = peers.generate(20_000, seed=1)
    sizes = peers.vocab_sizes()
    assert sizes[0] == 10 and sizes[-1] == 100_000 and len(sizes) == 20
    assert all(a < b for a, b in zip(sizes, sizes[1:]))
    for i, v in enumerate(sizes):
        ids = cols[f"f{i}"]
        assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < v
    # Zipf over 100,000 ids: the most frequent id carries several percent of the rows (uniform: 0.001%)
    counts = np.bincount(cols["f19"], minlength=100_000)
    assert counts.max() > 0.05 * 20_000 and (counts > 0).sum() > 2_000
    for t in peers.TASKS:
        assert set(np.unique(cols[t])) == {0.0, 1.0}
    assert np.array_equal(cols["ts"], np.arange(20_000))
    again = peers.generate(20_000, seed=1)
    assert all(np.array_equal(cols[k], again[k]) for k in cols)


def test_flop_count_matches_a_hand_count():
    # experts 4*(320*256 + 256*128), gates 320*8, mixing 2*4*128, towers 2*(128*64 + 64*1) multiply-adds
    macs = 4 * (320 * 256 + 256 * 128) + 320 * 8 + 2 * 4 * 128 + 2 * (128 * 64 + 64)
    assert peers.flops_per_sample(2048) == pytest.approx(3 * 2 * macs)


def test_script_reports_throughput_memory_and_auc(tmp_path):
    out = tmp_path / "peers.json"
    libs = ["mtlbench", "fused"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "peers.py"),
            "--rows",
            "6000",
            "--libs",
            ",".join(libs),
            "--models",
            "mmoe",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--batch",
            "128",
            "--epochs",
            "2",
            "--max-vocab",
            "1000",
            "--roofline-seconds",
            "0.2",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["rows"] == 6000 and report["train_rows"] == 5400 and report["test_rows"] == 570
    rows = {r["library"]: r for r in report["results"]}
    assert set(rows) == set(libs)
    for lib, r in rows.items():
        assert r["model"] == "mmoe"
        assert r["train_samples"] == 2 * 5400, lib  # 2 epochs over the 90% training rows
        assert r["samples_per_second"] > 0 and r["peak_rss_mb"] > 50
        assert all(0.5 < r["auc"][t] <= 1.0 for t in peers.TASKS), (lib, r["auc"])
    # the same architecture and sizes: mtlbench's MMoE and the fused loop have the same parameter count
    assert rows["mtlbench"]["params"] == rows["fused"]["params"]
    assert rows["fused"]["vs_fused"] == 1.0
    m = report["machine"]
    assert m["flops_per_sample"] == pytest.approx(peers.flops_per_sample(128))
    assert m["roofline_samples_per_second"] == pytest.approx(m["gflops"] * 1e9 / m["flops_per_sample"], rel=1e-6)
    assert "| mtlbench | mmoe |" in proc.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("torch_rechub") is None and importlib.util.find_spec("deepctr_torch") is None,
    reason="no peer library installed",
)
def test_peer_libraries_train_the_same_task(tmp_path):
    libs = [
        x
        for x, mod in (("torch-rechub", "torch_rechub"), ("deepctr-torch", "deepctr_torch"))
        if importlib.util.find_spec(mod) is not None
    ]
    out = tmp_path / "peers.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "peers.py"),
            "--rows",
            "6000",
            "--libs",
            ",".join(libs),
            "--models",
            "mmoe,ple",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--batch",
            "128",
            "--epochs",
            "2",
            "--max-vocab",
            "1000",
            "--no-roofline",
            "--clock",
            "cpu",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["clock"] == "cpu"
    rows = report["results"]
    assert {(r["library"], r["model"]) for r in rows} == {(x, m) for x in libs for m in ("mmoe", "ple")}
    for r in rows:
        assert r["train_samples"] == 2 * 5400 and r["samples_per_second"] > 0
        assert all(0.5 < r["auc"][t] <= 1.0 for t in peers.TASKS), r


def test_peers_train_and_test_on_the_rows_mtlbench_uses():
    from mtlbench.data.splits import global_time_split

    for n in (6000, 200_001, 1_000_000):
        parts = global_time_split(np.arange(n), peers.SPLIT)  # mtlbench's split of the `ts` column
        a, b = peers.split_points(n)
        assert np.array_equal(parts["train"], np.arange(a)) and np.array_equal(parts["test"], np.arange(b, n))
        assert len(parts["valid"]) > 0
