"""GradDrop (Chen et al., NeurIPS 2020, "Just Pick a Sign"): gradient sign dropout at a shared representation.

The paper's part (Algorithm 1), at a layer with activations A (here Z, see below) and per-task gradients ∇_A L_i:

- batch-separated gradients: G_i = Σ_batch sign(A) ∘ ∇_A L_i;
- the Gradient Positive Sign Purity P = ½ (1 + Σ_i G_i / Σ_i |G_i|) (Eq. 1), per element of A;
- U ~ Uniform(0, 1) per element; mask M_i = I[P > U] ∘ I[G_i > 0] + I[P < U] ∘ I[G_i < 0];
- the gradient passed below the layer: Σ_i (ℓ_i + (1 − ℓ_i) M_i) ∘ ∇_A L_i, with leak ℓ_i = ``leak`` (0: the
  paper's pure GradDrop; 1: no dropout).

Ours: A = Z, the output of the submodule ``representation`` (default ``backbone``; a list/tuple output: each
tensor is handled as its own GradDrop layer), captured by a forward hook; every parameter upstream of Z gets
(∂Z/∂θ)ᵀ of the masked gradient, every parameter downstream (the task heads) its task's plain gradient. U is
drawn with ``torch.rand_like`` from the global torch RNG (in checkpoints), one draw per element of Z per step,
shared by the batch (as in the paper: P and U are per element of the batch-summed gradient). Reported task
weights: the fraction of each task's gradient mass (Σ|∇_Z L_i|) that passes the mask. A representation that is
a list of per-task tensors (MMoE's and PLE's backbones with per=task) gives disjoint gradients, P ∈ {0, 1}, and
GradDrop keeps everything: point ``representation`` at a module every task reads, e.g. ``backbone.experts``.

LibMTL 1.1.5 implements the same equations (rep_grad only, ``1e-7`` added to Σ|G|, as here) and draws U with
``torch.rand_like`` of the same shape, so the oracle test compares exactly under the same seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, task_means
from mtlbench.weighting.gradient import GradientWeighting
from mtlbench.weighting.surgery import Representation, surrogate


def graddrop(z: Tensor, grads: Tensor, leak: float, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Algorithm 1 on one layer: ``z`` [B, ...], ``grads`` [K, B, ...] = ∇_Z L_i; ``u`` [...] the uniforms
    (drawn when None). Returns (Σ_i (ℓ + (1 − ℓ) M_i) ∘ ∇_Z L_i [B, ...], the masks M [K, ...])."""
    g = (grads * z.sign()).sum(1)  # batch-separated G_i
    purity = 0.5 * (1 + g.sum(0) / (g.abs().sum(0) + 1e-7))  # Eq. 1: P
    u = torch.rand_like(purity) if u is None else u
    keep = (purity > u) & (g > 0) | (purity < u) & (g < 0)  # M_i
    factor = leak + (1 - leak) * keep.to(grads.dtype)
    return (grads * factor.unsqueeze(1)).sum(0), keep


@register_weighting("graddrop")
class GradDrop(GradientWeighting):
    name = "graddrop"

    def __init__(self, tasks: list[str], leak: float = 0.0, representation: str = "backbone") -> None:
        super().__init__(tasks)
        if not 0.0 <= leak <= 1.0:
            raise ConfigError(f"weighting 'graddrop': leak must be in [0, 1], got {leak}")
        self.leak = float(leak)
        self.representation = Representation(self.name, representation)

    def attach(self, model: torch.nn.Module) -> None:
        super().attach(model)
        self.representation.attach(model)

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        task_loss = task_means(losses, mask)
        z = self.representation.take()
        k = len(self.tasks)
        per_task = [torch.autograd.grad(task_loss[i], z, retain_graph=True, allow_unused=True) for i in range(k)]
        corrections, kept, total = [], torch.zeros(k, device=losses.device), torch.zeros(k, device=losses.device)
        for j, zj in enumerate(z):  # one GradDrop layer per tensor of Z
            grads = torch.stack([g[j] if g[j] is not None else torch.zeros_like(zj) for g in per_task])
            new, keep = graddrop(zj.detach(), grads, self.leak)
            corrections.append(new - grads.sum(0))
            mass = grads.abs()
            kept += (mass * (self.leak + (1 - self.leak) * keep.unsqueeze(1).to(mass.dtype))).flatten(1).sum(1)
            total += mass.flatten(1).sum(1)
        loss = task_loss.sum() + surrogate(z, corrections)
        return WeightedLoss(loss, torch.where(total > 0, kept / total.clamp_min(1e-30), 1.0))
