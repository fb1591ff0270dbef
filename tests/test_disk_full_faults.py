"""A full disk: a write that fails for lack of space leaves no half file under a final name, ends in one line
naming the path and a non-zero exit, and a rerun after space returns completes.

The fault is produced with a file-size limit on a subprocess (``RLIMIT_FSIZE``, SIGXFSZ ignored so that the write
fails with EFBIG instead of killing the process): every write past the limit fails, as on a full disk.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import run_cli

RUN = [
    "dataset.n_rows=3000",
    "dataset.n_users=60",
    "dataset.n_items=80",
    "trainer.max_epochs=1",
    "batch_size=256",
    "threads=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def _limited(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write raises OSError(EFBIG) instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def _run_limited(args: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limited(limit),
    )


def _one_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("mtlbench: error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert " | " not in lines[0], lines[0]  # the cause, not the chain of the libraries' own messages
    return lines[0]


def _hidden(folder: Path) -> list[Path]:
    """Temporary files the atomic writers left (they start with a dot)."""
    return [p for p in folder.rglob(".*") if p.name not in (".hydra", ".lock") and ".hydra" not in p.parts]


WRITERS = """
import sys
from pathlib import Path
import numpy as np

what, path = sys.argv[1], Path(sys.argv[2])
big = np.arange(200_000, dtype=np.float64)
if what == "results":
    from mtlbench.rundir import write_json
    write_json(path, {"metrics": big.tolist()})
elif what == "predictions":
    from mtlbench.rundir import write_parquet
    write_parquet(path, {"row": big, "score": big})
elif what == "checkpoint":
    import torch
    from mtlbench.training.preemption import AtomicCheckpointIO
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.from_numpy(big)}}, path)
elif what == "cache":
    from mtlbench.data.cache import write_entry
    from mtlbench.data.schema import DatasetSchema, Feature
    schema = DatasetSchema("t", [Feature("u", "categorical", 10, "user")], tasks=["y"], user_field="u")
    write_entry(path, schema, {"u": np.zeros(200_000, np.int64), "y": np.zeros(200_000, np.float32)}, {})
"""


@pytest.mark.parametrize(
    "what,name",
    [
        ("results", "results.json"),
        ("predictions", "predictions.parquet"),
        pytest.param("checkpoint", "last.ckpt", marks=pytest.mark.slow),  # its subprocess imports Lightning
    ],
)
def test_a_failed_write_keeps_the_previous_file_and_names_the_path(what, name, tmp_path):
    script = tmp_path / "writers.py"
    script.write_text(WRITERS)
    target = tmp_path / "run" / name
    target.parent.mkdir()
    target.write_bytes(b"the previous, complete file")
    proc = _run_limited([str(script), what, str(target)], tmp_path, 64 * 1024)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "WriteError" in last and f"could not write {target}: File too large" in last, proc.stderr[-2000:]
    assert target.read_bytes() == b"the previous, complete file"
    assert list(target.parent.iterdir()) == [target]  # no temporary file left beside it


def test_a_failed_cache_write_leaves_no_entry(tmp_path):
    script = tmp_path / "writers.py"
    script.write_text(WRITERS)
    entry = tmp_path / "cache" / "t-0123"
    proc = _run_limited([str(script), "cache", str(entry)], tmp_path, 64 * 1024)
    assert proc.returncode != 0
    assert f"could not write {entry}: File too large" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.slow  # three runs of the mtlbench command
def test_a_run_on_a_full_disk_stops_with_one_line_and_the_rerun_completes(tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    args = ["-m", "mtlbench.cli.train", *RUN, f"cache_dir={cache}", f"hydra.run.dir={out}"]

    # the dataset does not fit: the cache entry fails (data.arrow is ~0.7 MB)
    proc = _run_limited(args, tmp_path, 256 * 1024)
    assert proc.returncode != 0
    line = _one_error(proc.stderr)
    assert f"could not write {cache}/lifecycle-" in line and "File too large" in line
    assert list(cache.iterdir()) == []  # no entry, no temporary folder, no lock file
    assert not (out / "results.json").exists()

    # more space: the dataset fits, the first checkpoint (~4 MB) does not
    proc = _run_limited(args, tmp_path, 1024 * 1024)
    assert proc.returncode != 0
    line = _one_error(proc.stderr)
    assert f"could not write {out}/checkpoints/" in line and ".ckpt: File too large" in line, line
    assert list((out / "checkpoints").glob("*")) == []  # no half checkpoint under any name
    assert not (out / "results.json").exists() and not (out / "predictions.parquet").exists()
    assert _hidden(out) == []

    # space returns: the same command completes
    proc = run_cli([*RUN, f"cache_dir={cache}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["metrics"]["test"]


#: the run's file system fills up half-way through any copy between file systems; $TMPDIR is another one
CROSS_DEVICE = """
import errno, shutil, sys, tempfile
tempfile.tempdir = sys.argv.pop(1)

def half_then_full(fsrc, fdst, *args):
    data = fsrc.read()
    fdst.write(data[: len(data) // 2])
    fdst.flush()
    raise OSError(errno.ENOSPC, "No space left on device")

shutil._fastcopy_sendfile = half_then_full
shutil.copyfileobj = half_then_full
from mtlbench.cli.train import main
main()
"""


@pytest.mark.slow  # a run of the mtlbench command
def test_checkpoints_never_pass_through_a_copy_into_their_final_name(tmp_path):
    """Lightning's writer puts a checkpoint in $TMPDIR and moves it: across file systems the move copies into the
    final name, and a disk that fills during the copy leaves half a checkpoint there. Ours write beside it."""
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second file system for $TMPDIR (/dev/shm)")
    tmpdir = Path(tempfile.mkdtemp(dir=other))
    try:
        script = tmp_path / "cross_device.py"
        script.write_text(CROSS_DEVICE)
        out = tmp_path / "run"
        proc = subprocess.run(
            [sys.executable, str(script), str(tmpdir), *RUN, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"],
            cwd=tmp_path,
            env=dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    for ckpt in (out / "checkpoints").glob("*.ckpt"):
        torch.load(ckpt, weights_only=True)  # complete, or not there at all
    assert proc.returncode == 0, proc.stderr[-3000:]
