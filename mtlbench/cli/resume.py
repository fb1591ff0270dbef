"""``resume=true`` / ``resume=<run dir>`` of a single run, decided before Hydra creates a run directory.

A single run's directory is timestamped (``hydra.run.dir`` of ``configs/train.yaml``), so the same command started
again gets a new, empty one. :func:`resume_argv` runs before Hydra and turns

- ``resume=<dir>`` into ``resume=true hydra.run.dir=<dir>`` (the directory must hold ``checkpoints/last.ckpt``
  and no ``results.json``);
- ``resume=true`` (without ``hydra.run.dir``) into ``resume=true hydra.run.dir=<found>``: the latest incomplete
  run directory (a checkpoint, no ``results.json``) of the same resolved config among the directories the run
  directory pattern gives for this command (``outputs/<dataset>/<model>/*_seed<seed>`` by default);

or stops with one line when there is nothing to continue. Sweeps are left alone: their job directories are not
timestamped, and ``resume=true`` with the same sweep command continues each job in its own directory.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf, open_dict

from mtlbench.errors import ConfigError
from mtlbench.rundir import CHECKPOINT_DIR, CONFIG_FILE, LAST_CHECKPOINT, RESULTS_FILE

TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0", "null", "none", "")
#: Hydra's command-line options that take a value (the value is not an override)
VALUE_OPTIONS = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun")
#: options that choose another primary config than the one resume_argv composes: left to Hydra
CONFIG_OPTIONS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
_NOW = re.compile(r"\$\{now:[^}]*\}")
_GLOB = "\0glob\0"  # stands for a ${now:...} part of the run directory pattern while the rest is resolved


def resume_argv(argv: list[str]) -> list[str]:
    """``argv`` with ``resume=true`` / ``resume=<dir>`` of a single run turned into ``hydra.run.dir=<dir>``.

    Unchanged without a ``resume`` override, with ``resume=false``, in a sweep, or when ``hydra.run.dir`` is
    given with ``resume=true``. A user error (no run to continue) ends the command with one line.
    """
    from mtlbench.cli import errors

    return cast("list[str]", errors.report(lambda: _resume_argv(list(argv))))


def _override(argv: list[str], key: str) -> tuple[int, str] | None:
    """Position and value of the last ``key=value`` (also ``+key=`` / ``++key=``) among the overrides."""
    found = None
    for i, arg in enumerate(argv[1:], start=1):
        name, sep, value = arg.partition("=")
        if sep and name.lstrip("+") == key:
            found = (i, value)
    return found


def _overrides(argv: list[str]) -> tuple[list[str], bool] | None:
    """The overrides of a command line and whether it asks for a sweep; None when another config is chosen."""
    out: list[str] = []
    multirun = False
    args = iter(argv[1:])
    for arg in args:
        option = arg.split("=", 1)[0]
        if option in CONFIG_OPTIONS:
            return None
        if arg in ("-m", "--multirun"):
            multirun = True
        elif option in VALUE_OPTIONS:
            if "=" not in arg and option not in ("--info", "-i"):
                next(args, None)
        elif not arg.startswith("-"):
            out.append(arg)
    return out, multirun


def _quote(path: str) -> str:
    """A path as the value of a Hydra override (quoted unless it is plain)."""
    if re.fullmatch(r"[\w./-]+", path):
        return path
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _resume_argv(argv: list[str]) -> list[str]:
    asked = _override(argv, "resume")
    if asked is None:
        return argv
    index, value = asked
    parsed = _overrides(argv)
    if value.strip().strip("'\"").lower() in FALSE or parsed is None:
        return argv
    overrides, multirun = parsed
    given_dir = _override(argv, "hydra.run.dir")
    if value.strip().lower() in TRUE:
        if given_dir is not None or multirun:
            return argv  # the directory is given / a sweep continues each job in its own directory
        cfg = _compose([o for o in overrides if o.split("=", 1)[0].lstrip("+") != "resume"])
        if cfg is None or _is_multirun(cfg):
            return argv
        found = find_incomplete(cfg)
        print(f"mtlbench: resume=true: continuing {found}", file=sys.stderr)
    else:
        if multirun:
            raise ConfigError(
                f"resume={value} continues one run; a sweep continues when its command is run again with resume=true"
            )
        if given_dir is not None:
            raise ConfigError(f"resume={value} and hydra.run.dir=... both name the run directory: give one")
        found = check_resumable(Path(value.strip("'\"")))
    out = list(argv)
    out[index] = "resume=true"
    return [*out, f"hydra.run.dir={_quote(str(found))}"]


def _compose(overrides: list[str]) -> DictConfig | None:
    """The config Hydra would compose for these overrides (with its ``hydra`` node); None if it does not compose
    (Hydra then reports the problem itself)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module("mtlbench.configs", version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException):
        return None


