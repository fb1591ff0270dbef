"""Preemption: a signal stops a run at the next step boundary with a checkpoint, and the same command continues it.

What a cluster sends before it kills a job: SIGTERM (Slurm's preemption, ``scancel``), SIGUSR1 (Lightning's
SLURM requeue signal, ``#SBATCH --signal=USR1@90``) or, inside a submitit job, submitit's preemption / time-out
signal (SIGUSR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise). The stop itself is Lightning's: its SIGTERM
handler makes the loops raise ``SIGTERMException`` at the next step (or epoch) boundary, and in DDP rank 0's
flag is broadcast so every process stops at the same step. The requeue signals are turned into that SIGTERM
while Lightning runs. What mtlbench adds:

- :class:`Preemption` (a callback) saves ``checkpoints/last.ckpt`` at that boundary (mid-epoch too: the
  training loader records how many batches of the epoch were trained, and the resumed epoch skips them) and
  writes ``checkpoints/preempted.json``; a stop during validation keeps the previous epoch's ``last.ckpt``;
- then the run exits with :data:`PREEMPTED_EXIT_CODE` (144, the code on which submitit's local launcher
  requeues a job) after one line naming the checkpoint, or, inside a submitit job that got its own signal,
  hands over to submitit's handler, which resubmits the same job (``scontrol requeue``) and exits;
- the requeued job (the same command and run directory) finds ``preempted.json`` and continues from
  ``last.ckpt`` as ``resume=true`` would (same config and mtlbench version required), so the run ends with
  the numbers of an uninterrupted one.

Checkpoints are written by :class:`AtomicCheckpointIO` beside their final name and renamed when complete.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn, cast

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mtlbench.log import get_logger
from mtlbench.rundir import CHECKPOINT_DIR, LAST_CHECKPOINT, PREEMPTED_FILE, atomic_write, write_json
from mtlbench.version import __version__

log = get_logger(__name__)

#: exit code of a run stopped by a signal after saving its checkpoint: submitit's ``LOCAL_REQUEUE_RETURN_CODE``,
#: on which its local launcher requeues the job (on Slurm, submitit requeues from its signal handler)
PREEMPTED_EXIT_CODE = 144
#: the key of the mtlbench version in a checkpoint
VERSION_KEY = "mtlbench_version"
#: whether fit had decided to stop (early stopping) when the checkpoint was saved
SHOULD_STOP_KEY = "mtlbench_should_stop"


class Preempted(SystemExit):
    """A signal stopped the run after it saved what the same command continues from.

    A ``SystemExit`` (code :data:`PREEMPTED_EXIT_CODE`), so a sweep in this process stops too (the process is
    about to be killed) instead of going on to its next job.
    """

    def __init__(self, message: str) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the checkpoint, then rename.

    Lightning's own writer serialises to memory, writes a temporary file in ``$TMPDIR`` and moves it: when
    ``$TMPDIR`` is on another file system than the run directory (the usual cluster layout: local /tmp, shared
    run directories) the move is a copy into the final name, so a full disk or a kill during it leaves half a
    checkpoint under that name. Here the checkpoint exists complete or not at all, and a failed write is a
    :class:`~mtlbench.rundir.WriteError` naming it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_write(path, lambda tmp: _torch_save(checkpoint, tmp))


class _Writes:
    """A file for ``torch.save`` that keeps the OSError of a failed write (torch's zip writer reports only that
    its position is off)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def _torch_save(obj: Any, path: str) -> None:
    with open(path, "wb") as f:
        out = _Writes(f)
        try:
            torch.save(obj, cast("IO[bytes]", out))  # write / flush: all torch.save uses
        except RuntimeError:
            if out.error is not None:
                raise out.error from None  # e.g. no space: a WriteError naming the checkpoint
            raise
        if out.error is not None:
            raise out.error


def checkpoint_version(path: str | os.PathLike) -> str | None:
    """The mtlbench version that wrote a checkpoint (None: written before checkpoints recorded it)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mapped: no tensor is read
    version = ckpt.get(VERSION_KEY)
    return str(version) if version is not None else None


def requeue_signals() -> tuple[signal.Signals, ...]:
    """SIGUSR1, and submitit's preemption / time-out signal inside a submitit job."""
    signals = [signal.SIGUSR1]
    if os.environ.get("SUBMITIT_EXECUTOR"):
        extra = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
        if isinstance(extra, signal.Signals) and extra not in signals:
            signals.append(extra)
    return tuple(signals)


