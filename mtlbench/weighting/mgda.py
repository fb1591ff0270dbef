"""MGDA (Sener & Koltun, NeurIPS 2018): the min-norm point of the task gradients, and MGDA-UB.

The paper's parts:

- Eq. 3 / Algorithm 2: the common descent direction is the minimum-norm element of the convex hull of the task
  gradients, min_α ‖Σ_t α_t g_t‖² s.t. α ≥ 0, Σ_t α_t = 1. Two tasks: Algorithm 1's closed form
  γ = [(θ̄ − θ)ᵀθ̄ / ‖θ − θ̄‖²] clipped to [0, 1] (γ = 1 if θᵀθ̄ ≥ θᵀθ, γ = 0 if θᵀθ̄ ≥ θ̄ᵀθ̄). More tasks:
  Algorithm 2's Frank-Wolfe solver: α = 1/T; t̂ = argmin_r Σ_t α_t g_rᵀg_t; γ̂ from Algorithm 1 on (g_t̂, Σ α g);
  α ← (1 − γ̂)α + γ̂ e_t̂; until γ̂ < ``tol`` or ``max_iter`` steps. (Frank-Wolfe's α converges as O(1/t) when the
  solution lies on a face of the simplex: after the default 250 steps ‖Σ α g‖² is within about 1% of the minimum
  on our examples; raise ``max_iter`` for more.)
- Algorithm 2's update: the shared parameters θ^sh get Σ_t α_t ∇_θsh L_t, every task-specific parameter its
  own task's plain gradient ∇_θt L_t.
- MGDA-UB (Section 3.3, ``rep_grad: true``): α from the gradients w.r.t. the shared representation Z instead of
  θ^sh (one backward through the heads per task); θ^sh then gets (∂Z/∂θ^sh)ᵀ Σ_t α_t ∇_Z L_t.

Ours / the authors' code:

- The gradient normalisations ``normalization`` (none | l2 | loss | loss+: g_t / 1, ‖g_t‖, L_t, L_t·‖g_t‖) are
  those of the authors' released code (``gradient_normalizers``), applied to the gradients α is computed from;
  as there (``scale[t] * loss_t``), α then weights the *un-normalised* gradients.
- θ^sh is structural (:class:`GradientWeighting`: shared parameters two or more task logits depend on); other
  parameters get their own task's gradient unweighted. Z is the output of the submodule ``representation``
  (default ``backbone``; a list/tuple output is Z as a whole), captured by a forward hook; ∇_Z L_t is over the
  whole batch's Z (every sample and unit), as in the paper. MMoE's and PLE's backbones (per=task) output one
  mixture per task, each read by one tower only: those gradients are orthogonal and α_t ∝ 1/‖∇_Z L_t‖²; point
  ``representation`` at a module every task reads (e.g. MMoE's ``backbone.experts``) for a shared Z.
- Reported task weights: α.

Where LibMTL 1.1.5 differs (we follow the paper / the authors' code):

- Algorithm 1's boundary cases give γ = 0.999 / 0.001 in LibMTL (and in the authors' code), 1 / 0 here.
- K ≥ 3: LibMTL uses the authors' projected-gradient solver (start at the best pair, step, project to the
  simplex), not the paper's Frank-Wolfe; both converge to the same min-norm point.
- With a normalisation and parameter gradients, LibMTL applies Σ α_t g_t / n_t (the normalised gradients) to
  θ^sh; we apply Σ α_t g_t (authors' code). The α agree.
- With ``rep_grad``, LibMTL sums ∇_Z L_t over the batch before solving (a [K, H] matrix); we use the whole
  [K, B·H] (the paper's ∇_Z over the batch). They agree for a batch of one row.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, task_means
from mtlbench.weighting.gradient import GradientWeighting
from mtlbench.weighting.shared_update import flat_gradients
from mtlbench.weighting.surgery import Representation, apply_rep_gradient, apply_shared_gradient, rep_gradients

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def min_norm_2(v1v1: float, v1v2: float, v2v2: float) -> float:
    """Algorithm 1: γ minimising ‖γθ + (1 − γ)θ̄‖² from θᵀθ, θᵀθ̄, θ̄ᵀθ̄ (γ = 1 / 0 at the boundaries)."""
    if v1v2 >= v1v1:
        return 1.0
    if v1v2 >= v2v2:
        return 0.0
    return float((v2v2 - v1v2) / (v1v1 + v2v2 - 2 * v1v2))


def min_norm_weights(grads: Tensor, max_iter: int = 250, tol: float = 1e-6) -> Tensor:
    """α on the simplex minimising ‖Σ_t α_t g_t‖ for ``grads`` [K, P] (Algorithm 1 for K = 2, Algorithm 2's
    Frank-Wolfe solver otherwise). Computed in float64."""
    gram = (grads.double() @ grads.double().T).cpu().numpy()  # M_ij = g_iᵀ g_j (the K×K Gram matrix, on the host)
    k = len(gram)
    if k == 1:
        return torch.ones(1, dtype=grads.dtype, device=grads.device)
    if k == 2:
        gamma = min_norm_2(gram[0, 0], gram[0, 1], gram[1, 1])
        return torch.tensor([gamma, 1 - gamma], dtype=grads.dtype, device=grads.device)
    alpha = np.full(k, 1.0 / k)
    for _ in range(max_iter):  # Frank-Wolfe on the Gram matrix (K×K work per step, no per-sample work)
        m_alpha = gram @ alpha
        t = int(np.argmin(m_alpha))
        gamma = min_norm_2(gram[t, t], m_alpha[t], float(alpha @ m_alpha))  # θ = g_t̂, θ̄ = Σ α g
        alpha = (1 - gamma) * alpha
        alpha[t] += gamma
        if gamma < tol:
            break
    return torch.as_tensor(alpha, dtype=grads.dtype, device=grads.device)


def normalizers(grads: Tensor, task_loss: Tensor, kind: str) -> Tensor:
    """n_t of the authors' ``gradient_normalizers``: 1, ‖g_t‖, L_t or L_t·‖g_t‖ (guarded against 0)."""
    norm = grads.norm(dim=1)
    loss = task_loss.detach().to(grads.dtype)
    n = {"none": torch.ones_like(norm), "l2": norm, "loss": loss, "loss+": loss * norm}[kind]
    return n.clamp_min(1e-12)


