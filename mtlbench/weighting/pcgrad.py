"""PCGrad (Yu et al., NeurIPS 2020): gradient surgery on the shared parameters.

For every task i (Algorithm 1), g_i^PC starts at g_i = ∇_θ L_i; for every other task j in a random order,
if g_i^PC · g_j < 0 (conflict), project g_i^PC onto the normal plane of g_j:
g_i^PC -= (g_i^PC · g_j / ‖g_j‖²) g_j.
The shared parameters are then updated with Σ_i g_i^PC; task-specific parameters with the plain Σ_i ∇L_i.

"Shared" is structural: θ is the parameters of ``model.shared_parameters()`` that the logits of two or more
tasks depend on (read once from the autograd graph, by :class:`GradientWeighting`). Parameters outside the
towers that only one task reaches (PLE's task-specific experts and gates, a task's own gate in MMoE) are
not part of θ: they get that task's own gradient, unprojected. (Were they in the vector, ‖g_j‖² would
include task j's own parameters, so a projection would remove only part of the conflict on θ and add a
multiple of g_j to task j's own parameters.) With two tasks the result has g_i^PC · g_j = 0 on θ wherever
the two conflicted.

With automatic optimisation (the module calls backward on the returned scalar) this is done with a
surrogate: loss = Σ_k L_k + Σ_p ⟨p, (g^PC - Σ_k g_k)_p⟩ with the correction detached, so backward puts exactly
g^PC on the shared parameters p and Σ_k ∇L_k on the others; the correction's value is subtracted again, so
the reported loss is Σ_k L_k. The random task orders are drawn with ``torch.randperm`` from the global RNG
(one permutation per task i per step, tasks i in schema order), so seeded runs repeat exactly. The model's
own auxiliary losses are added outside the surgery. Reported task weights are 1 (the surgery changes
directions, not weights).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, task_means
from mtlbench.weighting.gradient import GradientWeighting


def project_conflicting(grads: Tensor, orders: list[list[int]]) -> Tensor:
    """PCGrad's projection (Algorithm 1) of per-task gradients [K, P]; ``orders[i]``: task order for i."""
    out = grads.clone()
    sq = grads.pow(2).sum(1).clamp_min(1e-20)
    for i, order in enumerate(orders):  # a loop over tasks (K²), never over samples
        for j in order:
            if j == i:
                continue
            dot = out[i] @ grads[j]
            out[i] = out[i] - torch.clamp(dot, max=0.0) / sq[j] * grads[j]  # only when g_i · g_j < 0
    return out


@register_weighting("pcgrad")
class PCGrad(GradientWeighting):
    name = "pcgrad"
    ones: Tensor

    def __init__(self, tasks: list[str]) -> None:
        super().__init__(tasks)
        self.register_buffer("ones", torch.ones(len(tasks)), persistent=False)

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        k = len(self.tasks)
        task_loss = task_means(losses, mask)
        params, grads = self.shared_gradients(task_loss, output)
        flat = torch.stack(
            [
                torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gk, params)])
                for gk in grads
            ]
        )  # [K, P]
        orders = [torch.randperm(k).tolist() for _ in range(k)]
        correction = (project_conflicting(flat, orders).sum(0) - flat.sum(0)).detach()
        surrogate = sum((p * c.view_as(p)).sum() for p, c in zip(params, correction.split([p.numel() for p in params])))
        loss = task_loss.sum() + surrogate - surrogate.detach()
        return WeightedLoss(loss, self.ones)
