"""The library's messages: ``logging`` under the ``mtlbench`` logger, emitted by rank zero only under DDP.

Library modules write ``log = get_logger(__name__)`` and never ``print``; the command-line tools decide where
messages go (Hydra's job logging for ``mtlbench``, :func:`to_stderr` for the other tools).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

FORMAT = "[mtlbench] %(message)s"
#: Lightning's loggers (``lightning.*``: the same in the unified ``lightning`` package); their INFO records are the
#: accelerator banners ("GPU available: ..."), the 💡 tips advertising Lightning's services and the "Restoring
#: states from the checkpoint" lines of every validate/test with the selected checkpoint
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")
#: warnings a user cannot act on, hidden unless ``verbose``: (regex matching the start of the message, category)
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning's own use of a torch API that torch deprecated (pytorch_lightning/utilities/_pytree.py)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # fewer training batches than trainer.log_every_n_steps: the CSV log then has the epoch rows only
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning),
)


def rank() -> int:
    """This process's global rank (0 outside distributed runs), as the launchers set it in the environment."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


class RankZeroFilter(logging.Filter):
    """Drops records from every process but global rank zero (DDP runs one process per device)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return rank() == 0


def get_logger(name: str) -> logging.Logger:
    """The logger of a library module (``name`` = its ``__name__``), rank-zero only."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RankZeroFilter) for f in logger.filters):
        logger.addFilter(RankZeroFilter())
    return logger


def to_stderr(level: int = logging.INFO) -> None:
    """Show the library's messages on stderr as ``[mtlbench] ...`` (for command-line tools without Hydra)."""
    logger = logging.getLogger("mtlbench")
    if not any(getattr(h, "_mtlbench", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._mtlbench = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)


@contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Within the block, unless ``verbose``: Lightning's INFO messages (:data:`LIGHTNING_LOGGERS`) and the warnings
    of :data:`QUIET_WARNINGS` are not shown. Levels and warning filters are restored on exit."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        if not verbose:
            for logger in loggers:
                logger.setLevel(logging.WARNING)
            for message, category in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
