"""Structured schema of the top-level run config (Hydra checks types and rejects unknown keys), and the
resolvers the configs use."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import ListConfig, OmegaConf

from mtlbench.errors import ConfigError
from mtlbench.log import get_logger
from mtlbench.registry import MODELS, plugin_config, plugin_config_folders

log = get_logger(__name__)


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    weight_decay: float = 0.0
    fused: bool | None = None  # None: the fused Adam/AdamW kernel (same maths, one kernel for all parameters)
    sparse_embeddings: bool = False  # row-sparse embedding gradients + lazy Adam on the rows a batch touches


@dataclass
class CallbacksConfig:
    early_stopping_patience: int | None = 2
    save_last: bool = True  # last.ckpt after every epoch, so `resume=true` can continue a killed run
    # last.ckpt every N training steps too (mid-epoch; the resumed epoch skips the batches already trained); None: off
    checkpoint_every_n_steps: int | None = 500


@dataclass
class RunConfig:
    dataset: Any = None
    model: Any = None
    weighting: Any = None
    analysis: Any = None
    trainer: Any = None
    logger: Any = None
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    derived: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 2048
    eval_batch_size: int = 16384
    # evaluation metrics by registered name (mtlbench.list_metrics()); a bare ``ndcg`` is ndcg@k for each k of ndcg_k
    metrics: list[str] = field(default_factory=lambda: ["auc", "logloss", "gauc", "ndcg", "sgauc", "scenario", "stage"])
    ndcg_k: list[int] = field(default_factory=lambda: [1, 5])
    monitor: str = "auc"
    cache_dir: str | None = None
    tasks: list[str] | None = None  # train and evaluate only these tasks of the dataset
    # train and evaluate on one lifecycle stage's rows ({rule_stage: Wander}): STAN's Stage_Single (data/subset.py)
    subset: Any = None
    hash_buckets: Any = None  # int, or {field: buckets}: hash large id vocabularies into fixed tables
    threads: int | None = None  # torch intra-op threads; None = the CPUs this process may use / its processes
    # None: the data on the accelerator when it fits (GPU), else gathered from the mapped cache (data/rows.py)
    resident_data: bool | None = None
    embedding_init_std: float | None = None  # normal init of every embedding table; None = the model's own
    predictions: bool = True
    resume: bool = False
    print_summary: bool = True
    verbose: bool = False  # Lightning's banners, tips and progress bars, and warnings a run cannot act on


# -- experiments: sweep over the models that exist ----------------------------------------------------------
_reported_missing: set[tuple[str, ...]] = set()


def _names(args: tuple[Any, ...]) -> list[str]:
    out: list[str] = []
    for a in args:
        if isinstance(a, ListConfig | list | tuple):
            out += _names(tuple(a))
        else:
            out += [s.strip() for s in str(a).split(",") if s.strip()]
    return out


def model_available(name: str) -> bool:
    """A model can be swept when it is registered and ships ``configs/model/<name>.yaml``.

    ``<protocol>/<name>`` is a protocol's variant of a model (e.g. ``sfpnet_table4/mmoe``: MMoE per scenario),
    a config that inherits the model's own and changes what the protocol states.
    """
    config = resources.files("mtlbench.configs").joinpath("model", *f"{name}.yaml".split("/"))
    return name.rsplit("/", 1)[-1] in MODELS and (config.is_file() or plugin_config("model", name) is not None)


def available_models(*wanted: Any) -> str:
    """OmegaConf resolver ``${available_models:[a, b, c]}``: the sweep value ``a,c`` of the models that exist.

    Experiments list the models of a paper's table; models that have not landed yet are left out of the
    sweep (and named once on stderr) instead of failing it.
    """
    names = _names(wanted)
    present = [n for n in names if model_available(n)]
    missing = tuple(n for n in names if n not in present)
    if missing and missing not in _reported_missing:
        _reported_missing.add(missing)
        log.warning("models not available (yet), left out of the sweep: %s", ", ".join(missing))
    if not present:
        raise ConfigError(
            f"none of the models {names} is available; registered models with a config: see `mtlbench --help`"
        )
    return ",".join(present)


def metric_direction(name: str) -> str:
    """OmegaConf resolver ``${metric_direction:${monitor}}``: ``maximize`` or ``minimize``, as the metric's class
    says (``higher_is_better``), for a search over the monitored validation metric."""
    from mtlbench.metrics import higher_is_better

    return "maximize" if higher_is_better(str(name)) else "minimize"


# -- plugin config folders: options of mtlbench's groups --------------------------------------------------
MTLBENCH_CONFIGS = "pkg://mtlbench.configs"


class PluginConfigs(SearchPathPlugin):
    """Hydra search path plugin: the config folders of installed plugins, after mtlbench's own.

    Registered with Hydra by :func:`register_configs`; it acts only on a search path that holds mtlbench's
    configs (another Hydra app in the same process is left alone), loads the ``mtlbench.plugins`` entry points
    (whose functions call :func:`mtlbench.registry.register_plugin_configs`) and appends their folders, so
    ``mtlbench model=<plugin model>`` composes with nothing passed by the user.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(e.path == MTLBENCH_CONFIGS for e in search_path.get_path()):
            return
        for folder in plugin_config_folders():
            search_path.append("mtlbench-plugin", f"file://{folder}")


def register_configs() -> None:
    """The run schema, the plugins' config folders and the resolvers the configs use (``available_models``,
    ``metric_direction``)."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    Plugins.instance().register(PluginConfigs)
    OmegaConf.register_new_resolver("available_models", available_models, replace=True)
    OmegaConf.register_new_resolver("metric_direction", metric_direction, replace=True)
