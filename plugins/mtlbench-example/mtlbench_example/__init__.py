"""An out-of-tree mtlbench plugin: one of each kind of component, each one file plus one config.

- model ``example_gated`` (``model.py``, ``configs/model/example_gated.yaml``): ``mtlbench model=example_gated``
- weighting ``example_loss_scale`` (``weighting.py``, ``configs/weighting/...``): ``weighting=example_loss_scale``
- dataset ``example_toy`` (``dataset.py``, ``configs/dataset/example_toy.yaml``): ``dataset=example_toy``
- metric ``hit_rate`` (``metric.py``; metrics take no config file): ``'metrics=[auc,hit_rate@5]'``

mtlbench calls :func:`register` through the ``mtlbench.plugins`` entry point before it composes a config.
``tests/`` runs mtlbench's contract checks (``mtlbench.testing``) on the model, the weighting and the dataset.
"""

from __future__ import annotations

import mtlbench


def register() -> None:
    """Register the components (importing a module runs its ``@register_*`` decorator) and the configs."""
    from mtlbench_example import dataset, metric, model, weighting  # noqa: F401

    mtlbench.register_plugin_configs(__name__)  # configs/<group>/<name>.yaml: options of mtlbench's groups
