"""DB-MTL, Dual-Balancing Multi-Task Learning (Lin, Ye, Xu, Shi & Zhang, 2023): balance losses, then gradients.

The paper's two steps (its Algorithm 1), at iteration k on the shared parameters θ:

* loss-scale balancing: every task loss goes through a log, ℓ_t → log ℓ_t (loss-scale balancing), so the task gradients
  are g_{t,k} = ∇_θ log ℓ_t = ∇_θ ℓ_t / ℓ_t, invariant to each loss's scale;
* gradient-magnitude balancing: an exponential moving average ĝ_{t,k} = β_k ĝ_{t,k-1} + (1 − β_k) g_{t,k}
  with β_k = β / k^σ (β and its decay σ; ĝ_{t,0} = 0), and the shared update

      d = Σ_t (max_i ‖ĝ_{i,k}‖ / ‖ĝ_{t,k}‖) ĝ_{t,k}                                         (max-norm balancing)

  so every task's EMA gradient is rescaled to the largest norm among them.

Task-specific parameters get ∇ log ℓ_t (the paper's Algorithm 1). Defaults β = 0.9, σ = 0 (β_k = β: the
defaults of LibMTL, the authors' library, whose ``DB_MTL`` is the update above line for line:
``grad_buffer = g + β/k^σ (grad_buffer − g)``, ``alpha = max‖ĝ‖/(‖ĝ_t‖ + 1e-8)``, Σ_t alpha_t ĝ_t).

Our choices: θ is structural (:class:`GradientWeighting`); the EMA ĝ [K, P] and the step count are buffers,
so they are checkpointed (ĝ is sized at the first step). log ℓ_t uses ℓ_t + 1e-8 (as LibMTL), so a task
without labels in the batch (ℓ_t = 0) contributes a zero gradient. The returned loss's value is Σ_t ℓ_t (for
comparable logs); its gradient is the one above. Logged task weights: the per-task factors
max_i ‖ĝ_i‖ / ‖ĝ_t‖ on the EMA gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, task_means
from mtlbench.weighting.gradient import GradientWeighting
from mtlbench.weighting.shared_update import LazyBuffers, flat_gradients, with_shared_gradient

EPS = 1e-8


@register_weighting("db_mtl")
class DBMTL(GradientWeighting, LazyBuffers):
    name = "db_mtl"
    lazy_buffers = ("grad_ema",)
    grad_ema: Tensor
    step: Tensor

    def __init__(self, tasks: list[str], beta: float = 0.9, beta_sigma: float = 0.0, layer: str | None = None) -> None:
        super().__init__(tasks, layer)
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"weighting 'db_mtl': beta must be in [0, 1), got {beta}")
        if beta_sigma < 0:
            raise ConfigError(f"weighting 'db_mtl': beta_sigma must be >= 0, got {beta_sigma}")
        self.beta = float(beta)
        self.beta_sigma = float(beta_sigma)
        self.register_buffer("grad_ema", torch.zeros(0))  # [K, P] once θ is known
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        task_loss = task_means(losses, mask)
        log_loss = torch.log(task_loss + EPS)  # loss-scale balancing
        params, grads = self.shared_gradients(log_loss, output)
        flat = flat_gradients(params, grads).detach()  # [K, P]: ∇_θ log ℓ_t
        if self.grad_ema.shape != flat.shape:
            self.grad_ema = torch.zeros_like(flat)
        self.step += 1
        beta_k = self.beta / float(self.step) ** self.beta_sigma
        self.grad_ema.mul_(beta_k).add_(flat, alpha=1.0 - beta_k)  # EMA: ĝ_k = β_k ĝ_{k-1} + (1 − β_k) g_k
        norms = self.grad_ema.norm(dim=1)
        scale = norms.max() / (norms + EPS)  # max-norm balancing: every task to the largest norm
        d = scale @ self.grad_ema
        base = log_loss.sum()
        loss = with_shared_gradient(base, params, flat.sum(0), d)
        loss = loss - loss.detach() + task_loss.detach().sum()  # report Σ ℓ_t, keep the gradient above
        return WeightedLoss(loss, scale.detach().to(task_loss.dtype))
