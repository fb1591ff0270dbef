"""Check the ``mtlbench`` command line before Hydra runs: group options, keys, value types and dataset paths.

Why before Hydra: Hydra reports an unknown option with its whole config search path, an unknown key with the
advice to add it with ``+`` (which then reaches a constructor as an unexpected argument), a wrong type in
OmegaConf's words, and it does so after the run directory exists; a missing data file showed up only after torch
and Lightning were imported and the run had started. Here a mistake ends in one line that names the key,
option, value or path and suggests the closest known name, and nothing is written.

Two steps: :func:`check_command_line` (Hydra's own parser; a ``dataset.path`` of the command line is checked
from the command line alone, before anything heavy is imported; then one compose with the command line's group
choices, on which every key override is looked up and applied as Hydra applies it) and
:func:`check_added_settings` (after the plugins are loaded: a key added with ``+`` to a component's config must
be a parameter of the component, which only its constructor knows: Lightning's Trainer, a registered model...).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, QuotedString
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtlbench.errors import ConfigError, DataError
from mtlbench.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")

CONFIG_MODULE = "mtlbench.configs"
CONFIG_NAME = "train"
#: groups whose config node is the settings of a registered component: ``+group.key`` must be a parameter of it
COMPONENT_GROUPS = ("model", "weighting", "dataset", "analysis")
#: the leading parameters a run passes a component itself (as in ``mtlbench.factory``), not settings
GIVEN = {"model": ("schema",), "weighting": ("tasks",)}
#: keyword arguments ``mtlbench.training.run.train`` passes to Lightning's Trainer itself
TRAINER_GIVEN = ("logger", "callbacks", "default_root_dir", "use_distributed_sampler", "plugins")
#: command-line flags after which Hydra, not these checks, handles the command line
SKIP_FLAGS = ("help", "hydra_help", "info", "shell_completion", "config_path", "config_name", "config_dir")


@dataclass
class Addition:
    """A ``+group.key=value`` whose key the group's config does not have: checked against the component."""

    group: str
    key: str
    line: str


@dataclass
class CommandLine:
    """What the first check found that the second needs: the composed config and the keys added to it."""

    config: DictConfig
    additions: list[Addition] = field(default_factory=list)


def safely(check: Callable[..., T], *args: Any) -> T | None:
    """Run a check; should the check itself fail (a bug here, not a mistake of the user's), leave the command
    line to Hydra rather than stop a run that may be fine. ``HYDRA_FULL_ERROR=1`` shows such a failure."""
    from mtlbench.cli.errors import USER_ERRORS

    try:
        return check(*args)
    except USER_ERRORS:
        raise
    except Exception:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.debug("command-line check %s failed; Hydra checks the command line", check.__name__, exc_info=True)
        return None


def hydra_args(argv: Sequence[str]) -> Any:
    """The command line as Hydra's own argument parser reads it (flags and the list of overrides)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(list(argv))


def suggest(word: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``word``, if any is close (difflib), for "did you mean"."""
    close = difflib.get_close_matches(word, sorted(set(known)), n=1, cutoff=0.6)
    return close[0] if close else None


# -- config groups and their options ----------------------------------------------------------------------
def group_options(loader: Any, group: str) -> list[str]:
    """Every option of a config group, those of its sub-folders as ``sub/option`` (``sfpnet_table4/mmoe``)."""
    from hydra.core.object_type import ObjectType

    options = list(loader.get_group_options(group, results_filter=ObjectType.CONFIG))
    for sub in loader.get_group_options(group, results_filter=ObjectType.GROUP):
        options += [f"{sub}/{o}" for o in group_options(loader, f"{group}/{sub}")]
    return sorted(set(options))


def is_group(loader: Any, name: str) -> bool:
    """Whether ``name`` (``model``, ``hydra/launcher``) is a config group of the search path."""
    from hydra.core.object_type import ObjectType

    return bool(loader.get_group_options(name, results_filter=None)) or bool(
        loader.get_group_options(name, results_filter=ObjectType.GROUP)
    )


def _values(override: Override) -> list[str]:
    """The value(s) of an override as strings: one, or every choice of a sweep (``a,b``, ``range(3)``)."""
    if override.is_discrete_sweep() and override.value_type is not None:
        try:
            return list(override.sweep_string_iterator())
        except HydraException:  # a glob without a config loader: Hydra expands it
            return []
    if override.is_sweep_override():  # interval(...): a sweeper's search space
        return []
    return [override.get_value_element_as_str()]


