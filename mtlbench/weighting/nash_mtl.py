"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, ICML 2022): MTL as a bargaining game.

The paper's Nash bargaining solution on the shared parameters θ: with G = [g_1 … g_K] the task gradients,
the update is Δθ = G α with α > 0 solving the bargaining-solution condition

    Gᵀ G α = 1/α          (element-wise: α_i · ⟨g_i, G α⟩ = 1 for every task i)

found by the paper's sequence of convex approximations: with β_i(α) = g_iᵀ G α and the concave
φ(α) = Σ_i log α_i + log β_i(α), each step τ solves the convex problem

    min_α  Σ_i β_i(α) + φ̃_τ(α)   s.t.  −φ_i(α) = −log α_i − log β_i(α) ≤ 0,  α ≥ 0,

where φ̃_τ is φ linearised at α_τ (first-order Taylor expansion); the sequence starts at the last step's α
and stops after ``optim_niter`` problems, or when ‖GᵀGα − 1/α‖ < 1e-3, or when α stops moving (1e-6), as
the authors' code does. The Gram matrix is divided by its Frobenius norm n first (the authors' code), and α
is rescaled by 1/√n at the end so that it solves the unnormalised equation.

Our choices: the authors (and LibMTL) solve each convex problem with cvxpy/ECOS; we have no cvxpy, so each
one is solved with ``scipy.optimize.minimize`` (SLSQP, with analytic gradients, float64). Where the authors'
code keeps the last α after a solver error (e.g. an unbounded subproblem: its objective is linear), we stop
the sequence at a failed, infeasible or unbounded solve and, if the
condition is not met to 1e-3 yet, finish with damped Newton steps on the strictly convex
f(α) = ½ αᵀGᵀGα − Σ_i log α_i, whose stationary point is exactly GᵀGα = 1/α (our addition: it makes the
weights satisfy the paper's condition also when SLSQP stalls). ``update_weights_every`` = N recomputes α
every N-th step only (the other steps reuse it, and cost one backward of Σ α_i L_i on θ for the clip);
``max_norm`` > 0 clips the gradient on θ to that norm (the authors' default 1.0), 0 turns the clip off. The
loss is Σ_i α_i L_i (as in the authors' code, task-specific parameters get α-weighted gradients too); θ gets
G α, clipped. θ is structural (:class:`GradientWeighting`). α and the step count are buffers (checkpointed).
Logged task weights: α.
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


def nash_residual(gram: np.ndarray, alpha: np.ndarray) -> float:
    """‖GᵀG α − 1/α‖ (zero at the Nash bargaining solution)."""
    return float(np.linalg.norm(gram @ alpha - 1.0 / np.maximum(alpha, 1e-10)))


def convex_step(gram: np.ndarray, prev: np.ndarray) -> np.ndarray | None:
    """One convex approximation (the paper's sequence) linearised at ``prev``; None when the solver fails."""
    k = gram.shape[0]
    slope = 1.0 / prev + gram @ (1.0 / (gram @ prev))  # ∇φ(α_τ): ∂/∂α [Σ log α_i + log (Gᵀ G α)_i]
    ones = np.ones(k)

    def objective(a: np.ndarray) -> tuple[float, np.ndarray]:
        return float(ones @ gram @ a + slope @ (a - prev)), gram @ ones + slope

    def constraint(a: np.ndarray) -> np.ndarray:  # φ_i(α) = log α_i + log β_i(α) >= 0
        return np.log(np.maximum(a, 1e-12)) + np.log(np.maximum(gram @ a, 1e-12))

    def constraint_jac(a: np.ndarray) -> np.ndarray:
        return np.diag(1.0 / np.maximum(a, 1e-12)) + gram / np.maximum(gram @ a, 1e-12)[:, None]

    try:
        res = minimize(
            objective,
            prev.copy(),
            jac=True,
            method="SLSQP",
            bounds=[(1e-8, None)] * k,
            constraints=({"type": "ineq", "fun": constraint, "jac": constraint_jac},),
            options={"ftol": 1e-10, "maxiter": 100},
        )
    except (ValueError, np.linalg.LinAlgError):
        return None
    if not res.success or not np.all(np.isfinite(res.x)) or np.any(res.x <= 0) or constraint(res.x).min() < -1e-6:
        return None
    if np.linalg.norm(res.x) > 1e6 * (1.0 + np.linalg.norm(prev)):  # the linear objective was unbounded
        return None
    return np.asarray(res.x, dtype=np.float64)


def newton_polish(gram: np.ndarray, alpha: np.ndarray, iters: int = 50) -> np.ndarray:
    """Damped Newton on the strictly convex f(α) = ½ αᵀ GᵀG α − Σ_i log α_i, whose stationary point is GᵀGα = 1/α."""
    a = alpha.copy()

    def f(x: np.ndarray) -> float:
        return float(0.5 * x @ gram @ x - np.log(x).sum())

    for _ in range(iters):
        grad = gram @ a - 1.0 / a
        if float(np.linalg.norm(grad)) < 1e-10:
            break
        step = np.linalg.solve(gram + np.diag(1.0 / a**2), grad)
        t = 1.0
        while np.any(a - t * step <= 0) or f(a - t * step) > f(a) - 1e-4 * t * float(grad @ step):
            t *= 0.5
            if t < 1e-12:
                return a
        a = a - t * step
    return a


def nash_weights(gram: np.ndarray, start: np.ndarray, optim_niter: int = 20) -> np.ndarray:
    """α solving GᵀGα = 1/α for a Gram matrix [K, K] by the paper's sequence of convex approximations."""
    norm = float(np.linalg.norm(gram))
    if not np.isfinite(norm) or norm <= 0:
        return start
    g = gram / norm
    alpha = np.asarray(start, dtype=np.float64) * np.sqrt(norm)  # the previous α, in the normalised scale
    first = alpha
    for _ in range(optim_niter):
        if nash_residual(g, alpha) < 1e-3:
            break
        nxt = convex_step(g, alpha)
        if nxt is None:
            break
        moved = float(np.linalg.norm(nxt - alpha))
        alpha = nxt
        if moved < 1e-6:
            break
    if nash_residual(g, alpha) >= 1e-3:  # the sequence stalled (a failed or infeasible solve): finish by Newton
        alpha = newton_polish(g, np.clip(first, 1e-3, 1e3))
    return alpha / np.sqrt(norm)


@register_weighting("nash_mtl")
class NashMTL(GradientWeighting):
    name = "nash_mtl"
    alpha: Tensor
    step: Tensor

    def __init__(
        self,
        tasks: list[str],
        update_weights_every: int = 1,
        optim_niter: int = 20,
        max_norm: float = 1.0,
        layer: str | None = None,
    ) -> None:
        super().__init__(tasks, layer)
        if update_weights_every < 1:
            raise ConfigError(f"weighting 'nash_mtl': update_weights_every must be >= 1, got {update_weights_every}")
        if optim_niter < 1:
            raise ConfigError(f"weighting 'nash_mtl': optim_niter must be >= 1, got {optim_niter}")
        if max_norm < 0:
            raise ConfigError(f"weighting 'nash_mtl': max_norm must be >= 0 (0: no clip), got {max_norm}")
        self.update_weights_every = int(update_weights_every)
        self.optim_niter = int(optim_niter)
        self.max_norm = float(max_norm)
        self.register_buffer("alpha", torch.ones(len(tasks), dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        task_loss = task_means(losses, mask)
        params = self.shared_of(output)
        if int(self.step) % self.update_weights_every == 0:
            _, per_task = self.shared_gradients(task_loss, output)
            flat = flat_gradients(params, per_task).detach().double()  # [K, P]
            alpha = nash_weights((flat @ flat.T).cpu().numpy(), self.alpha.cpu().numpy(), self.optim_niter)
            self.alpha.copy_(torch.from_numpy(alpha))
            shared = self.alpha.to(flat.dtype) @ flat  # G α
        else:
            g = torch.autograd.grad((self.alpha.to(task_loss.dtype) * task_loss).sum(), params, retain_graph=True)
            shared = torch.cat([gi.reshape(-1) for gi in g]).double()
        self.step += 1
        a = self.alpha.to(task_loss.dtype)
        base = (a * task_loss).sum()
        if self.max_norm > 0:
            norm = shared.norm()
            clipped = shared * torch.clamp(self.max_norm / (norm + 1e-6), max=1.0)  # clip_grad_norm_ on θ
        else:
            clipped = shared
        loss = with_shared_gradient(base, params, shared.to(task_loss.dtype), clipped.to(task_loss.dtype))
        return WeightedLoss(loss, a.detach().clone())
