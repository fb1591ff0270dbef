"""Build registered components by name with checked settings (timm's ``_factory`` beside ``_registry``).

``create_model(name, schema, **settings)`` and ``mtlbench model=name`` build the same model: a config's keys are
the constructor's keyword arguments, and an unknown key is a one-line :class:`ConfigError` naming the known ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mtlbench.errors import ConfigError
from mtlbench.registry import DATASETS, MODELS, WEIGHTINGS

if TYPE_CHECKING:
    import torch

    from mtlbench.data.schema import DatasetSchema
    from mtlbench.data.source import DatasetSource
    from mtlbench.weighting.base import WeightingStrategy


def check_settings(
    factory: Callable[..., Any], kind: str, name: str, settings: dict[str, Any], given: tuple[str, ...] = ()
) -> None:
    """Fail with one line when ``settings`` has a key that ``factory`` does not take.

    ``given``: the leading parameters the run passes itself (a model's ``schema``, a weighting's ``tasks``),
    left out of the list of settings the error names.
    """
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(settings) - set(params))
    if unknown:
        known = [p for p in params if p not in ("self", *given)]
        raise ConfigError(f"{kind} {name!r} has no setting(s) {unknown}; its settings are {known}")


def create_model(name: str, schema: DatasetSchema, **settings: Any) -> torch.nn.Module:
    """Build registered model ``name`` for a dataset schema with keyword settings (its config's keys)."""
    factory = MODELS.get(name)
    check_settings(factory, "model", name, settings, given=("schema",))
    return factory(schema, **settings)


def create_weighting(name: str, tasks: list[str], **settings: Any) -> WeightingStrategy:
    """Build registered loss weighting ``name`` for the run's tasks."""
    factory = WEIGHTINGS.get(name)
    check_settings(factory, "weighting", name, settings, given=("tasks",))
    return factory(tasks, **settings)


def create_dataset(name: str, **settings: Any) -> DatasetSource:
    """Build registered dataset source ``name`` (nothing is read until its ``build``)."""
    factory = DATASETS.get(name)
    check_settings(factory, "dataset", name, settings)
    return factory(**settings)
