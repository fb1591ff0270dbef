"""mtlbench.testing's checks fail on components that break the contract (and say what broke), and
register_plugin_configs makes a folder's configs options of mtlbench's groups."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import mtlbench
from mtlbench import registry
from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.data.source import DatasetSource
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import FeatureEmbedding, Towers
from mtlbench.registry import DATASETS, MODELS
from mtlbench.testing import (
    check_dataset,
    check_deterministic,
    check_forward_backward,
    check_model,
    check_sparse_embeddings,
    check_weighting,
    compose,
)
from mtlbench.weighting.base import WeightedLoss, WeightingStrategy, task_means


class Tiny(MultiTaskModel):
    """A correct model: embeddings -> one linear tower per task."""

    def __init__(self, schema: DatasetSchema, embedding_dim: int = 4, tower: tuple[int, ...] = ()) -> None:
        super().__init__(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.towers = Towers(self.tasks, self.embedding.output_dim, list(tower))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = self.embedding.flat(batch)
        return self.towers([x] * len(self.tasks))


class Reversed(Tiny):
    def forward(self, batch):
        return dict(reversed(list(super().forward(batch).items())))


class OneValue(Tiny):
    def forward(self, batch):
        return {t: v[:1] for t, v in super().forward(batch).items()}


class Unused(Tiny):
    def __init__(self, schema, embedding_dim=4):
        super().__init__(schema, embedding_dim)
        self.spare = nn.Linear(2, 2)


class Infinite(Tiny):
    def forward(self, batch):
        return {t: v / 0.0 for t, v in super().forward(batch).items()}


class Unseeded(Tiny):
    """Initialised from Python's own RNG, which torch.manual_seed does not seed."""

    def __init__(self, schema, embedding_dim=4):
        super().__init__(schema, embedding_dim)
        self.shift = nn.Parameter(torch.tensor(random.random()))

    def forward(self, batch):
        return {t: v + self.shift for t, v in super().forward(batch).items()}


class DenseTable(Tiny):
    """Reads its whole table besides the looked-up rows: the table's gradient is not row-sparse."""

    def forward(self, batch):
        reg = self.embedding.table.weight.sum()
        return {t: v + 0.0 * reg for t, v in super().forward(batch).items()}


class NoEmbedding(MultiTaskModel):
    def __init__(self, schema):
        super().__init__(schema)
        self.head = nn.Linear(1, len(self.tasks))

    def forward(self, batch):
        out = self.head(batch["numeric"])
        return {t: out[:, k] for k, t in enumerate(self.tasks)}


@pytest.mark.parametrize(
    "cls, words",
    [
        (Reversed, "forward returned logits for ['buy', 'click']"),
        (OneValue, "have shape (1,), expected (64,)"),
        (Unused, "parameters without a gradient from the tasks' losses: ['spare.weight', 'spare.bias']"),
        (Infinite, "logits of task 'click' are not finite"),
    ],
)
def test_forward_backward_check_names_the_broken_rule(cls, words):
    with pytest.raises(AssertionError) as err:
        check_forward_backward(cls)
    assert str(err.value).startswith(f"model {cls.__qualname__}: ") and words in str(err.value)


def test_a_correct_model_class_passes_every_check_and_its_parts_fail_on_their_own_breakage():
    model = check_model(Tiny)  # a class: no config to check
    assert isinstance(model, Tiny) and model.embedding.table.weight.grad is not None
    with pytest.raises(AssertionError, match="two builds with seed 0 differ in \\['shift'\\]"):
        check_deterministic(Unseeded)
    with pytest.raises(AssertionError, match="table 'embedding' has no row-sparse gradient"):
        check_sparse_embeddings(DenseTable)
    with pytest.raises(AssertionError, match="no embedding table"):
        check_sparse_embeddings(NoEmbedding)
    check_model(NoEmbedding)  # sparse embeddings are checked only where there is a FeatureEmbedding


def test_model_config_check_needs_the_registered_models_config(monkeypatch):
    monkeypatch.setitem(MODELS._entries, "tiny_unconfigured", Tiny)
    with pytest.raises(AssertionError, match="model=tiny_unconfigured does not compose"):
        check_model("tiny_unconfigured")
    assert isinstance(check_model("tiny_unconfigured", config=False), Tiny)


# -- weightings ------------------------------------------------------------------------------------------------
class Weighting(WeightingStrategy):
    def __init__(self, tasks: list[str], broken: str = "") -> None:
        super().__init__(tasks)
        self.broken = broken

    def forward(self, losses, mask, batch, output):
        per_task = task_means(losses, mask)
        if self.broken == "vector":
            return WeightedLoss(per_task)
        if self.broken == "nan":
            return WeightedLoss(per_task.sum() * float("nan"))
        if self.broken == "detached":
            return WeightedLoss(per_task.sum().detach())
        if self.broken == "weights":
            return WeightedLoss(per_task.sum(), torch.ones(len(self.tasks) + 1))
        if self.broken == "tuple":
            return per_task.sum(), None
        return WeightedLoss(per_task.sum(), torch.ones(len(self.tasks)))


