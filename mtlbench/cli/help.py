"""``mtlbench --help``: the config groups with their options and the run's keys, generated, never hand-listed.

The text lives in ``configs/hydra/help/mtlbench.yaml`` (Hydra's ``hydra.help.template``, so ``--help`` keeps
Hydra's handling of overrides and ``--hydra-help`` stays Hydra's own); the lists come from the resolvers below,
which read the config search path Hydra composed from (mtlbench's config folder, plugins' config folders,
Hydra's launchers) and the run schema (``mtlbench.config.RunConfig``), so a new model, launcher or key shows up
without editing the help.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from omegaconf import OmegaConf

#: Hydra's own groups worth naming in the app's help (the others are Hydra's internals: ``--hydra-help``)
HYDRA_GROUPS = ("hydra/launcher",)
WIDTH = 110
INDENT = 18


def _loader() -> Any:
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance().hydra
    assert hydra is not None, "the help is rendered by Hydra's --help"
    return hydra.config_loader


def _choices() -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return dict(HydraConfig.get().runtime.choices)
    except ValueError:  # HydraConfig not set
        return {}


def _rows(rows: list[tuple[str, str]]) -> str:
    lines = []
    for name, text in rows:
        body = textwrap.fill(text, width=WIDTH, initial_indent=" " * INDENT, subsequent_indent=" " * INDENT)
        lines.append(f"  {name:<{INDENT - 3}} {body[INDENT:]}" if len(name) < INDENT - 2 else f"  {name}\n{body}")
    return "\n".join(lines)


def config_groups() -> str:
    """Each config group with its options, the current choice in brackets (resolver ``${mtlbench_groups:}``)."""
    from mtlbench.cli.checks import group_options

    loader = _loader()
    choices = _choices()
    groups = sorted(g for g in loader.list_groups("") if g != "hydra") + list(HYDRA_GROUPS)
    rows = []
    for group in groups:
        chosen = choices.get(group)
        options = [f"[{o}]" if o == chosen else o for o in group_options(loader, group)]
        rows.append((group, ", ".join(options)))
    return _rows(rows)


def top_level_keys() -> str:
    """The keys of the run schema that are not a group's (resolver ``${mtlbench_keys:}``)."""
    from mtlbench.config import RunConfig

    groups = set(_loader().list_groups(""))
    keys: list[str] = []
    sections: list[str] = []
    for f in dataclasses.fields(RunConfig):
        if f.name in groups:
            continue
        section = f.default_factory
        if dataclasses.is_dataclass(section):  # optimizer.*, callbacks.*
            sections += [f"{f.name}.{g.name}" for g in dataclasses.fields(section)]
        else:
            keys.append(f.name)
    return textwrap.fill(", ".join(keys + sections), width=WIDTH, initial_indent="  ", subsequent_indent="  ")


def install() -> None:
    """Register the resolvers the help template uses (``mtlbench --help`` renders it)."""
    OmegaConf.register_new_resolver("mtlbench_groups", config_groups, replace=True)
    OmegaConf.register_new_resolver("mtlbench_keys", top_level_keys, replace=True)
