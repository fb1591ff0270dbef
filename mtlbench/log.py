"""The library's messages: ``logging`` under the ``mtlbench`` logger, emitted by rank zero only under DDP.

Library modules write ``log = get_logger(__name__)`` and never ``print``; the command-line tools decide where
messages go (Hydra's job logging for ``mtlbench``, :func:`to_stderr` for the other tools).
"""

from __future__ import annotations

import logging
import os

FORMAT = "[mtlbench] %(message)s"


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
