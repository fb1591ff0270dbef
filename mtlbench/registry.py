"""Name -> factory registries for models, weightings, datasets, metrics, derived inputs and analyses (timm-style).

Third-party packages add entries through the ``mtlbench.plugins`` entry-point group: each entry point
names a module (or callable) that, when imported/called, registers its components.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from mtlbench.errors import UnknownNameError

T = TypeVar("T")
ENTRY_POINT_GROUP = "mtlbench.plugins"


class Registry(Generic[T]):
    """A named collection of factories with helpful errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            existing = self._entries.get(name)
            if existing is not None and existing is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered by {existing!r}")
            self._entries[name] = factory
            return factory

        return decorator

    def names(self, pattern: str = "*") -> list[str]:
        load_plugins()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> Callable[..., T]:
        load_plugins()
        if name not in self._entries:
            known = sorted(self._entries)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} Known: {', '.join(known)}")
        return self._entries[name]

    def peek(self, name: str) -> Callable[..., T] | None:
        """The entry registered so far under ``name``, without importing plugins (cheap CLIs use it)."""
        return self._entries.get(name)

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._entries


MODELS: Registry[Any] = Registry("model")
WEIGHTINGS: Registry[Any] = Registry("weighting")
DATASETS: Registry[Any] = Registry("dataset")
METRICS: Registry[Any] = Registry("metric")
DERIVED: Registry[Any] = Registry("derived input")  # per-row inputs a model or weighting lists in required_inputs
ANALYSES: Registry[Any] = Registry("analysis")  # after-test Lightning callbacks a model lists in `analyses`

register_model = MODELS.register
register_weighting = WEIGHTINGS.register
register_dataset = DATASETS.register
register_derived = DERIVED.register
register_analysis = ANALYSES.register


def register_metric(name: str) -> Callable[[type], type]:
    """Register a torchmetrics ``Metric`` subclass under ``name`` (``metrics=[name]`` in a run config).

    The class sets ``higher_is_better`` (checkpoint, early-stopping and report direction) and implements
    ``update(preds, target, groups)``; see :class:`mtlbench.metrics.base.RecMetric`. A name with an ``@``
    parameter (``ndcg@5``) is registered without it (``ndcg``) and parsed by the class's ``from_spec``.
    """
    if not name or "@" in name:
        raise ValueError(f"metric name {name!r}: register the bare name, without its '@' parameter")

    def decorator(cls: type) -> type:
        if not isinstance(cls, type) or not isinstance(getattr(cls, "higher_is_better", None), bool):
            raise TypeError(
                f"metric {name!r}: register a torchmetrics Metric subclass whose class attribute "
                "higher_is_better is True or False"
            )
        METRICS.register(name)(cls)
        return cls

    return decorator


_plugins_loaded = False


def import_submodules(package: str) -> None:
    """Import every module of a built-in package, so each registers what it defines."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
        importlib.import_module(info.name)


def load_plugins() -> None:
    """Import the built-in components and every installed ``mtlbench.plugins`` entry point once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for package in (
        "mtlbench.datasets",
        "mtlbench.models",
        "mtlbench.weighting",
        "mtlbench.metrics",
        "mtlbench.analysis",
    ):
        import_submodules(package)
    importlib.import_module("mtlbench.data.lifecycle_inputs")  # the built-in derived inputs

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        loaded = ep.load()
        if callable(loaded) and not isinstance(loaded, type):
            loaded()
