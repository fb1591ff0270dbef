"""GradNorm (Chen et al., ICML 2018): learn task weights that balance gradient norms on shared weights.

With W the shared weights, G_k = ‖∇_W w_k L_k‖ = w_k‖∇_W L_k‖, Ḡ = mean_k G_k, the relative inverse training
rate r_k = L̃_k / mean_j L̃_j with L̃_k = L_k(t) / L_k(0), GradNorm minimises (Eq. 2)

    L_grad = Σ_k | G_k - Ḡ · r_k^α |

with respect to the weights w only (targets Ḡ·r_k^α held constant), and renormalises Σ_k w_k = K after
each update. A task whose gradient norm lags (or whose loss falls more slowly) gets a larger weight.

Here the weights are an ``nn.Parameter`` of the strategy, so the LightningModule's optimiser updates them
with the model; the returned loss is Σ_k w_k.detach()·L_k + L_grad (the model sees the weighted sum, the
weights see L_grad), and Σ w = K is restored in place at the start of every step (weights are kept ≥ 1e-3
first, so none can turn negative). L_k(0) is each task's loss at its first labelled training step.

W: the paper uses the last shared layer only to save compute; which layer is "last" differs per model
(MMoE's gate is per-task, its experts are shared), so by default W is every parameter of
``model.shared_parameters()`` that every task's logit depends on (LibMTL uses all shared parameters; the
dependence is read once from the autograd graph, by :class:`GradientWeighting`): every task, so that the
G_k are norms over the same weights. ``layer`` restricts W to the shared parameters whose name starts with
that prefix, e.g. ``weighting.layer=experts.weights.1`` for MMoE's last expert layer. The gradient norms
are detached, so no second-order backward is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, task_means
from mtlbench.weighting.gradient import GradientWeighting, reached_by, shared_parameters_of, task_gradients

__all__ = ["GradNorm", "reached_by", "shared_parameters_of", "task_gradients"]  # the last three: gradient.py


@register_weighting("gradnorm")
class GradNorm(GradientWeighting):
    name = "gradnorm"
    shared_by = "every task"
    initial_losses: Tensor

    def __init__(self, tasks: list[str], alpha: float = 1.5, layer: str | None = None) -> None:
        super().__init__(tasks, layer)
        self.alpha = float(alpha)
        self.weights = nn.Parameter(torch.ones(len(tasks)))
        self.register_buffer("initial_losses", torch.full((len(tasks),), float("nan")))

    def shares(self, reach: Tensor) -> Tensor:
        """W: the shared parameters every task's logit depends on."""
        return reach.all(0)

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        k = len(self.tasks)
        with torch.no_grad():  # renormalise Σ w = K (and keep w > 0) after the optimiser's last update
            self.weights.clamp_(min=1e-3).mul_(k / self.weights.sum())
        task_loss = task_means(losses, mask)
        _, grads = self.shared_gradients(task_loss, output)
        norms = torch.stack(
            [
                torch.sqrt(sum((gi.pow(2).sum() for gi in g if gi is not None), torch.zeros((), device=losses.device)))
                for g in grads
            ]
        )
        current = task_loss.detach()
        with torch.no_grad():  # L_k(0): the first labelled value of each task
            first = torch.isnan(self.initial_losses) & mask.any(0) & (current > 0)
            self.initial_losses.copy_(torch.where(first, current, self.initial_losses))
        ratio = current / self.initial_losses  # L̃_k = L_k(t) / L_k(0)
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
        r = ratio / ratio.mean()  # relative inverse training rate
        g_norm = self.weights * norms  # G_k = w_k ‖∇_W L_k‖
        target = (g_norm.mean() * r.pow(self.alpha)).detach()  # Ḡ · r_k^α, constant
        grad_loss = (g_norm - target).abs().sum()  # Eq. 2: L_grad
        loss = (self.weights.detach() * task_loss).sum() + grad_loss
        return WeightedLoss(loss, self.weights.detach().clone())
