"""The one place the version is written (pyproject reads it; results.json and checkpoints record it)."""

__version__ = "0.1.0"