@register_weighting("mgda")
class MGDA(GradientWeighting):
    name = "mgda"

    def __init__(
        self,
        tasks: list[str],
        normalization: str = "none",
        rep_grad: bool = False,
        representation: str = "backbone",
        max_iter: int = 250,
        tol: float = 1e-6,
        layer: str | None = None,
    ) -> None:
        super().__init__(tasks, layer)
        if normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"weighting 'mgda': normalization={normalization!r} is not one of {', '.join(NORMALIZATIONS)}"
            )
        if max_iter < 1 or tol < 0:
            raise ConfigError(f"weighting 'mgda': needs max_iter >= 1 and tol >= 0, got {max_iter} and {tol}")
        self.normalization, self.rep_grad, self.max_iter, self.tol = (
            normalization,
            bool(rep_grad),
            int(max_iter),
            float(tol),
        )
        self.representation = Representation(self.name, representation) if self.rep_grad else None

    def attach(self, model: torch.nn.Module) -> None:
        super().attach(model)
        if self.representation is not None:
            self.representation.attach(model)

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        task_loss = task_means(losses, mask)
        if self.representation is not None:  # MGDA-UB: ∇_Z L_t
            z = self.representation.take()
            flat = rep_gradients(task_loss, z)
        else:
            params, grads = self.shared_gradients(task_loss, output)
            flat = flat_gradients(params, grads)
        n = normalizers(flat, task_loss, self.normalization)
        alpha = min_norm_weights(flat / n.unsqueeze(1), self.max_iter, self.tol)  # Eq. 3 on g_t / n_t
        new = (alpha.unsqueeze(1) * flat).sum(0)  # Algorithm 2: Σ α_t g_t on the shared part
        if self.representation is not None:
            loss = apply_rep_gradient(task_loss, z, flat, new)
        else:
            loss = apply_shared_gradient(task_loss, params, flat, new)
        return WeightedLoss(loss, alpha.detach())