class ResumableLoader:
    """The training loader with Lightning's stateful-loader interface (``state_dict`` / ``load_state_dict``).

    A checkpoint records the epoch and how many of its batches were trained; a run resumed mid-epoch skips
    those batches of the same epoch (the permutation is seeded by the epoch), so it sees the batches the
    uninterrupted run would. Everything else is the wrapped loader's.
    """

    def __init__(self, loader: Any, position: Callable[[], tuple[int, int]]) -> None:
        self.loader = loader
        self.position = position
        self._skip: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (a copy being built)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.loader)
        skip, self._skip = self._skip, None
        if skip is not None:
            epoch, done = skip
            if epoch == self.position()[0] and 0 < done < len(self.loader):
                batches = itertools.islice(batches, done, None)
        return batches

    def state_dict(self) -> dict[str, int]:
        epoch, done = self.position()
        return {"epoch": epoch, "batches": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = (int(state["epoch"]), int(state["batches"]))


class Preemption(pl.Callback):
    """Saves ``last.ckpt`` where Lightning stops on a signal, records the version in every checkpoint, and
    makes the training loader resumable mid-epoch. Use :meth:`signals` around the Lightning calls and
    :meth:`stop` when they raise ``SIGTERMException``."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.signum: int | None = None  # the requeue signal received, if any (SIGTERM otherwise)
        self.saved: dict[str, Any] | None = None
        self._previous: dict[int, Any] = {}
        self._sigterm_before: Any = None
        self._stopped_at_save = False

    @property
    def last(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT

    @property
    def marker(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR / PREEMPTED_FILE

    # -- signals ------------------------------------------------------------------------------------------
    def signals(self) -> _Installed:
        """Context manager: the requeue signals stop the run the way SIGTERM does while Lightning runs."""
        return _Installed(self)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if signal.getsignal(signal.SIGTERM) is not self._sigterm_before:
            signal.raise_signal(signal.SIGTERM)  # Lightning's handler: stop at the next step boundary
        else:
            self._previous_handler(signum, frame)  # outside Lightning's loops: as if we were not here

    def _previous_handler(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def stop(self, trainer: pl.Trainer) -> NoReturn:
        """After Lightning stopped on a signal: hand over to submitit's requeue, or exit with the requeue code."""
        signum = self.signum or signal.SIGTERM
        name = signal.Signals(signum).name
        if self.saved is not None and self.saved["saved_now"]:
            where = f"saved {self.last} (epoch {self.saved['epoch']}, step {self.saved['global_step']})"
        elif self.marker.exists():
            where = f"kept {self.last} (from the end of the last epoch)"
        else:
            where = ""
        then = "the same command (or the requeued job) continues from it" if where else "nothing to continue from"
        message = f"stopped by {name}: {where}; {then}" if where else f"stopped by {name}: {then}"
        previous = self._previous.get(signum)
        if signum != signal.SIGTERM and callable(previous):
            log.warning("%s; handing over to the launcher's requeue", message)
            previous(signum, None)  # submitit: resubmits this job with the same arguments and exits
        raise Preempted(message)

    # -- Lightning hooks ----------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = getattr(trainer, "datamodule", None)
        if stage != "fit" or dm is None or isinstance(getattr(dm, "train_dataloader", None), _Wrapped):
            return
        original = dm.train_dataloader

        def position() -> tuple[int, int]:
            # processed, not completed: at ModelCheckpoint's every-N-steps save (on_train_batch_end) Lightning has not
            # yet counted that batch completed; at a signal's and the epoch's saves the two are equal
            current = trainer.fit_loop.epoch_loop.batch_progress.current  # a _ProcessedTracker (typed as its base)
            return trainer.current_epoch, int(getattr(current, "processed"))  # noqa: B009

        dm.train_dataloader = _Wrapped(lambda: ResumableLoader(original(), position))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a checkpoint saved after early stopping decided to stop, before fit ended (at the epoch's last.ckpt or
        # at a signal after that epoch): the resumed fit stops too, where the uninterrupted one did
        if self._stopped_at_save:
            trainer.should_stop = True

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[VERSION_KEY] = __version__
        checkpoint[SHOULD_STOP_KEY] = bool(trainer.should_stop)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._stopped_at_save = bool(checkpoint.get(SHOULD_STOP_KEY, False)) and trainer.state.fn == "fit"

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return  # a stop during the final validate/test: the run starts over (nothing saved mid-test)
        saved_now = False
        if trainer.training:  # a step or epoch boundary; mid-validation keeps the previous epoch's last.ckpt
            try:
                trainer.save_checkpoint(self.last, weights_only=False)
                saved_now = True
            except Exception as e:  # e.g. a full disk: the previous last.ckpt is intact (atomic writes)
                log.error("could not save the checkpoint at the stop: %s", e)
        if trainer.is_global_zero and self.last.exists():
            self.saved = {
                "signal": signal.Signals(self.signum or signal.SIGTERM).name,
                "saved_now": saved_now,
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "checkpoint": f"{CHECKPOINT_DIR}/{LAST_CHECKPOINT}",
                "mtlbench_version": __version__,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            try:
                write_json(self.marker, self.saved)
            except OSError as e:
                log.error("%s", e)


class _Wrapped:
    """Marks the wrapped ``train_dataloader`` so that a second ``fit`` does not wrap it twice."""

    def __init__(self, make: Callable[[], ResumableLoader]) -> None:
        self.make = make

    def __call__(self) -> ResumableLoader:
        return self.make()


class _Installed:
    """Installs :class:`Preemption`'s handler for the requeue signals (main thread only) and restores them."""

    def __init__(self, owner: Preemption) -> None:
        self.owner = owner

    def __enter__(self) -> Preemption:
        owner = self.owner
        if threading.current_thread() is threading.main_thread():
            owner._sigterm_before = signal.getsignal(signal.SIGTERM)
            for sig in requeue_signals():
                owner._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, owner._on_signal)
        return owner

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self.owner._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