def _raw_values(override: Override) -> list[Any]:
    """The value(s) of an override as the config receives them (quotes removed)."""
    if not override.is_sweep_override():
        return [override.value()]
    if not override.is_discrete_sweep():
        return []
    return [x.text if isinstance(x, QuotedString) else x for x in override.sweep_iterator()]


def _first(override: Override) -> str | None:
    """The override with a sweep reduced to its first value: the first job of a sweep is composed."""
    if override.is_delete() or not override.is_sweep_override():
        return override.input_line
    values = _values(override)
    return f"{override.get_key_element()}={values[0]}" if values else None


def check_options(loader: Any, override: Override, reload: Callable[[], bool]) -> None:
    """Each chosen option of a group override exists; else one line with the closest option and the list."""
    group = override.key_or_group
    for value in _values(override):
        if value in ("null", "None") or override.is_delete():
            continue
        options = group_options(loader, group)
        if value not in options and reload():  # plugins store their configs when loaded
            options = group_options(loader, group)
        if value not in options:
            close = suggest(value, options)
            hint = f"; did you mean {close}?" if close else ""
            raise ConfigError(f"no option {value!r} in group {group}{hint} (options: {', '.join(options)})")


# -- keys -------------------------------------------------------------------------------------------------
def _plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as nested dicts, interpolations unresolved (``???`` kept): for looking keys up."""
    out = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    assert isinstance(out, dict)
    return cast("dict[str, Any]", out)


def _lookup(tree: Any, parts: list[str]) -> tuple[bool, Any, int]:
    """Walk ``parts`` down ``tree``: (found, the deepest node reached, how many parts were found)."""
    node = tree
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, node, i
    return True, node, len(parts)


def _leaves(tree: dict[str, Any], prefix: str = "") -> Iterable[str]:
    for k, v in tree.items():
        path = f"{prefix}{k}"
        yield path
        if isinstance(v, dict):
            yield from _leaves(v, f"{path}.")


def unknown_key(tree: dict[str, Any], key: str, add_hint: str | None = None) -> ConfigError:
    """The one-line error for a key the config does not have, with the closest key as "did you mean"."""
    parts = key.split(".")
    _, parent, depth = _lookup(tree, parts)
    where = ".".join(parts[:depth])
    missing = parts[depth]
    siblings = [str(k) for k in parent] if isinstance(parent, dict) else []
    close = suggest(missing, siblings)
    if close is not None:
        hint = f"; did you mean {f'{where}.' if where else ''}{close}?"
    elif parts[0] == "hydra":
        hint = ""
    else:  # a key of another node: ``max_epochs`` for ``trainer.max_epochs``, ``lr`` for ``optimizer.lr``
        own = f"{where}." if where else "hydra."  # not the node itself, never Hydra's keys
        others = [p for p in _leaves(tree) if "." in p and not p.startswith(("hydra.", own))]
        names = [p.rsplit(".", 1)[1] for p in others]
        near = suggest(missing, names) if not where else (missing if missing in names else None)
        paths = sorted((p for p in others if p.rsplit(".", 1)[1] == near), key=lambda p: (p.count("."), p))
        hint = f"; did you mean {' or '.join(paths)}?" if paths else ""
    node = f"in {where}" if where else "in the config"
    listing = f" (keys {node}: {', '.join(siblings)})" if siblings and not hint else ""
    extra = f"; {add_hint}" if add_hint and close is None else ""
    return ConfigError(f"no key {missing!r} {node}{hint}{listing}{extra}")


def _expected_type(ex: OmegaConfBaseException) -> str | None:
    from omegaconf._utils import get_type_hint, type_str

    node = ex.child_node
    if node is None:
        return None
    hint = get_type_hint(node)
    if hint is Any or hint is None:
        return None
    name = str(type_str(hint))
    return f"{name[len('Optional[') : -1]} or null" if name.startswith("Optional[") else name


def bad_value(override: Override, ex: Exception) -> ConfigError:
    """One line for a value the schema refuses: the key, the value and the type it expects."""
    cause: BaseException | None = ex
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "_initialized", False):
        key = cause.full_key or override.key_or_group
        expected = _expected_type(cause)
        value = cause.value if cause.value is not None else override.get_value_element_as_str()
        if expected:
            return ConfigError(f"{key}={value}: expected a value of type {expected}, got {value!r}")
        return ConfigError(f"{key}={value}: {str(cause.msg or cause).splitlines()[0]}")
    return ConfigError(f"{override.input_line}: {str(ex).splitlines()[0]}")


def _apply(override: Override, cfg: DictConfig) -> None:
    """Apply one key override to ``cfg`` exactly as Hydra does when it composes."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    ConfigLoaderImpl._apply_overrides_to_config([override], cfg)


