"""Batches of row numbers, and the batches gathered for them: one gather per input per batch, no per-sample Python."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import Tensor


class RowSource(Protocol):
    """Where a batch's inputs are gathered from (:class:`mtlbench.data.rows.ColumnRows` or ``ResidentRows``)."""

    device: torch.device

    def gather(self, idx: Tensor) -> dict[str, Tensor]: ...


class BatchLoader:
    """Iterates over ``rows`` of a :class:`RowSource` in batches.

    Training (``shuffle=True``): a permutation seeded by ``(seed, epoch)`` cut into global batches of
    ``batch_size * world`` rows; process ``rank`` takes its slice of each global batch, so N processes
    step together over exactly the global batches one process would see (the last global batch is
    split evenly; at most ``world - 1`` rows are left out of that epoch). Evaluation
    (``shuffle=False``): rows are split into ``world`` contiguous parts of possibly unequal size, so
    every row is seen exactly once in total. The row numbers are drawn on the CPU (the same permutation on
    every device) and moved to the source's device once per epoch, so a device-resident source gathers its
    batches with no host round trip per step.
    """

    def __init__(
        self,
        source: RowSource,
        rows: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        epoch_fn: Callable[[], int] | None = None,
        drop_last: bool = False,
    ) -> None:
        self.source = source
        self.rows = rows
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world = rank, world
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.drop_last = drop_last

    def _batches(self) -> Iterator[Tensor]:
        """Row indices of this process's batches for the current epoch."""
        device = self.source.device
        if not self.shuffle:
            local = torch.tensor_split(self.rows, self.world)[self.rank]
            yield from torch.split(local.to(device), self.batch_size)
            return
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch_fn())
        # int32 when it fits: the same permutation as int64 (tests/test_loader.py), half the memory at 50M rows
        dtype = torch.int32 if len(self.rows) < 2**31 else torch.int64
        order = torch.randperm(len(self.rows), generator=g, dtype=dtype)
        resident = device.type != "cpu"
        if resident:  # the epoch's row numbers moved to the device once
            order = self.rows[order].to(device)
        step = self.batch_size * self.world
        for start in range(0, len(order), step):
            glob = order[start : start + step]
            share = len(glob) // self.world
            if share:
                idx = glob[self.rank * share : (self.rank + 1) * share]
                yield idx if resident else self.rows[idx]  # on the CPU, rows per batch: no second N-row copy

    def __len__(self) -> int:
        n = len(self.rows)
        if not self.shuffle:
            n = len(torch.tensor_split(self.rows, self.world)[self.rank])
            return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        full, rest = divmod(n, self.batch_size * self.world)
        return full + (0 if self.drop_last or rest < self.world else 1)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for idx in self._batches():
            if self.drop_last and len(idx) < self.batch_size:
                break
            yield self.source.gather(idx)
