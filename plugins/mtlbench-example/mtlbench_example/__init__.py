"""An out-of-tree mtlbench plugin: registers the model ``example_gated`` with its Hydra config
``model=example_gated``, and the metric ``hit_rate`` (``metrics=[auc,hit_rate@5]``).

mtlbench calls :func:`register` through the ``mtlbench.plugins`` entry point before it composes a config.
"""

from __future__ import annotations

from importlib.resources import files

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


def register() -> None:
    from mtlbench_example import metric, model  # noqa: F401  (their decorators register the metric and the model)

    for path in files("mtlbench_example").joinpath("configs", "model").iterdir():
        if path.name.endswith(".yaml"):
            node = OmegaConf.create(path.read_text())
            ConfigStore.instance().store(group="model", name=path.name[: -len(".yaml")], node=node)
