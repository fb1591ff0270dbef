"""Helpers for gradient weightings that replace the gradient of the shared parameters θ.

The methods of this zoo (CAGrad, Nash-MTL, Aligned-MTL, DB-MTL, MetaBalance) compute per-task gradients
on θ as one [K, P] matrix, build a new direction d on θ, and must hand d to the LightningModule's
automatic optimisation. As in :mod:`mtlbench.weighting.pcgrad`, they return a surrogate: ``base`` (whose
gradient the task-specific parameters keep) plus Σ_p ⟨p, (d − ∇_θ base)_p⟩ with the correction detached, so
backward puts exactly d on θ; the surrogate's value is subtracted again, so the reported loss is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def flat_gradients(params: Sequence[nn.Parameter], grads: Sequence[Sequence[Tensor | None]]) -> Tensor:
    """[K, P] from per-task gradient tuples (None: an exact zero)."""
    return torch.stack(
        [
            torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gk, params)])
            for gk in grads
        ]
    )


def with_shared_gradient(base: Tensor, params: Sequence[nn.Parameter], base_grad: Tensor, new_grad: Tensor) -> Tensor:
    """``base`` whose backward puts ``new_grad`` [P] on ``params`` (``base_grad`` [P]: ∇_θ base) and leaves the rest."""
    correction = (new_grad - base_grad).detach()
    sizes = [p.numel() for p in params]
    surrogate = sum(
        ((p * c.view_as(p).to(p.dtype)).sum() for p, c in zip(params, correction.split(sizes))),
        torch.zeros((), device=base.device, dtype=base.dtype),
    )
    return base + surrogate - surrogate.detach()


class LazyBuffers(nn.Module):
    """Buffers whose shape is known only at the first step (it depends on θ): a checkpoint's shapes win on load."""

    lazy_buffers: tuple[str, ...] = ()

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name in self.lazy_buffers:
            saved = state_dict.get(prefix + name)
            if isinstance(saved, Tensor):
                current = getattr(self, name)
                setattr(self, name, torch.zeros(saved.shape, dtype=saved.dtype, device=current.device))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
