"""MetaBalance (He, Feng, Cheng, Ji, Guo & Caverlee, WWW 2022): adapt auxiliary gradient magnitudes to the target's.

The paper (its Algorithm 1), on the shared parameters θ, for each part of the network (per shared
parameter tensor: "adaptively for each part of the network"), at every step t:

    m_tar ← β m_tar + (1 − β) ‖G_tar‖,   m_i ← β m_i + (1 − β) ‖G_i‖        (moving averages of the norms)
    G_i ← r · G_i · m_tar / m_i + (1 − r) · G_i                           (relax factor r)
    G_total = G_tar + Σ_i G_i                                             (the update of θ)

with m_0 = 0. r = 1 gives every auxiliary gradient the target's (averaged) magnitude, r = 0 the plain sum;
the paper's strategy "adapt both": auxiliary gradients larger than the target's are shrunk and smaller ones
enlarged. β = 0.9 (the paper and the authors' code, facebookresearch/MetaBalance: "set as 0.9
empirically"); r = 0.7 (the authors' code's default, also torch-rechub's; the paper tunes r per dataset, so
treat it as a hyperparameter). Checked against the authors' code: the same moving averages of per-tensor
gradient norms, the same rule G_i ← (m_tar/m_i · r + 1 − r) G_i, the target (their first loss) unchanged.

Where the authors' code (and torch-rechub, which follows it) differs and we follow the paper: it rejects
r = 1 (the paper allows 0 ≤ r ≤ 1); it stops at the first parameter without a gradient (here a parameter
the target does not reach keeps its auxiliary gradients unchanged); and a tensor whose target norm average
is 0 gets 0/0 = NaN there (here: unchanged, the ε guard below).

Our choices: the target task is the first task, or ``target`` (a task name). θ is structural (the shared
parameters two or more tasks reach, :class:`GradientWeighting`); parameters only one task reaches get the
plain Σ_i ∇L_i. The norms' moving averages [K, n_tensors] and the step count are buffers (checkpointed;
sized at the first step). ε = 1e-12 guards m_i = 0. Logged task weights: each task's scale
r·m_tar/m_i + (1 − r), averaged over the shared tensors (the target's is 1).
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

EPS = 1e-12


@register_weighting("metabalance")
class MetaBalance(GradientWeighting, LazyBuffers):
    name = "metabalance"
    lazy_buffers = ("norm_ema",)
    norm_ema: Tensor

    def __init__(
        self,
        tasks: list[str],
        relax_factor: float = 0.7,
        beta: float = 0.9,
        target: str | None = None,
        layer: str | None = None,
    ) -> None:
        super().__init__(tasks, layer)
        if not 0.0 <= relax_factor <= 1.0:
            raise ConfigError(f"weighting 'metabalance': relax_factor must be in [0, 1], got {relax_factor}")
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"weighting 'metabalance': beta must be in [0, 1), got {beta}")
        if target is not None and target not in tasks:
            raise ConfigError(f"weighting 'metabalance': target {target!r} is not a task; tasks are {tasks}")
        self.relax_factor = float(relax_factor)
        self.beta = float(beta)
        self.target = self.tasks.index(target) if target is not None else 0
        self.register_buffer("norm_ema", torch.zeros(0))  # [K, n_tensors] once θ is known

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        task_loss = task_means(losses, mask)
        params, grads = self.shared_gradients(task_loss, output)
        flat = flat_gradients(params, grads).detach()  # [K, P]
        sizes = [p.numel() for p in params]
        norms = torch.stack([part.norm(dim=1) for part in flat.split(sizes, dim=1)], dim=1)  # [K, n_tensors]
        if self.norm_ema.shape != norms.shape:
            self.norm_ema = torch.zeros_like(norms)
        self.norm_ema.mul_(self.beta).add_(norms, alpha=1.0 - self.beta)  # m ← β m + (1 − β) ‖G‖
        m_tar = self.norm_ema[self.target]
        r = self.relax_factor
        scale = r * m_tar / self.norm_ema.clamp_min(EPS) + (1.0 - r)  # relax-factor rule, per task and tensor
        reached = (m_tar > 0) & (self.norm_ema > 0)  # where the target (or the task) reaches no tensor: unchanged
        scale = torch.where(reached, scale, torch.ones_like(scale))
        scale[self.target] = 1.0
        per_coord = torch.repeat_interleave(scale, torch.tensor(sizes, device=scale.device), dim=1)  # [K, P]
        d = (per_coord * flat).sum(0)  # G_total = G_tar + Σ_i G_i (scaled)
        loss = with_shared_gradient(task_loss.sum(), params, flat.sum(0), d)
        return WeightedLoss(loss, scale.mean(1).to(task_loss.dtype))
