"""One place for defaults, the constructor: each group YAML shows its constructor's own default values.

``mtlbench.create_model(name, schema)`` and ``mtlbench model=name`` must build the same model (likewise for
weightings and datasets), so every key of ``configs/<group>/<name>.yaml`` (composed by Hydra, so ``defaults:``
inheritance counts) is a parameter of the registered constructor, and its value is that parameter's default
(tuples and lists, read-only and plain mappings compare equal). Fine: ``name``; a parameter without a default
(``path: ???``); a model's ``defaults:`` selecting a weighting (that is the run's weighting group, not a model
setting); a dataset's ``split`` and ``budget``, which belong to the run, not the source (``DATASET_KEYS``).
Protocol variants (``configs/<group>/<protocol>/*.yaml``) differ from the defaults on purpose: their keys only
have to be constructor parameters. A new setting goes into the constructor first, then into the YAML with the
same value; an experiment that needs another value sets it in its experiment file.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import pytest
from omegaconf import OmegaConf

from mtlbench.data.source import DATASET_KEYS
from mtlbench.registry import ANALYSES, DATASETS, MODELS, WEIGHTINGS, Registry

from conftest import REPO, compose_cfg

REGISTRIES: dict[str, Registry[Any]] = {
    "model": MODELS,
    "weighting": WEIGHTINGS,
    "dataset": DATASETS,
    "analysis": ANALYSES,
}
#: keys of a group config that are not constructor settings
RUN_KEYS = {"model": {"name"}, "weighting": {"name"}, "dataset": set(DATASET_KEYS), "analysis": {"name"}}
#: configs that select nothing (no component to build)
NOTHING = {"analysis": {"none"}}
MISSING = "???"


def configured(group: str) -> list[str]:
    """Registered names of ``group`` that have a config ``configs/<group>/<name>.yaml``."""
    return [n for n in REGISTRIES[group].names() if (REPO / "configs" / group / f"{n}.yaml").is_file()]


def variants(group: str) -> list[str]:
    """Protocol variants: ``<protocol>/<name>`` for every ``configs/<group>/<protocol>/<name>.yaml``."""
    root = REPO / "configs" / group
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.glob("*/**/*.yaml"))


def parameters(factory: Any) -> dict[str, inspect.Parameter]:
    """The named keyword parameters of a registered factory (a class's ``__init__``, or the function)."""
    target = factory.__init__ if isinstance(factory, type) else factory
    return {
        n: p
        for n, p in inspect.signature(target).parameters.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def plain(value: Any) -> Any:
    """Tuples as lists and any mapping (read-only ones included) as a dict, recursively."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def same(a: Any, b: Any) -> bool:
    """Equal after :func:`plain`; a bool never equals a number (``True == 1`` in Python)."""
    a, b = plain(a), plain(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False  # a container against a scalar or None
    return a == b


def settings(group: str, option: str) -> tuple[str, dict[str, Any]]:
    """The composed config of ``<group>=<option>``: its registered name and its settings (``???`` kept)."""
    node = compose_cfg([f"{group}={option}"])[group]
    values = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    values = {k: MISSING if OmegaConf.is_missing(node, k) else v for k, v in values.items()}
    return values["name"], {k: v for k, v in values.items() if k not in RUN_KEYS[group]}


def problems(group: str, option: str, check_values: bool) -> list[str]:
    name, values = settings(group, option)
    assert name in REGISTRIES[group], f"configs/{group}/{option}.yaml names unregistered {group} {name!r}"
    factory = REGISTRIES[group].get(name)
    params = parameters(factory)
    where, owner = f"configs/{group}/{option}.yaml", getattr(factory, "__qualname__", repr(factory))
    found = []
    for key, value in values.items():
        if key not in params:
            found.append(f"{where}: {key!r} is not a parameter of {owner} (its parameters: {list(params)})")
            continue
        default = params[key].default
        if not check_values or default is inspect.Parameter.empty:
            continue  # a protocol's own value, or a setting the constructor requires (``path: ???``)
        if value == MISSING:
            found.append(f"{where}: {key!r} is required (???) but {owner} defaults it to {default!r}")
        elif not same(value, default):
            found.append(f"{where}: {key}: YAML {value!r} != {owner} default {default!r}")
    return found


@pytest.mark.parametrize("group, name", [(g, n) for g in REGISTRIES for n in configured(g)])
def test_group_yaml_holds_the_constructor_defaults(group: str, name: str):
    found = problems(group, name, check_values=True)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("group, option", [(g, o) for g in REGISTRIES for o in variants(g)])
def test_protocol_variant_keys_are_constructor_parameters(group: str, option: str):
    found = problems(group, option, check_values=False)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("group", list(REGISTRIES))
def test_every_group_yaml_is_a_registered_name(group: str):
    """A top-level YAML whose name is not registered would escape the defaults check."""
    files = sorted(p.stem for p in (REPO / "configs" / group).glob("*.yaml") if p.stem not in NOTHING.get(group, ()))
    assert files and sorted(configured(group)) == files


#: variant -> (its base model, keys of the base the variant may lack or change, the weighting it selects)
VARIANTS = {
    "stan_wo_beta": ("stan", {"name"}, "stan_wo_beta"),
    "ple_stage": ("ple", {"name", "per"}, "equal"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_model_variants_keep_every_setting_of_their_base(variant: str):
    """STAN w/o Beta is STAN with another loss; PLE_stage is PLE plus a stage input: same network settings."""
    base, own, weighting = VARIANTS[variant]
    b, v = compose_cfg([f"model={base}"]), compose_cfg([f"model={variant}"])
    b_model, v_model = OmegaConf.to_container(b.model), OmegaConf.to_container(v.model)
    shared = {k: x for k, x in b_model.items() if k not in own}
    assert {k: v_model.get(k) for k in shared} == shared
    assert v.model.name == variant and v.weighting.name == weighting
    assert v.analysis == b.analysis or variant == "ple_stage"  # PLE_stage adds the stage analysis PLE lacks
    assert compose_cfg([f"model={variant}", "weighting=dwa"]).weighting.name == "dwa"  # the command line wins


def test_the_check_sees_a_drift():
    assert not same([2], (1,)) and not same(True, 1) and not same({"a": 1}, None) and not same(1, "1")
    assert same([256, 128], (256, 128)) and same({"a": (1, 2)}, {"a": [1, 2]}) and same(2.0, 2)