def _is_multirun(cfg: DictConfig) -> bool:
    mode = OmegaConf.select(cfg, "hydra.mode")
    return mode is not None and str(getattr(mode, "name", mode)).upper() == "MULTIRUN"


def run_dir_pattern(cfg: DictConfig) -> str:
    """The glob of this config's run directories: ``hydra.run.dir`` resolved, its ``${now:...}`` parts as ``*``."""
    pattern = cast("dict[str, Any]", OmegaConf.to_container(cfg.hydra.run, resolve=False))["dir"]
    probe = copy.deepcopy(cfg)
    OmegaConf.set_readonly(probe, False)
    with open_dict(probe):
        probe.hydra.run.dir = _NOW.sub(_GLOB, str(pattern))
        try:
            resolved = str(probe.hydra.run.dir)
        except Exception as e:  # an interpolation only Hydra's runtime knows
            raise ConfigError(
                f"resume=true: cannot work out where the runs of this config are (hydra.run.dir={pattern}: {e}); "
                "pass the run directory: resume=<dir>"
            ) from None
    return resolved.replace(_GLOB, "*")


def _task_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config a run stores in ``config.yaml`` (everything but the ``hydra`` node)."""
    task = copy.deepcopy(cfg)
    OmegaConf.set_readonly(task, False)
    with open_dict(task):
        task.pop("hydra", None)
    return cast("dict[str, Any]", OmegaConf.to_container(task, resolve=True))


def check_resumable(run_dir: Path) -> Path:
    """``run_dir`` if a run can continue there (``checkpoints/last.ckpt``, no ``results.json``), else ConfigError."""
    if not run_dir.is_dir():
        raise ConfigError(f"resume={run_dir}: no such directory")
    if (run_dir / RESULTS_FILE).exists():
        raise ConfigError(f"resume={run_dir}: that run is complete ({RESULTS_FILE} exists); nothing to continue")
    if not (run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT).exists():
        raise ConfigError(f"resume={run_dir}: no {CHECKPOINT_DIR}/{LAST_CHECKPOINT} in it; nothing to continue from")
    return run_dir


def find_incomplete(cfg: DictConfig) -> Path:
    """The latest incomplete run directory of ``cfg`` (its ``hydra.run.dir`` pattern, the same resolved config,
    ``checkpoints/last.ckpt`` and no ``results.json``; latest = the most recent checkpoint), else ConfigError."""
    from mtlbench.training.run import config_changes

    pattern = run_dir_pattern(cfg)
    now = _task_config(cfg)
    incomplete = [
        d
        for d in sorted(Path().glob(pattern) if not Path(pattern).is_absolute() else _glob_absolute(pattern))
        if d.is_dir() and (d / CHECKPOINT_DIR / LAST_CHECKPOINT).exists() and not (d / RESULTS_FILE).exists()
    ]
    same: list[Path] = []
    other: dict[Path, list[str]] = {}
    for d in incomplete:
        saved = d / CONFIG_FILE
        if not saved.exists():
            continue
        before = cast("dict[str, Any]", OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
        changes = config_changes(before, now)
        if changes:
            other[d] = changes
        else:
            same.append(d)
    if same:
        return max(same, key=lambda d: ((d / CHECKPOINT_DIR / LAST_CHECKPOINT).stat().st_mtime_ns, str(d)))
    hint = ""
    if other:
        d, changes = next(reversed(other.items()))
        hint = f" ({len(other)} incomplete run(s) of another config, e.g. {d} differs in {', '.join(changes[:4])})"
    raise ConfigError(
        f"resume=true: no incomplete run of this config in {pattern} (a run directory with "
        f"{CHECKPOINT_DIR}/{LAST_CHECKPOINT} and no {RESULTS_FILE}){hint}; run without resume to start one, or "
        "pass resume=<run dir>"
    )


def _glob_absolute(pattern: str) -> list[Path]:
    path = Path(pattern)
    return list(Path(path.anchor).glob(str(path.relative_to(path.anchor))))
