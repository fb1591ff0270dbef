"""Every registered weighting honours the contract; equal and fixed by hand."""

import pytest
import torch

import mtlbench
from mtlbench.errors import ConfigError
from mtlbench.factory import create_weighting
from mtlbench.models import ModelOutput
from mtlbench.testing import check_weighting

#: weightings that read a model's own outputs (STAN's preferences), and that model
NEEDS_MODEL = {"stan_stage": "stan", "stan_wo_beta": "stan"}


@pytest.mark.parametrize("name", mtlbench.list_weightings())
def test_weighting_contract(name):
    """Every registered weighting, built-in or plugin: a finite scalar loss from the [B, K] loss matrix (with
    missing labels) that reaches the model, finite task weights, epoch hooks, its state dict reloads."""
    strategy = check_weighting(name, model=NEEDS_MODEL.get(name, "mmoe"), model_settings={"embedding_dim": 4})
    assert strategy.tasks == ["click", "buy"]


def matrix():
    losses = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    return losses * mask, mask


def test_equal_is_sum_of_per_task_means_over_labelled_rows():
    losses, mask = matrix()
    out = create_weighting("equal", ["a", "b"])(losses, mask, {}, ModelOutput({}))
    assert out.loss.item() == pytest.approx(3.0 + 3.0)  # a: (1+3+5)/3, b: (2+4)/2 (row 2 unlabelled)


def test_fixed_uses_eta_per_task_and_rejects_unknown_tasks():
    losses, mask = matrix()
    out = create_weighting("fixed", ["a", "b"], weights={"b": 0.5})(losses, mask, {}, ModelOutput({}))
    assert out.loss.item() == pytest.approx(3.0 + 0.5 * 3.0)
    assert out.task_weights.tolist() == [1.0, 0.5]
    with pytest.raises(ConfigError, match="unknown task"):
        create_weighting("fixed", ["a", "b"], weights={"c": 1.0})


def test_equal_is_fixed_with_every_weight_one():
    losses, mask = matrix()
    equal = create_weighting("equal", ["a", "b"])
    fixed = create_weighting("fixed", ["a", "b"])
    assert torch.equal(equal(losses, mask, {}, ModelOutput({})).loss, fixed(losses, mask, {}, ModelOutput({})).loss)
    assert equal.weights.tolist() == [1.0, 1.0]
    with pytest.raises(ConfigError, match="has no setting"):  # equal takes no weights
        create_weighting("equal", ["a", "b"], weights={"a": 2.0})
