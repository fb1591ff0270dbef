"""User-facing errors: each one prints as a single line that names the problem."""

from __future__ import annotations


class MtlbenchError(Exception):
    """Base class for errors caused by the user's input (names, configs, data).

    The CLI prints ``str(error)`` as one line and exits non-zero; no traceback.
    """


class UnknownNameError(MtlbenchError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DataError(MtlbenchError, ValueError):
    """Data that does not match its schema: missing columns, bad labels, ids beyond a vocabulary."""


class ConfigError(MtlbenchError, ValueError):
    """A configuration value that cannot be used."""


class TrainingError(MtlbenchError, RuntimeError):
    """Training could not go on, e.g. a non-finite loss."""
