"""Batches gathered from in-memory tensors by index: one gather per tensor per batch, no per-sample Python."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor


class TensorBatchLoader:
    """Iterates over ``rows`` of a dict of row-aligned tensors in batches.

    Training (``shuffle=True``): a permutation seeded by ``(seed, epoch)``; each of ``world`` processes
    takes an equal share (the remainder of the global permutation is dropped for this epoch only), so
    DDP ranks step together. Evaluation (``shuffle=False``): rows are split into ``world`` contiguous
    parts of possibly unequal size, so every row is seen exactly once in total.
    """

    def __init__(self, tensors: dict[str, Tensor], rows: Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, world: int = 1, epoch_fn: Callable[[], int] | None = None,
                 drop_last: bool = False) -> None:
        self.tensors = tensors
        self.rows = rows
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world = rank, world
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.drop_last = drop_last

    def _local_rows(self) -> Tensor:
        if not self.shuffle:
            return torch.tensor_split(self.rows, self.world)[self.rank]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch_fn())
        perm = self.rows[torch.randperm(len(self.rows), generator=g)]
        share = len(perm) // self.world
        return perm[self.rank * share:(self.rank + 1) * share]

    def __len__(self) -> int:
        n = len(self.rows) // self.world if self.shuffle else len(torch.tensor_split(self.rows, self.world)[self.rank])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        local = self._local_rows()
        stop = len(local) - len(local) % self.batch_size if self.drop_last else len(local)
        for start in range(0, stop, self.batch_size):
            idx = local[start:start + self.batch_size]
            yield {name: t[idx] for name, t in self.tensors.items()}
