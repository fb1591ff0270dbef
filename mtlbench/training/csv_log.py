"""The run's CSV log (``logs/metrics.csv``), continued by a resumed run instead of replaced.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it opens the log folder, so a run resumed from
``last.ckpt`` kept only the epochs trained after the resume: its validation curve, which the report plots and a
reader checks for convergence before trusting a table, started mid-way. :class:`ResumableCSVLogger` keeps the rows
the checkpoint covers (those logged at a step before the checkpoint's) and appends the resumed run's; rows the
stopped process logged after the checkpoint are dropped, because the resumed run trains and logs those steps
again. It also writes its buffered rows whenever a checkpoint is saved, so that a process killed outright (no
chance to flush) loses no row its checkpoint covers.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.loggers.csv_logs import _ExperimentWriter as _FabricExperimentWriter
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from mtlbench.rundir import write_text


def checkpoint_step(path: str | Path) -> int:
    """The logging step a training checkpoint resumes at: Lightning's count of batches that stepped the
    optimizer (the ``step`` column of the log), or the global step if the checkpoint lacks it."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    epoch_loop = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    return int(epoch_loop.get("_batches_that_stepped", ckpt["global_step"]))


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, keeping the existing file's rows logged before step ``keep_before``."""

    def __init__(self, log_dir: str, keep_before: int | None) -> None:
        self._keep_before = keep_before
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        keep_before = self._keep_before
        if keep_before is None or not self._fs.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()  # a new run: Lightning's behaviour (an old file is removed)
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            rows = [row for row in reader if (step := _step(row)) is not None and step < keep_before]
            keys = list(reader.fieldnames or [])
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.metrics_file_path, out.getvalue())  # atomic: a second stop leaves the old or the new file
        self.metrics_keys = keys  # the resumed run's rows are appended under the same header (or a wider one)


def _step(row: dict[str, Any]) -> int | None:
    """A row's step; None for a line the stopped process left unfinished."""
    try:
        return int(float(row["step"]))
    except (KeyError, TypeError, ValueError):
        return None


class ResumableCSVLogger(pl.loggers.CSVLogger):
    """``CSVLogger`` that continues the log of a resumed run (``resume_step``: the checkpoint's step; None for a
    new run) and writes its buffered rows at every checkpoint."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> _FabricExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self._resume_step)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()  # the rows a checkpoint covers are on disk when the checkpoint is
