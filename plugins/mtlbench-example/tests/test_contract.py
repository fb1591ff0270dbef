"""The plugin's components honour mtlbench's contracts: the checks mtlbench runs on its own components.

Run with the plugin installed (``pip install -e .`` in this folder, then ``pytest``).
"""

from __future__ import annotations

from mtlbench_example.model import ExampleGated

import mtlbench
from mtlbench.testing import check_dataset, check_model, check_weighting


def test_components_are_registered_through_the_entry_point():
    assert mtlbench.list_models("example*") == ["example_gated"]
    assert "example_loss_scale" in mtlbench.list_weightings() and "example_toy" in mtlbench.list_datasets()


def test_example_gated_honours_the_model_contract():
    """Shapes, gradients on every parameter, same seed same numbers, sparse embeddings, model=example_gated."""
    model = check_model("example_gated", embedding_dim=4)
    assert isinstance(model, ExampleGated)


def test_example_loss_scale_honours_the_weighting_contract():
    """A finite scalar from the loss matrix, finite weights, epoch hooks, state reload, weighting=example_loss_scale."""
    strategy = check_weighting("example_loss_scale")
    assert strategy.running.gt(0).all()  # its running means moved from their start


def test_example_toy_honours_the_dataset_contract():
    """Settings, validated columns, labels, determinism, batches a model trains on, dataset=example_toy."""
    schema, columns = check_dataset("example_toy", n_rows=2000)
    assert schema.tasks == ["click", "like"] and len(columns["click"]) == 2000
