"""STAN's per-user stage state under multi-process training: every process applies every process's samples."""

import json
import socket

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtlbench.weighting.stan_stage import StanStage

from conftest import TINY, run_cli

NUM_USERS, TASKS = 6, ["a", "b"]


def rank_batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Different (users, y~, positions) per rank and step; rank 1's last batch is smaller than rank 0's."""
    g = torch.Generator().manual_seed(100 + rank)
    out = []
    for size in (5, 4) if rank == 0 else (5, 2):
        out.append(
            (
                torch.randint(0, NUM_USERS, (size,), generator=g),
                torch.rand(size, 2, generator=g, dtype=torch.float64),
                torch.randint(1, 9, (size,), generator=g),
            )
        )
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        w = StanStage(TASKS, num_users=NUM_USERS)
        for users, pref, pos in rank_batches(rank):
            w.update(users, pref, pos)
        np.savez(f"{out_dir}/rank{rank}.npz", alpha=w.alpha.numpy(), beta=w.beta.numpy(), count=w.count.numpy())
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # spawns a 2-process gloo group
def test_two_gloo_processes_end_with_identical_state_equal_to_the_union(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    for k in ("alpha", "beta", "count"):
        np.testing.assert_array_equal(r0[k], r1[k])  # bitwise identical across processes
    single = StanStage(TASKS, num_users=NUM_USERS)
    for users, pref, pos in rank_batches(0) + rank_batches(1):
        single.update(users, pref, pos)
    np.testing.assert_allclose(r0["alpha"], single.alpha.numpy(), rtol=1e-12)
    np.testing.assert_allclose(r0["beta"], single.beta.numpy(), rtol=1e-12)
    np.testing.assert_array_equal(r0["count"], single.count.numpy())
    assert r0["count"].sum() == 5 + 4 + 5 + 2
    alone = StanStage(TASKS, num_users=NUM_USERS)  # what one process would hold without the exchange
    for users, pref, pos in rank_batches(0):
        alone.update(users, pref, pos)
    assert not np.allclose(r0["alpha"], alone.alpha.numpy())


@pytest.mark.slow
def test_stan_trains_with_lightning_ddp_on_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    proc = run_cli(
        [*TINY, "model=stan", "trainer=ddp", "trainer.devices=2", "analysis.tsne_users=0", f"hydra.run.dir={out}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["train"]["world_size"] == 2 and "stage_analysis" in res
    # the checkpointed state (rank 0's) holds the samples of both processes: one pass over the training rows
    users = pq.read_table(out / "user_stages.parquet").to_pydict()
    count = np.array(users["count"])
    assert count.sum() == res["train"]["samples"]  # both ranks' samples, not rank 0's half
    alpha, beta = np.array(users["alpha_click"]), np.array(users["beta_click"])
    # Σ c_i over positions 1..n; equal shares may drop one row of an odd-sized training set
    assert (~np.isclose(alpha + beta, 2 + count * (count + 1) / 2, rtol=1e-6)).sum() <= 1
