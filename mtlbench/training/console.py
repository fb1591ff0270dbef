"""What a run shows on the terminal while it trains: Lightning's progress bars with ``verbose=true``, otherwise
one transient line.

``trainer.enable_progress_bar=false`` shows none. Otherwise, unless ``verbose``: :class:`CompactProgressBar`, a
single line (epoch, batches, rate, training loss) that is rewritten in place while the run trains and erased when
training ends, no validation, test or sanity-check bars, and nothing at all when stdout is not a terminal (a log
file or a pipe gets no carriage-return updates). With ``verbose=true``: Lightning's own bars.
"""

from __future__ import annotations

import sys
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, TQDMProgressBar


def _terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(callable(isatty) and isatty())


class CompactProgressBar(TQDMProgressBar):
    """One transient training line; the validation, test and sanity-check bars are off (see the module)."""

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=False)

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(
            desc=self.train_description,
            position=2 * self.process_position,
            disable=self.is_disabled or not _terminal(),
            leave=False,  # erased when training ends: the run's result line takes its place
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def _off(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_sanity_tqdm(self) -> Tqdm:
        return self._off()

    def init_validation_tqdm(self) -> Tqdm:
        return self._off()

    def init_test_tqdm(self) -> Tqdm:
        return self._off()

    def init_predict_tqdm(self) -> Tqdm:
        return self._off()


def progress_bar(trainer_settings: dict[str, Any], verbose: bool) -> list[pl.Callback]:
    """The progress bar callback of a run (none: Lightning's default bar, or no bar when it is switched off)."""
    if verbose or not trainer_settings.get("enable_progress_bar", True):
        return []
    return [CompactProgressBar()]