def check_key(tree: dict[str, Any], cfg: DictConfig, override: Override, groups: set[str]) -> Addition | None:
    """The key of a ``key=value`` / ``~key`` override exists; a ``+key`` is allowed where keys may be added.

    ``+`` may add a key under ``hydra`` and inside free-form values (``dataset.categorical``, ``derived``); at
    the top level and in the schema's own sections (``optimizer``, ``callbacks``) it may not; in a component's
    config (``model``, ``trainer``...) the key is returned, to be checked against the component's parameters.
    """
    key = override.key_or_group
    parts = key.split(".")
    found, parent, depth = _lookup(tree, parts)
    adding = override.is_add() or override.is_force_add()
    if not found and parent is None and 0 < depth < len(parts) and not adding and not override.is_delete():
        where = ".".join(parts[:depth])
        raise ConfigError(
            f"{where} is null, so it has no key {parts[depth]!r}: add it with +{override.input_line}, "
            f"or set {where} whole ({where}={{{'.'.join(parts[depth:])}: ...}})"
        )
    if found or not isinstance(parent, dict):  # below a plain value: Hydra decides
        return None
    section = parts[0]
    if not adding:
        component = depth == 1 and section in groups and not override.is_delete()
        add = f"to pass a setting its config does not list: +{override.input_line}" if component else None
        raise unknown_key(tree, key, add)
    if section == "hydra" and depth > 0:
        return None
    if depth == 0:
        raise unknown_key(tree, key)
    if depth == 1 and section in groups:
        return Addition(section, parts[1], override.input_line or key)
    if depth == 1 and OmegaConf.get_type(cfg, section) is not dict:
        raise unknown_key(tree, key)  # a section of the structured schema (optimizer, callbacks)
    return None


# -- paths ------------------------------------------------------------------------------------------------
def files_hint(dataset: Any) -> str:
    """Where a dataset's files come from, as its config's ``#   files: ...`` comment says ("" if it has none)."""
    from importlib import resources

    if not isinstance(dataset, str):
        return ""
    config = resources.files(CONFIG_MODULE).joinpath("dataset").joinpath(f"{dataset}.yaml")
    if not config.is_file():
        return ""
    found = re.search(r"^#\s+files:\s*(.+?)\s*$", config.read_text(), flags=re.M)
    if found is None:
        return f" (dataset {dataset})"
    return f" (dataset {dataset}; files: {' '.join(found.group(1).split())})"


def check_path(path: Any, dataset: Any = None) -> None:
    """A dataset path that is set must exist: found here, before torch is imported, not after startup."""
    if not isinstance(path, str) or path.strip() in ("", "???", "null"):
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"dataset.path: {str(p)!r} does not exist{files_hint(dataset)}")


def check_dataset_path(cfg: DictConfig) -> None:
    """The composed config's ``dataset.path`` (set on the command line or by an experiment) exists."""
    try:
        path = OmegaConf.select(cfg, "dataset.path", throw_on_missing=False)
    except OmegaConfBaseException:  # an interpolation only the run can resolve
        return
    check_path(path, OmegaConf.select(cfg, "dataset.name", default=None))


