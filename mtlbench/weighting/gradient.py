"""The base of gradient-based weightings (GradNorm, PCGrad, ...): per-task gradients of the shared parameters.

A subclass implements only its formula in ``forward``: :meth:`GradientWeighting.shared_of` gives θ, the
shared parameters (see below), and :meth:`GradientWeighting.task_gradients` the per-task gradients ∇_θ L_k.

θ is structural: the parameters of ``model.shared_parameters()`` (optionally only those whose name starts
with ``layer``) that the logits of two or more tasks depend on, read once from the autograd graph
(:func:`reached_by`). A subclass can ask for another rule by overriding :meth:`GradientWeighting.shares`
(GradNorm: parameters every task reaches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.weighting.base import WeightingStrategy


def shared_parameters_of(weighting: str, model: nn.Module, prefix: str | None = None) -> list[nn.Parameter]:
    """``model.shared_parameters()`` (optionally those named ``prefix*``); ConfigError when there are none."""
    name = type(model).__name__
    # duck-typed: MultiTaskModel.shared_parameters, or any module that defines one
    shared_of_model: Callable[[], Iterable[nn.Parameter]] | None = getattr(model, "shared_parameters", None)
    candidates = list(shared_of_model()) if shared_of_model is not None else []
    shared = candidates
    if prefix is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        shared = [p for p in candidates if names.get(id(p), "").startswith(prefix)]
        if not shared:
            known = sorted({names[id(p)] for p in candidates})
            raise ConfigError(
                f"weighting {weighting!r}: layer={prefix!r} matches no shared parameter of "
                f"model {name}; shared ones are {known}"
            )
    if not shared:
        raise ConfigError(f"weighting {weighting!r} needs parameters shared by the tasks; model {name} has none")
    return shared


def reached_by(output: ModelOutput, tasks: list[str], params: list[nn.Parameter]) -> Tensor:
    """[K, P] bool: does task k's logit depend on parameter p at all? (structural, from the autograd graph)

    Per-task loss gradients can't tell this: the module computes every task's loss from one stacked tensor,
    so each loss's graph formally touches every parameter (with exact-zero gradients).
    """
    rows = []
    for t in tasks:
        logit = output.logits[t]
        grads = (
            torch.autograd.grad(logit.sum(), params, retain_graph=True, allow_unused=True)
            if logit.requires_grad
            else [None] * len(params)
        )
        rows.append([g is not None for g in grads])
    return torch.tensor(rows, dtype=torch.bool)


def task_gradients(task_losses: Tensor, params: list[nn.Parameter]) -> list[tuple[Tensor | None, ...]]:
    """∇_θ L_k for every task k on ``params`` (None where L_k does not depend on a parameter at all)."""
    return [
        torch.autograd.grad(task_losses[k], params, retain_graph=True, allow_unused=True)
        for k in range(len(task_losses))
    ]


class GradientWeighting(WeightingStrategy):
    """A weighting that works on the per-task gradients of the shared parameters θ (see module doc).

    ``name``: the registered name, for error messages. ``layer``: restrict θ to shared parameters whose name
    starts with it. The model comes through :meth:`attach` (kept out of this module's parameters).
    """

    gradient_based = True
    name = "gradient"
    shared_by = "two or more tasks"  # what :meth:`shares` asks of a parameter, for error messages

    def __init__(self, tasks: list[str], layer: str | None = None) -> None:
        super().__init__(tasks)
        self.layer = layer
        self._model: list[nn.Module] = []  # a list keeps the model out of this module's parameters
        self._params: list[nn.Parameter] = []
        self._shared: list[int] | None = None

    def attach(self, model: nn.Module) -> None:
        self._model = [model]
        self._params = shared_parameters_of(self.name, model, self.layer)
        self._shared = None

    def shares(self, reach: Tensor) -> Tensor:
        """[P] bool from :func:`reached_by`'s [K, P]: is parameter p in θ? Here: two or more tasks reach it."""
        return reach.sum(0) >= 2

    def shared_of(self, output: ModelOutput) -> list[nn.Parameter]:
        """θ (fixed by the architecture: read from the first output's autograd graph, then kept)."""
        if not self._params:
            raise ConfigError(f"weighting {self.name!r} needs attach(model) first: it works on shared weights")
        if self._shared is None:
            shared = self.shares(reached_by(output, self.tasks, self._params))
            self._shared = [i for i in range(len(self._params)) if bool(shared[i])]
        if not self._shared:
            raise ConfigError(
                f"weighting {self.name!r} needs parameters shared by {self.shared_by}; no shared "
                f"parameter of model {type(self._model[0]).__name__} feeds {self.shared_by} "
                f"(tasks {self.tasks})"
            )
        return [self._params[i] for i in self._shared]

    def shared_gradients(
        self, task_losses: Tensor, output: ModelOutput
    ) -> tuple[list[nn.Parameter], list[tuple[Tensor | None, ...]]]:
        """θ and ∇_θ L_k for every task k (None where L_k does not reach a parameter)."""
        params = self.shared_of(output)
        return params, task_gradients(task_losses, params)
