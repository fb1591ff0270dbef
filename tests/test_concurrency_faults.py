"""Concurrency: processes that prepare one cache entry at once, and a sweep launched twice into one directory.

The faults are produced with real processes started together: four that wait for a start file and then prepare
the same dataset entry in the same instant, and two ``mtlbench -m`` sweeps launched at once with the same sweep
directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow  # every test starts several processes that import and run mtlbench

#: waits for the start file, prepares the lifecycle entry, prints what it read
PREPARE = """
import hashlib, json, logging, os, sys, time
from pathlib import Path
from mtlbench.data.cache import load_or_build
from mtlbench.datasets.lifecycle import LifecycleSimulator
from mtlbench.log import to_stderr

to_stderr(logging.INFO)
source = LifecycleSimulator(n_users=60, n_items=80, n_rows=3000)
build = source.build

def slow_build():  # a build that takes a moment, as real ones do: all four are inside it together
    time.sleep(1.0)
    return build()

source.build = slow_build
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
schema, columns, path = load_or_build(source, "lifecycle", sys.argv[1])
digest = hashlib.sha256(b"".join(columns[k].tobytes() for k in sorted(columns))).hexdigest()
print(json.dumps({"path": str(path), "digest": digest}))
"""


def test_four_processes_preparing_one_entry_build_it_once_and_all_read_it(tmp_path):
    cache, go = tmp_path / "cache", tmp_path / "go"
    script = tmp_path / "prepare.py"
    script.write_text(PREPARE)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(cache), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(0.5)
    while any(p.poll() is None for p in procs) and not go.exists():
        go.touch()  # after every process has imported (they poll for it)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outs]
    read = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert len({r["path"] for r in read}) == 1 and len({r["digest"] for r in read}) == 1
    built = sum(err.count("prepared lifecycle") for _, err in outs)
    assert built == 1, [err for _, err in outs]  # one process built; three waited and read its entry
    assert sorted(p.name for p in cache.iterdir()) == [Path(read[0]["path"]).name]  # no temporary or lock files


SWEEP = [
    "-m",
    "seed=0,1",
    "dataset.n_rows=3000",
    "dataset.n_users=60",
    "dataset.n_items=80",
    "trainer.max_epochs=1",
    "batch_size=256",
    "threads=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def test_a_sweep_launched_twice_at_once_runs_each_job_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "mtlbench.cli.train", *SWEEP, f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    reused = sum(err.count("skipped (reused)") for _, err in outs)
    assert reused == 2, [err[-3000:] for _, err in outs]  # each job trained by one launch, reused by the other
    results = sorted(sweep.glob("*/results.json"))
    assert len(results) == 2
    for path in results:
        r = json.loads(path.read_text())  # complete, valid JSON
        assert r["metrics"]["test"] and r["seed"] in (0, 1)
    for job in sweep.glob("*_seed*"):
        assert not list(job.glob("checkpoints/.*")) and not (job / ".lock").exists()


def test_a_job_directory_in_use_is_waited_for(tmp_path):
    """While one process holds a job directory's lock, another run of the same job waits, then reuses it."""
    from mtlbench.rundir import LOCK_FILE, exclusive

    sweep = tmp_path / "sweep"
    job = sweep / "0_mmoe_equal_seed0"
    args = [*SWEEP[:1], "seed=0", *SWEEP[2:], f"hydra.sweep.dir={sweep}"]
    with exclusive(job / LOCK_FILE):
        p = subprocess.Popen(
            [sys.executable, "-m", "mtlbench.cli.train", *args],
            cwd=tmp_path,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None and not (job / ".hydra").exists():
            time.sleep(0.05)
        time.sleep(2.0)
        assert p.poll() is None and not (job / "config.yaml").exists()  # waiting: nothing of the job written
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    assert "is being run by another process: waiting for it" in err
    assert (job / "results.json").exists()
    assert run_cli(args, cwd=tmp_path).stderr.count("skipped (reused)") == 1
