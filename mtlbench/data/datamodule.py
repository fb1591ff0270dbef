"""LightningDataModule: cached dataset -> splits -> row inputs -> gathered batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch

from mtlbench.data.cache import load_or_build
from mtlbench.data.derived import compute_derived
from mtlbench.data.hashing import apply_hashing, hash_plan
from mtlbench.data.loader import BatchLoader
from mtlbench.data.rows import ColumnRows, ResidentRows, layout_nbytes
from mtlbench.data.schema import DatasetSchema, select_tasks
from mtlbench.data.splits import check_not_empty, make_splits
from mtlbench.data.subset import apply_subset
from mtlbench.errors import ConfigError
from mtlbench.factory import create_dataset
from mtlbench.metrics.base import analysis_group_columns


class MultiTaskDataModule(pl.LightningDataModule):
    """Prepares one dataset once (cached) and serves train/valid/test batches.

    ``batch_size`` is the global training batch: under DDP each of ``world`` processes gets
    ``batch_size // world`` rows per step, so results don't depend on the number of processes.
    ``subset`` (e.g. ``{"rule_stage": "Wander"}``) keeps only one lifecycle stage's rows in every split, after
    splitting and after the derived inputs (STAN's Stage_Single: :mod:`mtlbench.data.subset`).
    ``resident``: where batches are gathered from. False: from the memory-mapped cache, batch by batch
    (:class:`~mtlbench.data.rows.ColumnRows`: flat memory, the data may exceed RAM); True: the whole layout built
    once on the trainer's device (:class:`~mtlbench.data.rows.ResidentRows`: on a GPU, no host round trip per
    step); None (default): resident on an accelerator whose free memory holds the layout twice over, else False.
    Both give the same batches.
    """

    name: str  # the registered dataset name (LightningDataModule declares it Optional)

    def __init__(
        self,
        name: str,
        settings: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        split_method: str = "auto",
        split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
        batch_size: int = 2048,
        eval_batch_size: int = 16384,
        seed: int = 0,
        extra_inputs: tuple[str, ...] = (),
        extra_settings: dict[str, Any] | None = None,
        hash_buckets: int | dict[str, int] | None = None,
        tasks: list[str] | None = None,
        subset: dict[str, Any] | None = None,
        resident: bool | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.settings = dict(settings or {})
        self.cache_dir = cache_dir
        self.split_method = split_method
        # a tuple of any length from a config: make_splits checks it holds three ratios
        self.split_ratios = cast("tuple[float, float, float]", tuple(split_ratios))
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.seed = int(seed)
        self.extra_inputs = tuple(extra_inputs)
        self.extra_settings = dict(extra_settings or {})
        self.hash_buckets = hash_buckets
        self.hashed_fields: list[str] = []  # the categorical fields hash_buckets hashed (set by load)
        self.tasks = list(tasks) if tasks else None
        self.subset = dict(subset) if subset else None
        self.resident = resident
        self.schema: DatasetSchema | None = None
        self.columns: dict[str, np.ndarray] = {}
        self.splits: dict[str, np.ndarray] = {}
        #: the batch inputs by row (``gather(idx)``, ``column(key, rows)``), set by load, made resident by setup
        self.inputs: ColumnRows | ResidentRows | None = None
        #: row-aligned ids of the analysis groups (e.g. ``true_stage``), for metrics only: never in ``inputs``,
        #: so never in a batch a model sees
        self.analysis_groups: dict[str, torch.Tensor] = {}
        self.cache_path: Path | None = None

    def load(self) -> DatasetSchema:
        """Load (building on first use) the cached dataset, split it and set up the batch inputs."""
        if self.schema is not None:
            return self.schema
        source = create_dataset(self.name, **self.settings)
        schema, columns, self.cache_path = load_or_build(source, self.name, self.cache_dir)
        self.hashed_fields = sorted(hash_plan(schema, self.hash_buckets))
        self.schema, self.columns = apply_hashing(schema, columns, self.hash_buckets)
        if self.tasks:
            self.schema = select_tasks(self.schema, self.tasks)
        self.splits = make_splits(self.schema, self.columns, self.split_method, self.split_ratios, self.seed)
        check_not_empty(self.splits, self.split_method, self.schema)
        inputs = ColumnRows(self.schema, self.columns)
        inputs.standardize(self.splits["train"])
        self.analysis_groups = {
            group: torch.from_numpy(np.array(self.columns[column], dtype=np.int64))
            for group, column in analysis_group_columns(self.schema).items()
        }
        for name in self.extra_inputs:
            settings = self.extra_settings.get(name, {})
            inputs.add(name, compute_derived(name, self.schema, self.columns, self.splits["train"], **settings))
        self.inputs = inputs
        if self.subset:  # last: every input and the stages are those of the all-data run
            rule_settings = self.extra_settings.get("rule_stage", {})
            self.splits = apply_subset(self.schema, self.columns, self.splits, self.subset, rule_settings)
        return self.schema

    def prepare_data(self) -> None:
        self.load()

    def setup(self, stage: str | None = None) -> None:
        self.load()
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if isinstance(self.inputs, ColumnRows) and self._make_resident(self.inputs, device):
            self.inputs = self.inputs.resident(device)

    def _make_resident(self, inputs: ColumnRows, device: torch.device) -> bool:
        if self.resident is not None:
            return self.resident
        if device.type != "cuda":
            return False
        free, _ = torch.cuda.mem_get_info(device)
        return 2 * layout_nbytes(inputs) <= free

    def rows(self) -> ColumnRows | ResidentRows:
        """The batch inputs (loading the dataset first if needed)."""
        self.load()
        assert self.inputs is not None
        return self.inputs

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def loader(self, split: str, train: bool = False) -> BatchLoader:
        rank, world = self._world()
        rows = torch.from_numpy(self.splits[split])
        if train and self.batch_size % world:
            raise ConfigError(
                f"batch_size={self.batch_size} is the global batch and must divide by the {world} processes"
            )
        if len(rows) < world:
            raise ConfigError(f"split {split!r} has {len(rows)} rows, fewer than the {world} processes")
        if train:
            return BatchLoader(
                self.rows(),
                rows,
                max(1, self.batch_size // world),
                shuffle=True,
                seed=self.seed,
                rank=rank,
                world=world,
                epoch_fn=self._epoch,
            )
        return BatchLoader(self.rows(), rows, self.eval_batch_size, rank=rank, world=world)

    def train_dataloader(self) -> BatchLoader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> BatchLoader:
        return self.loader("valid")

    def test_dataloader(self) -> BatchLoader:
        return self.loader("test")
