"""CAGrad, Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021).

The paper's update on the shared parameters θ (its Algorithm 1): with g_i = ∇_θ L_i and the average
gradient g0 = (1/K) Σ_i g_i, find the direction d that maximises the worst task's improvement min_i ⟨g_i, d⟩
inside the ball ‖d − g0‖ ≤ c‖g0‖. Its dual is a problem over the simplex W:

    w* = argmin_{w ∈ W}  g_wᵀ g0 + √φ ‖g_w‖,   g_w = Σ_i w_i g_i,   φ = c² ‖g0‖²        (the dual)
    d  = g0 + (√φ / ‖g_w‖) g_w                                                          (the primal d from w*)

so ‖d − g0‖ = c‖g0‖ and c = 0 gives g0, the mean gradient. Only the K×K Gram matrix GGᵀ enters the dual;
it is solved in float64 with ``scipy.optimize.minimize`` (SLSQP, w on the simplex, started at w = 1/K), as
the authors' code and LibMTL do.

``rescale`` (the authors' code; the paper mentions scaling d for the convergence analysis): 0 uses d as is,
1 (default, as the authors' code and LibMTL) d / (1 + c²), 2 d / (1 + c). Defaults: c = 0.4 (the paper's
value for its image benchmarks; LibMTL's default is 0.5).

Our choices: θ is structural (the parameters of ``model.shared_parameters()`` that two or more tasks'
logits depend on, :class:`GradientWeighting`); parameters only one task reaches get the plain Σ_i ∇L_i, like
LibMTL's task-specific parameters. The returned loss carries d on θ through a detached surrogate
(:mod:`mtlbench.weighting.shared_update`), and its value is Σ_i L_i. Logged task weights: the dual w*.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, task_means
from mtlbench.weighting.gradient import GradientWeighting
from mtlbench.weighting.shared_update import flat_gradients, with_shared_gradient

RESCALES = (0, 1, 2)


def cagrad_dual(gram: np.ndarray, c: float) -> np.ndarray:
    """w* on the simplex minimising g_wᵀ g0 + c‖g0‖ ‖g_w‖ (CAGrad's dual), from the Gram matrix GGᵀ [K, K]."""
    k = gram.shape[0]
    b = np.full(k, 1.0 / k)
    g0_norm = float(np.sqrt(max(b @ gram @ b, 0.0)))
    root_phi = c * g0_norm

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        gw_sq = max(float(w @ gram @ w), 1e-20)
        value = float(w @ gram @ b) + root_phi * np.sqrt(gw_sq)
        grad = gram @ b + root_phi * (gram @ w) / np.sqrt(gw_sq)
        return value, grad

    res = minimize(
        objective,
        b.copy(),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum(), "jac": lambda w: -np.ones_like(w)},),
        options={"ftol": 1e-12, "maxiter": 200},
    )
    w = np.clip(res.x, 0.0, None)
    return w / max(w.sum(), 1e-12)


def cagrad_direction(grads: Tensor, c: float, rescale: int = 0) -> tuple[Tensor, Tensor]:
    """(d, w*) for per-task gradients [K, P]: d = g0 + (√φ/‖g_w‖) g_w (primal from the dual), then the rescale."""
    g = grads.double()
    g0 = g.mean(0)
    w = torch.from_numpy(cagrad_dual((g @ g.T).cpu().numpy(), c)).to(g.device)
    gw = w @ g
    root_phi = c * g0.norm()
    d = g0 + root_phi / gw.norm().clamp_min(1e-20) * gw
    d = d / {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]
    return d.to(grads.dtype), w.to(grads.dtype)


@register_weighting("cagrad")
class CAGrad(GradientWeighting):
    name = "cagrad"

    def __init__(self, tasks: list[str], c: float = 0.4, rescale: int = 1, layer: str | None = None) -> None:
        super().__init__(tasks, layer)
        if c < 0:
            raise ConfigError(f"weighting 'cagrad': c must be >= 0, got {c}")
        if rescale not in RESCALES:
            raise ConfigError(f"weighting 'cagrad': rescale must be one of {list(RESCALES)}, got {rescale}")
        self.c = float(c)
        self.rescale = int(rescale)

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        task_loss = task_means(losses, mask)
        params, grads = self.shared_gradients(task_loss, output)
        flat = flat_gradients(params, grads)  # [K, P]
        d, w = cagrad_direction(flat.detach(), self.c, self.rescale)
        loss = with_shared_gradient(task_loss.sum(), params, flat.sum(0), d)
        return WeightedLoss(loss, w.float())
