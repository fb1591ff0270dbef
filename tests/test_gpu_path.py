"""The device-resident data path and benchmarks/gpu.py: their code paths on the CPU device; CUDA-only checks skip."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mtlbench.data.rows import ColumnRows, ResidentRows
from mtlbench.training.run import build_datamodule

from conftest import REPO, compose_cfg

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu  # noqa: E402

SMALL = ["dataset.n_users=60", "dataset.n_rows=3000", "dataset.n_items=80"]


def test_the_matmul_flops_of_a_recorded_step_follow_the_shapes():
    mm, bmm, addmm = torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default
    assert gpu.flops(mm, [(8, 3), (3, 5)]) == 2 * 8 * 3 * 5
    assert gpu.flops(bmm, [(4, 8, 3), (4, 3, 5)]) == 4 * 2 * 8 * 3 * 5
    assert gpu.flops(addmm, [(5,), (8, 3), (3, 5)]) == 2 * 8 * 3 * 5  # the bias adds no matmul
    with gpu.MatmulRecorder() as rec:
        a = torch.randn(8, 3, requires_grad=True)
        (torch.nn.functional.linear(a, torch.randn(5, 3), torch.randn(5)).sum()).backward()
    assert rec.calls and {c[0] for c in rec.calls} <= gpu.MATMULS


@pytest.mark.slow
def test_gpu_benchmark_runs_its_code_paths_on_the_cpu():
    args = ["--models", "mmoe", "--batches", "256", "--rows", "3000", "--steps", "3", "--warmup", "1"]
    args += ["--precisions", "32-true", "--matmul-seconds", "0.1"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["device"] == "cpu" and row["model"] == "mmoe" and row["batch"] == 256
    assert row["samples_per_second"] > 0 and row["matmul_flop_per_sample"] > 0 and row["share_of_limit"] > 0


def test_resident_data_is_chosen_on_a_gpu_only(monkeypatch):
    dm = build_datamodule(compose_cfg(SMALL))
    dm.setup("fit")  # no trainer: the CPU
    assert isinstance(dm.inputs, ColumnRows)
    forced = build_datamodule(compose_cfg([*SMALL, "resident_data=true"]))
    forced.setup("fit")
    assert isinstance(forced.inputs, ResidentRows) and forced.inputs.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_whole_dataset_is_resident_and_batches_stay_there():
    dm = build_datamodule(compose_cfg(SMALL))
    dm.load()
    assert dm._make_resident(dm.rows(), torch.device("cuda:0"))  # type: ignore[arg-type]
    resident = dm.rows().resident("cuda:0")  # type: ignore[union-attr]
    idx = torch.arange(0, 3000, 7)
    on_gpu, on_host = resident.gather(idx), dm.rows().gather(idx)
    for key, value in on_gpu.items():
        assert value.device.type == "cuda"
        torch.testing.assert_close(value.cpu(), on_host[key], rtol=0, atol=0, equal_nan=True)