# -- the two checks ---------------------------------------------------------------------------------------
def check_command_line(argv: Sequence[str], load_plugins: Callable[[], None]) -> CommandLine | None:
    """Check the overrides of ``argv`` (group options, keys, types, dataset paths) with one cheap compose.

    Returns None when Hydra handles the command line itself (``--help``, ``--info``, another config).
    ``load_plugins`` is called only when an option is not found (a plugin may provide it).
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    args = hydra_args(argv)
    if any(getattr(args, flag, None) for flag in SKIP_FLAGS) or args.experimental_rerun:
        return None
    overrides = OverridesParser.create().parse_overrides(args.overrides)
    chosen = [_raw_values(o) for o in overrides if o.key_or_group == "dataset" and not o.is_delete()]
    dataset = chosen[-1][0] if chosen and chosen[-1] else None
    for o in overrides:  # first of all, from the command line alone: composing may import the plugins
        if o.key_or_group == "dataset.path" and not o.is_delete():
            for value in _raw_values(o):
                check_path(value, dataset)
    loaded = False

    def reload() -> bool:
        nonlocal loaded
        from importlib.metadata import entry_points

        from mtlbench.registry import ENTRY_POINT_GROUP

        if loaded or not list(entry_points(group=ENTRY_POINT_GROUP)):
            return False
        loaded = True
        load_plugins()
        return True

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        loader = hydra.config_loader
        group_overrides, key_overrides = [], []
        for o in overrides:
            if o.package is None and is_group(loader, o.key_or_group):
                group_overrides.append(o)
            else:
                key_overrides.append(o)
        for o in group_overrides:
            o.config_loader = loader  # a glob (``model=glob(*ple*)``) lists the group's options
            check_options(loader, o, reload)
        first = [_first(o) for o in group_overrides]
        cfg = compose(config_name=CONFIG_NAME, overrides=[x for x in first if x], return_hydra_config=True)

    tree = _plain(cfg)
    groups = {g for g in (*COMPONENT_GROUPS, "trainer", "logger") if isinstance(tree.get(g), dict)}
    result = CommandLine(config=copy.deepcopy(cfg))
    parser = OverridesParser.create()
    for o in key_overrides:
        if o.package is not None:  # ``key@pkg=...`` of a group that does not exist: Hydra says so
            continue
        addition = check_key(tree, cfg, o, groups)
        if addition is not None:
            result.additions.append(addition)
        values = _values(o)
        for i, value in enumerate(values):
            target = result.config if i == 0 else copy.deepcopy(cfg)
            single = o if len(values) == 1 else parser.parse_override(f"{o.get_key_element()}={value}")
            problem = None
            try:
                _apply(single, target)
            except (ConfigCompositionException, OmegaConfBaseException) as ex:
                problem = bad_value(single, ex)
            if problem is not None:  # raised on its own: the line names key, value and type, nothing to chain
                raise problem
    check_dataset_path(result.config)
    return result


def parameters(factory: Any) -> tuple[list[str], bool]:
    """The keyword parameters a factory takes, and whether it takes any (``**kwargs``)."""
    params = inspect.signature(factory).parameters
    named = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return named, any(p.kind is p.VAR_KEYWORD for p in params.values())


def component_parameters(group: str, node: Any) -> tuple[str, list[str]] | None:
    """What a group's config node is passed to, and its parameters; None when anything goes (``**kwargs``)."""
    from mtlbench.registry import ANALYSES, DATASETS, MODELS, WEIGHTINGS

    if group == "trainer":
        import pytorch_lightning as pl

        named, free = parameters(pl.Trainer)
        return None if free else ("Lightning's Trainer", [n for n in named if n not in TRAINER_GIVEN])
    registries = {"model": MODELS, "weighting": WEIGHTINGS, "dataset": DATASETS, "analysis": ANALYSES}
    name = node.get("name") if isinstance(node, DictConfig) else None
    if group not in registries or not isinstance(name, str) or name not in registries[group]:
        return None  # logger settings go to the logger's own class; an unknown name fails later, in one line
    named, free = parameters(registries[group].get(name))
    given = GIVEN.get(group, ())
    return None if free else (f"{group} {name!r}", [n for n in named if n not in given])


def check_added_settings(command_line: CommandLine) -> None:
    """Each ``+group.key`` the group's config lacks is a parameter of the component the config builds."""
    for add in command_line.additions:
        node = command_line.config.get(add.group)
        owner = component_parameters(add.group, node)
        if owner is None:
            continue
        what, known = owner
        if add.key in known:
            continue
        keys = [str(k) for k in node] if isinstance(node, DictConfig) else []
        close = suggest(add.key, [k for k in [*keys, *known] if k != add.key])
        settings = f"its settings: {', '.join(known)}" if known else "it takes none"
        hint = f"; did you mean {add.group}.{close}?" if close else f" ({settings})"
        raise ConfigError(f"{add.line}: {what} has no setting {add.key!r}{hint}")