@pytest.mark.parametrize(
    "broken, words",
    [
        ("vector", "the loss has shape (2,), expected a scalar"),
        ("nan", "the loss at step 0 is nan"),
        ("detached", "the loss carries no gradient"),
        ("weights", "task_weights have shape (3,), expected (2,) or (64, 2)"),
        ("tuple", "forward returned tuple, not WeightedLoss"),
    ],
)
def test_weighting_check_names_the_broken_rule(broken, words):
    assert check_weighting(Weighting, model=Tiny).tasks == ["click", "buy"]  # the correct one passes
    with pytest.raises(AssertionError) as err:
        check_weighting(Weighting, model=Tiny, broken=broken)
    assert words in str(err.value)


# -- datasets --------------------------------------------------------------------------------------------------
class Source(DatasetSource):
    def __init__(self, n: int = 300, broken: str = "", seed: int = 0) -> None:
        self.n, self.broken, self.seed = n, broken, seed

    def build(self):
        rng = np.random.default_rng(None if self.broken == "unseeded" else self.seed)
        label = rng.integers(0, 2, self.n).astype(np.float32)
        if self.broken == "one_class":
            label[:] = 1.0
        if self.broken == "float64":
            label = label.astype(np.float64)
        cols = {"user": rng.integers(0, 10, self.n), "item": rng.integers(0, 5, self.n), "y": label}
        if self.broken == "vocabulary":
            cols["item"][0] = 7
        schema = DatasetSchema(
            "src", [Feature("user", vocab_size=10, role="user"), Feature("item", vocab_size=5)], tasks=["y"]
        )
        return schema, cols


@pytest.mark.parametrize(
    "broken, words",
    [
        ("one_class", "label column 'y' has only the value(s) [1.0]"),
        ("float64", "label column 'y' is float64, not float32"),
        ("unseeded", "two builds with the same settings differ in columns"),
        ("vocabulary", "its columns do not match its schema"),
    ],
)
def test_dataset_check_names_the_broken_rule(monkeypatch, broken, words):
    monkeypatch.setitem(DATASETS._entries, "tmp_source", Source)
    schema, cols = check_dataset("tmp_source", config=False)  # the correct one passes, batches included
    assert schema.tasks == ["y"] and len(cols["y"]) == 300
    with pytest.raises(AssertionError) as err:
        check_dataset("tmp_source", config=False, model=None, broken=broken)
    assert words in str(err.value)


# -- plugin config folders -------------------------------------------------------------------------------------
def write_plugin(root, package="tmp_plugin_pkg"):
    """A plugin package ``<root>/<package>`` with configs/model/tiny_plugged.yaml and an experiment."""
    pkg = root / package
    (pkg / "configs" / "model").mkdir(parents=True)
    (pkg / "configs" / "experiment").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "configs" / "model" / "tiny_plugged.yaml").write_text("name: tiny_plugged\nembedding_dim: 4\ntower: [3]\n")
    (pkg / "configs" / "experiment" / "tiny_plugged.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: tiny_plugged\nseed: 7\n"
    )
    return pkg


def test_register_plugin_configs_adds_a_packages_config_folder_to_mtlbench_groups(tmp_path, monkeypatch):
    pkg = write_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_config_folders", [])
    monkeypatch.setitem(MODELS._entries, "tiny_plugged", Tiny)
    assert mtlbench.register_plugin_configs("tmp_plugin_pkg") == (pkg / "configs").resolve()
    assert mtlbench.register_plugin_configs(pkg / "configs") == (pkg / "configs").resolve()  # once only
    assert registry._config_folders == [(pkg / "configs").resolve()]
    cfg = compose(["model=tiny_plugged"])
    assert cfg.model.name == "tiny_plugged" and list(cfg.model.tower) == [3]
    cfg = compose(["experiment=tiny_plugged"])  # its header and defaults list are Hydra's to read
    assert cfg.seed == 7 and cfg.model.name == "tiny_plugged"
    assert compose(["model=mmoe"]).model.name == "mmoe"  # mtlbench's own options are unchanged
    check_model("tiny_plugged")  # its config check composes model=tiny_plugged from the plugin's folder
    sys.modules.pop("tmp_plugin_pkg", None)


def test_register_plugin_configs_refuses_what_hydra_would_ignore_or_shadow(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_config_folders", [])
    with pytest.raises(ConfigError, match="is not a folder"):
        mtlbench.register_plugin_configs(tmp_path / "nowhere")
    (tmp_path / "a" / "models").mkdir(parents=True)
    with pytest.raises(ConfigError, match="'models' is not a config group of mtlbench; its groups are .*'model'"):
        mtlbench.register_plugin_configs(tmp_path / "a")
    (tmp_path / "b" / "model").mkdir(parents=True)
    (tmp_path / "b" / "model" / "mmoe.yaml").write_text("name: mmoe\n")
    with pytest.raises(ConfigError, match="has the name of mtlbench's own model=mmoe; rename it"):
        mtlbench.register_plugin_configs(tmp_path / "b")
    assert registry._config_folders == []
    for plugin in ("c", "d"):  # two plugins, one option name
        (tmp_path / plugin / "model").mkdir(parents=True)
        (tmp_path / plugin / "model" / "same.yaml").write_text("name: same\n")
    mtlbench.register_plugin_configs(tmp_path / "c")
    with pytest.raises(ConfigError, match="model=same is already an option of the plugin folder .*c'; rename it"):
        mtlbench.register_plugin_configs(tmp_path / "d")
    assert registry._config_folders == [(tmp_path / "c").resolve()]
