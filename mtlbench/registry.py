"""Name -> factory registries for models, weightings, datasets, metrics, derived inputs and analyses (timm-style).

Third-party packages add entries through the ``mtlbench.plugins`` entry-point group: each entry point
names a module (or callable) that, when imported/called, registers its components, and adds its config folder
with :func:`register_plugin_configs` (its ``configs/<group>/<name>.yaml`` become options of mtlbench's groups).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from mtlbench.errors import ConfigError, UnknownNameError

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
    load_entry_points()


_entry_points_loaded = False


def load_entry_points() -> None:
    """Load every installed ``mtlbench.plugins`` entry point once (calling it when it is a function), without the
    built-in components: composing a config needs the plugins' config folders, not torch."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        loaded = ep.load()
        if callable(loaded) and not isinstance(loaded, type):
            loaded()


# -- plugin config folders ---------------------------------------------------------------------------------
_config_folders: list[Path] = []


def _mtlbench_configs() -> Path:
    """mtlbench's own config folder (the installed ``mtlbench.configs``)."""
    return Path(str(resources.files("mtlbench.configs")))


def _plugin_folder(source: str | os.PathLike[str]) -> Path:
    """``source`` as a folder: a path as given, a package (or module) name as the ``configs`` folder beside it."""
    if isinstance(source, os.PathLike) or "/" in source or os.sep in source:
        return Path(source).expanduser().resolve()
    module = sys.modules.get(source) or importlib.import_module(source)
    file = getattr(module, "__file__", None)
    if file:  # a package's __init__ or a module: the folder it lies in
        return Path(file).resolve().parent / "configs"
    return Path(next(iter(module.__path__))).resolve() / "configs"  # a namespace package


def register_plugin_configs(source: str | os.PathLike[str]) -> Path:
    """Make a plugin's ``configs/<group>/<name>.yaml`` files options of mtlbench's config groups.

    ``source``: the plugin's package name (``__name__`` in the package's ``__init__``: the ``configs`` folder next to
    it), or the path of a folder of ``<group>/<name>.yaml`` files. Groups are mtlbench's own (``model``,
    ``weighting``, ``dataset``, ``analysis``, ``experiment``, ...). Hydra reads the files from there, after
    mtlbench's own folder (``mtlbench.config.PluginConfigs``), so ``mtlbench model=<name>`` finds them with nothing
    passed on the command line. Returns the folder; calling it again for the same folder does nothing.
    """
    folder = _plugin_folder(source)
    if not folder.is_dir():
        raise ConfigError(f"plugin config folder {str(folder)!r} (from {source!r}) is not a folder")
    own = _mtlbench_configs()
    groups = sorted(p.name for p in own.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    for sub in sorted(folder.iterdir()):
        if not sub.is_dir() or sub.name.startswith(("_", ".")):
            continue
        if sub.name not in groups:
            raise ConfigError(
                f"plugin config folder {str(folder)!r}: {sub.name!r} is not a config group of mtlbench; "
                f"its groups are {groups}"
            )
        for path in sorted(sub.rglob("*.yaml")):
            rel = path.relative_to(folder)
            option = rel.relative_to(sub.name).with_suffix("").as_posix()
            if (own / rel).is_file():
                raise ConfigError(
                    f"plugin config {str(path)!r} has the name of mtlbench's own {sub.name}={option}; rename it"
                )
            other = next((f for f in _config_folders if f != folder and (f / rel).is_file()), None)
            if other is not None:
                raise ConfigError(
                    f"plugin config {str(path)!r}: {sub.name}={option} is already an option of the plugin folder "
                    f"{str(other)!r}; rename it"
                )
    if folder not in _config_folders:
        _config_folders.append(folder)
    return folder


def plugin_config_folders() -> list[Path]:
    """The config folders plugins registered (in registration order), after loading the plugins' entry points."""
    load_entry_points()
    return list(_config_folders)


def plugin_config(group: str, option: str) -> Path | None:
    """The plugin file of ``<group>=<option>`` (``option`` may hold ``/``), or None when no plugin has it."""
    for folder in plugin_config_folders():
        path = folder.joinpath(group, *f"{option}.yaml".split("/"))
        if path.is_file():
            return path
    return None
