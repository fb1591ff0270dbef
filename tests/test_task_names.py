"""Task names are the publisher's: names that are also Python/nn.Module attributes (``forward``, ``train``,
``type``) or carry dots and spaces train and evaluate in every model, weighting and metric."""

from __future__ import annotations

import pytest

import mtlbench
from mtlbench.datasets.lifecycle import LifecycleSimulator
from mtlbench.registry import DATASETS, register_dataset
from mtlbench.training.run import train

from conftest import compose_cfg

RENAMED = {"click": "forward", "long_view": "train", "purchase": "type"}
ODD = {"click": "like.v2", "long_view": "click avatar", "purchase": "purchase"}
SMALL = [
    "dataset.n_rows=4000",
    "dataset.n_users=150",
    "dataset.n_items=120",
    "trainer.max_epochs=1",
    "batch_size=512",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "predictions=true",
    "analysis=none",
]


def renamed_simulator(name: str, mapping: dict[str, str]) -> str:
    """A lifecycle simulator whose tasks (and task roles) carry other names."""
    if name not in DATASETS:

        @register_dataset(name)
        class Renamed(LifecycleSimulator):
            def build(self):
                schema, cols = super().build()
                for old, new in mapping.items():
                    cols[new] = cols.pop(old)
                schema.tasks = [mapping[t] for t in schema.tasks]
                schema.task_roles = {r: mapping[t] for r, t in schema.task_roles.items()}
                return schema, cols

    return name


def overrides(model: str) -> list[str]:
    return [*SMALL, f"model={model}"]  # analysis=none in SMALL: STAN's stage analysis is tested elsewhere


@pytest.mark.slow
@pytest.mark.parametrize("model", mtlbench.list_models())
def test_every_model_trains_on_tasks_named_forward_train_type(model, tmp_path):
    cfg = compose_cfg(overrides(model))
    cfg.dataset.name = renamed_simulator("lifecycle_renamed_tasks", RENAMED)
    res = train(cfg, tmp_path / "run")
    assert list(res["metrics"]["test"]) == ["forward", "train", "type"]
    for task in ("forward", "train", "type"):
        m = res["metrics"]["test"][task]
        assert 0.0 < m["auc"] < 1.0 and m["logloss"] > 0 and "gauc" in m and "auc@scenario=0" in m
    assert (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["equal", "fixed", "uncertainty", "gradnorm", "dwa", "pcgrad"])
def test_every_weighting_trains_on_tasks_named_forward_train_type(weighting, tmp_path):
    extra = ["weighting.weights={forward: 1.0, train: 0.5, type: 2.0}"] if weighting == "fixed" else []
    cfg = compose_cfg([*overrides("ple"), f"weighting={weighting}", *extra])
    cfg.dataset.name = renamed_simulator("lifecycle_renamed_tasks", RENAMED)
    res = train(cfg, tmp_path / "run")
    assert list(res["metrics"]["valid"]) == ["forward", "train", "type"]
    assert all(0.0 < res["metrics"]["test"][t]["auc"] < 1.0 for t in RENAMED.values())


@pytest.mark.slow
def test_task_names_with_dots_and_spaces(tmp_path):
    cfg = compose_cfg([o for o in overrides("esmm") if o != "analysis=none"])  # ESMM's own analysis: pCVR
    cfg.dataset.name = renamed_simulator("lifecycle_odd_task_names", ODD)
    res = train(cfg, tmp_path / "run")
    assert list(res["metrics"]["test"]) == ["like.v2", "click avatar", "purchase"]
    assert res["cvr"]["given"] == "like.v2" and res["cvr"]["task"] == "purchase"  # taken from the task roles
