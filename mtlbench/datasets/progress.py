"""Progress bars of the raw-file readers, on stderr: on in a terminal, off in logs unless asked for."""

from __future__ import annotations

import os
import sys

PROGRESS_ENV = "MTLBENCH_PROGRESS"
_progress_override: bool | None = None


def set_progress(enabled: bool | None) -> None:
    """Force the progress bars on or off (``None``: on when stderr is a terminal or $MTLBENCH_PROGRESS=1)."""
    global _progress_override
    _progress_override = enabled


def progress_enabled() -> bool:
    """Whether the readers draw progress bars (see :func:`set_progress`)."""
    if _progress_override is not None:
        return _progress_override
    env = os.environ.get(PROGRESS_ENV)
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


class ProgressBar:
    """A byte-count progress bar (tqdm) that costs nothing when disabled."""

    def __init__(self, total: int, desc: str) -> None:
        self.bar = None
        if progress_enabled():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                leave=False,
                file=sys.stderr,
                dynamic_ncols=True,
            )

    def to(self, pos: int) -> None:
        """Move the bar to ``pos`` bytes."""
        if self.bar is not None and pos > self.bar.n:
            self.bar.update(pos - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
