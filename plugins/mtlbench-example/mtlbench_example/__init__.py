"""An out-of-tree mtlbench plugin: one of each kind of component, each one file plus one config.

- model ``example_gated`` (``model.py``, ``configs/model/example_gated.yaml``): ``mtlbench model=example_gated``
- weighting ``example_loss_scale`` (``weighting.py``, ``configs/weighting/...``): ``weighting=example_loss_scale``
- dataset ``example_toy`` (``dataset.py``, ``configs/dataset/example_toy.yaml``): ``dataset=example_toy``
- metric ``hit_rate`` (``metric.py``; metrics take no config file): ``'metrics=[auc,hit_rate@5]'``

mtlbench calls :func:`register` through the ``mtlbench.plugins`` entry point before it composes a config.
"""

from __future__ import annotations

from importlib.resources import files

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


def register() -> None:
    # importing the modules runs their @register_* decorators
    from mtlbench_example import dataset, metric, model, weighting  # noqa: F401

    for group in files("mtlbench_example").joinpath("configs").iterdir():  # configs/<group>/<name>.yaml
        for path in group.iterdir():
            if path.name.endswith(".yaml"):
                node = OmegaConf.create(path.read_text())
                ConfigStore.instance().store(group=group.name, name=path.name[: -len(".yaml")], node=node)
