import pytest
import torch

from mtlbench.errors import ConfigError
from mtlbench.factory import create_weighting
from mtlbench.models import ModelOutput


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
