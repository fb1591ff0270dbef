"""Helpers for the gradient-based weightings that rewrite the shared gradient (MGDA, GradDrop, GradVac, IMTL).

- :func:`apply_shared_gradient` returns a surrogate loss whose backward puts a chosen gradient on θ (the shared
  parameters) and the plain Σ_k ∇L_k on every other parameter; its value is Σ_k L_k.
- :class:`Representation` captures a submodule's output Z with a forward hook, for the methods that work on
  gradients w.r.t. a shared representation (MGDA-UB, GradDrop, optionally IMTL); :func:`apply_rep_gradient` is the
  surrogate that puts a chosen gradient on Z (so backward takes it to every parameter upstream of Z).

The per-task gradient matrix and the parameter surrogate itself are :mod:`mtlbench.weighting.shared_update`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from mtlbench.errors import ConfigError
from mtlbench.weighting.shared_update import with_shared_gradient


def surrogate(tensors: list[Tensor], grads: list[Tensor]) -> Tensor:
    """Σ ⟨t, g⟩ − its value: zero, with gradient g on every t (g detached)."""
    inner = sum(((t * g.detach()).sum() for t, g in zip(tensors, grads)), torch.zeros((), device=tensors[0].device))
    return inner - inner.detach()


def apply_shared_gradient(
    task_loss: Tensor, params: list[nn.Parameter], flat: Tensor, new: Tensor, weights: Tensor | None = None
) -> Tensor:
    """A loss whose backward puts ``new`` [P] on θ and Σ_k w_k ∇L_k (w = ``weights``, default 1) elsewhere
    (``flat`` [K, P]: the task gradients on θ); its value is Σ_k w_k L_k."""
    w = torch.ones_like(task_loss) if weights is None else weights.detach().to(task_loss.dtype)
    return with_shared_gradient((w * task_loss).sum(), params, (w.unsqueeze(1) * flat).sum(0), new)


def view_like(flat: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    """Split a [N] vector into pieces shaped like ``tensors``."""
    return [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


class Representation:
    """Z: the output of the submodule ``module`` of the model (a tensor, or a list/tuple of tensors, all of which
    are Z), captured by a forward hook at every forward pass; read once per training step by :meth:`take`."""

    def __init__(self, weighting: str, module: str) -> None:
        self.weighting, self.module = weighting, module
        self._out: list[Tensor] | None = None
        self._handle: RemovableHandle | None = None

    def attach(self, model: nn.Module) -> None:
        try:
            sub = model.get_submodule(self.module)
        except AttributeError:
            names = sorted(n for n, _ in model.named_children())
            raise ConfigError(
                f"weighting {self.weighting!r}: representation={self.module!r} is no submodule of "
                f"{type(model).__name__} (its children: {names})"
            ) from None
        if self._handle is not None:
            self._handle.remove()
        self._handle = sub.register_forward_hook(self._store)

    def _store(self, module: nn.Module, inputs: Any, output: Any) -> None:
        parts = list(output) if isinstance(output, (list, tuple)) else [output]
        self._out = [t for t in parts if isinstance(t, Tensor) and t.requires_grad] if torch.is_grad_enabled() else None

    def take(self) -> list[Tensor]:
        """Z of the last forward pass (then forgotten); ConfigError when there is none with a gradient."""
        out, self._out = self._out, None
        if not out:
            raise ConfigError(
                f"weighting {self.weighting!r}: submodule {self.module!r} produced no tensor with a gradient "
                "in this forward pass (rep_grad needs the representation's output to depend on parameters)"
            )
        return out


def rep_gradients(task_loss: Tensor, z: list[Tensor]) -> Tensor:
    """[K, N]: ∇_Z L_k, Z flattened (every sample, every unit: the whole batch's representation)."""
    rows = []
    for k in range(len(task_loss)):  # a loop over tasks, never over samples
        g = torch.autograd.grad(task_loss[k], z, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(gi if gi is not None else torch.zeros_like(t)).reshape(-1) for gi, t in zip(g, z)]))
    return torch.stack(rows)


def apply_rep_gradient(task_loss: Tensor, z: list[Tensor], flat: Tensor, new: Tensor) -> Tensor:
    """A loss whose backward puts ``new`` [N] on Z (so on every parameter upstream of Z: (∂Z/∂θ)ᵀ new) and
    the plain Σ_k ∇L_k on the parameters downstream of Z (the task heads). Value: Σ_k L_k."""
    correction = new.detach() - flat.sum(0)
    return task_loss.sum() + surrogate(z, view_like(correction, z))
