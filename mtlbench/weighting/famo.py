"""FAMO, Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, NeurIPS 2023): O(1) per step.

The paper (Algorithm 1; Algorithm 2 in Appendix C is its practical form):

* task weights z = softmax(ξ) from logits ξ (ξ_1 = 0: equal weights);
* the model update follows Σ_i c z_i/ℓ_i ∇ℓ_i with c = (Σ_i z_i/ℓ_i)^{-1}, i.e. the gradient of
  c · Σ_i z_i log ℓ_i with c held constant, one backward pass like the plain sum;
* after the step, with δ = [log ℓ_i(θ_t) − log ℓ_i(θ_{t+1})]_i (the log-loss decrease), the logits
  move along the amortised gradient ∇_ξ z(ξ)ᵀ δ = J_softmax(ξ)ᵀ δ with weight decay γ:
  Algorithm 1: ξ_{t+1} = ξ_t − β (J_softmax(ξ_t)ᵀ δ + γ ξ_t); Algorithm 2 (and the authors' code, LibMTL):
  the same gradient J_softmax(ξ_t)ᵀ δ + γ ξ_t fed to Adam. β = 0.025, γ = 0.001 (Algorithm 2; the authors'
  code defaults to γ = 1e-5). ``xi_update``: "adam" (default, Algorithm 2) or "sgd" (Algorithm 1).

What differs from the paper and its code (our choice): they evaluate ℓ(θ_{t+1}) on the same minibatch
after the step, which costs an extra forward pass; the weighting contract here has no after-step hook, so
δ uses this step's losses (θ_{t+1}, next minibatch) against the previous step's (θ_t, its minibatch):
no extra forward or backward pass, at the price of minibatch noise in δ. ξ is updated at the start of
each step, before this step's weights are formed. The losses' lower bounds b_i (ℓ_i − b_i in the paper) are
0 (binary cross-entropy), and ℓ_i + 1e-8 is used in logs (as the authors' code). A task without labels in
this or the previous step has δ_i = 0 (its logit moves only by decay and softmax coupling).

ξ, the previous losses, Adam's moments and the step count are buffers (not parameters: the model's
optimiser never touches ξ), so they are saved in checkpoints and a resumed run continues the same sequence.

Under DDP (our addition; the paper trains on one process): the per-task losses ℓ_i are averaged over the
processes (one all_reduce of 2K numbers per step) before anything else. The LightningModule scales each process's
per-sample losses so that this average is the mean over all processes' labelled rows, i.e. the one-process ℓ_i of
the global batch; a task is labelled when any process has its label. δ, the ξ update, c and the weights
c z_i/ℓ_i are therefore computed from the same numbers on every process, so ξ stays identical across processes
(and equal to one process's ξ on the global batches, up to float summation order). The gradient is then applied
as Σ_i w_i ∇ℓ_i with w_i = c z_i/ℓ_i held constant (the same gradient as c Σ_i z_i log ℓ_i on one process), so
DDP's average of the processes' gradients is Σ_i w_i ∇ℓ_i of the global batch. Logged task weights: the
effective weight w_i = c z_i/ℓ_i of each ∇ℓ_i.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, WeightingStrategy, task_means

EPS = 1e-8
XI_UPDATES = ("adam", "sgd")
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as the authors' code uses
ADAM_EPS = 1e-8


def global_task_losses(task_loss: Tensor, labelled: Tensor) -> tuple[Tensor, Tensor]:
    """(ℓ [K], labelled [K]) over all processes: the mean of the processes' ℓ_i (each already its share of the
    global mean, see the module doc) and whether any process has task i's label; unchanged on one process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return task_loss, labelled
    both = torch.cat([task_loss.detach().double(), labelled.double()])
    dist.all_reduce(both, op=dist.ReduceOp.SUM)
    k = len(task_loss)
    return (both[:k] / dist.get_world_size()).to(task_loss.dtype), both[k:] > 0


def softmax_vjp(xi: Tensor, delta: Tensor) -> Tensor:
    """J_softmax(ξ)ᵀ δ = z ⊙ (δ − zᵀδ), z = softmax(ξ) (the amortised gradient)."""
    z = torch.softmax(xi, dim=0)
    return z * (delta - (z * delta).sum())


@register_weighting("famo")
class FAMO(WeightingStrategy):
    xi: Tensor
    prev_loss: Tensor
    adam_m: Tensor
    adam_v: Tensor
    xi_steps: Tensor

    def __init__(self, tasks: list[str], lr: float = 0.025, gamma: float = 0.001, xi_update: str = "adam") -> None:
        super().__init__(tasks)
        if lr <= 0:
            raise ConfigError(f"weighting 'famo': lr must be > 0, got {lr}")
        if gamma < 0:
            raise ConfigError(f"weighting 'famo': gamma must be >= 0, got {gamma}")
        if xi_update not in XI_UPDATES:
            raise ConfigError(f"weighting 'famo': xi_update must be one of {list(XI_UPDATES)}, got {xi_update!r}")
        self.lr = float(lr)
        self.gamma = float(gamma)
        self.xi_update = xi_update
        k = len(tasks)
        self.register_buffer("xi", torch.zeros(k, dtype=torch.float64))  # ξ_1 = 0
        self.register_buffer("prev_loss", torch.full((k,), float("nan"), dtype=torch.float64))
        self.register_buffer("adam_m", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("adam_v", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("xi_steps", torch.zeros((), dtype=torch.long))

    def update_xi(self, current: Tensor) -> None:
        """ξ from δ = log ℓ(θ_t) − log ℓ(θ_{t+1}) and the decay γ; ``current``: this step's losses [K]."""
        now = torch.log(current + EPS)
        before = torch.log(self.prev_loss + EPS)
        delta = torch.where(torch.isfinite(before) & torch.isfinite(now), before - now, torch.zeros_like(now))
        grad = softmax_vjp(self.xi, delta) + self.gamma * self.xi
        if self.xi_update == "sgd":  # Algorithm 1
            self.xi.sub_(self.lr * grad)
            return
        self.xi_steps += 1  # Algorithm 2: Adam on ξ (bias-corrected, L2 decay in the gradient)
        b1, b2 = ADAM_BETAS
        t = float(self.xi_steps)
        self.adam_m.mul_(b1).add_(grad, alpha=1 - b1)
        self.adam_v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.adam_m / (1 - b1**t)
        v_hat = self.adam_v / (1 - b2**t)
        self.xi.sub_(self.lr * m_hat / (v_hat.sqrt() + ADAM_EPS))

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        task_loss = task_means(losses, mask)  # this process's ℓ_i, carrying the gradient
        ell, labelled = global_task_losses(task_loss.detach(), mask.any(0))  # the same on every process
        current = torch.where(labelled, ell.double(), torch.full_like(self.prev_loss, float("nan")))
        with torch.no_grad():
            if bool(torch.isfinite(self.prev_loss).any()):
                self.update_xi(current)
            self.prev_loss.copy_(current)
        # tasks without labels in this batch sit out (their ℓ = 0 would take all of c's mass)
        z = torch.softmax(self.xi, dim=0).to(task_loss.dtype) * labelled
        shifted = ell + EPS
        c = 1.0 / (z / shifted).sum().clamp_min(EPS)  # c = (Σ_i z_i/ℓ_i)^{-1}, constant
        weights = c * z / shifted  # w_i = c z_i/ℓ_i: ∇ of c Σ_i z_i log ℓ_i is Σ_i w_i ∇ℓ_i (Algorithm 2)
        return WeightedLoss(weights @ task_loss, weights)  # value: Σ_i w_i ℓ_i, as before
