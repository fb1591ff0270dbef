"""FAMO under multi-process training: ξ and the task weights are the same on every process, and equal to one
process's on the union of the processes' batches (the losses are averaged over processes with all_reduce)."""

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtlbench.models import ModelOutput
from mtlbench.weighting.famo import FAMO

TASKS = ["a", "b", "c"]
WORLD = 2
STEPS = 5


def rank_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample positive losses [B, K] and labels present [B, K] of one rank at one step.

    The ranks' batches differ in size and in loss level; at step 2 rank 1 has no label of task c (rank 0 has).
    """
    g = torch.Generator().manual_seed(1000 * rank + step)
    size = (6, 4)[rank]
    losses = torch.rand(size, len(TASKS), generator=g, dtype=torch.float64) * (1.0 + rank) / (1.0 + 0.3 * step)
    mask = torch.rand(size, len(TASKS), generator=g) < 0.8
    mask[0] = True  # every task labelled at least once on each rank ...
    if step == 2 and rank == 1:
        mask[:, 2] = False  # ... except task c on rank 1 at step 2
    return losses, mask


def module_scale(rank: int, step: int) -> torch.Tensor:
    """MultiTaskModule._global_count_scale for this rank: local count × world / total count, per task."""
    counts = [rank_batch(r, step)[1].sum(0).double() for r in range(WORLD)]
    return counts[rank] * WORLD / sum(counts).clamp_min(1.0)


def famo_steps(w: FAMO, batches: list[tuple[torch.Tensor, torch.Tensor]], scales: list[torch.Tensor] | None):
    """ξ after each step, the task weights and the gradient of a per-task scale s (losses × s) at each step."""
    xi, weights, grads = [], [], []
    for i, (losses, mask) in enumerate(batches):
        s = torch.ones(len(TASKS), dtype=torch.float64, requires_grad=True)
        scaled = losses * mask * s * (scales[i] if scales is not None else 1.0)
        res = w(scaled, mask, {}, ModelOutput({}))
        res.loss.backward()
        xi.append(w.xi.clone())
        weights.append(res.task_weights.detach().clone())
        grads.append(s.grad.clone())
    return torch.stack(xi), torch.stack(weights), torch.stack(grads)


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        batches = [rank_batch(rank, t) for t in range(STEPS)]
        scales = [module_scale(rank, t) for t in range(STEPS)]
        xi, weights, grads = famo_steps(FAMO(TASKS), batches, scales)
        dist.all_reduce(grads)  # what DDP does with the processes' gradients: their mean
        np.savez(f"{out_dir}/rank{rank}.npz", xi=xi.numpy(), weights=weights.numpy(), grads=(grads / WORLD).numpy())
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # spawns a 2-process gloo group
def test_two_gloo_processes_keep_identical_xi_equal_to_one_process_on_the_union(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in range(WORLD))
    for key in ("xi", "weights", "grads"):
        np.testing.assert_array_equal(r0[key], r1[key])  # bitwise identical across processes
    assert np.abs(r0["xi"][-1]).max() > 1e-3  # ξ moved: the comparison below is not between zeros
    union = []
    for t in range(STEPS):
        parts = [rank_batch(r, t) for r in range(WORLD)]
        union.append((torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])))
    xi, weights, grads = famo_steps(FAMO(TASKS), union, None)
    np.testing.assert_allclose(r0["xi"], xi.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r0["weights"], weights.numpy(), rtol=1e-9)
    np.testing.assert_allclose(r0["grads"], grads.numpy(), rtol=1e-9)  # DDP's mean = one process's Σ_i w_i ∇ℓ_i
    alone, _, _ = famo_steps(FAMO(TASKS), [rank_batch(0, t) for t in range(STEPS)], None)  # without the exchange
    assert not np.allclose(r0["xi"][-1], alone[-1].numpy(), rtol=1e-3)
