"""IMTL (Liu et al., ICLR 2021, "Towards Impartial Multi-task Learning"): IMTL-L, IMTL-G and IMTL-H.

The paper's parts:

- IMTL-L (loss balance): each task loss is scaled by a learned e^{s_t}, with a regulariser: L_t' = e^{s_t} L_t − s_t
  (s_t unconstrained, initialised at 0); at the optimum e^{s_t} L_t = 1 for every t.
- IMTL-G (gradient balance): with g_t the task gradients and u_t = g_t / ‖g_t‖, find α (Σ_t α_t = 1) such that the
  aggregated gradient g = Σ_t α_t g_t has equal projections on every u_t (gᵀu_1 = gᵀu_t). Closed form: with
  D = [g_1 − g_2, …, g_1 − g_T]ᵀ and U = [u_1 − u_2, …, u_1 − u_T]ᵀ, α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹ and
  α_1 = 1 − Σ_{t≥2} α_t.
- IMTL-H (``mode: hybrid``): IMTL-G on the gradients of the IMTL-L-scaled losses. The shared parameters get
  Σ_t α_t ∇L_t'; task-specific parameters and s_t get their own task's ∇L_t' unweighted.

``mode``: ``hybrid`` (IMTL-H, the paper's full method), ``gradient`` (IMTL-G on the raw losses) or ``loss``
(IMTL-L: Σ_t L_t', no gradient work).

Ours: the gradients g_t are those of the shared parameters θ (structural, :class:`GradientWeighting`) by default,
as LibMTL; ``rep_grad: true`` uses the gradients w.r.t. the output Z of the submodule ``representation``
instead (the paper computes them on the shared feature for efficiency; Z over the whole batch, flattened). A task
without labels in the batch has a zero gradient: it is left out of the closed form (α_t = 0) and its −s_t term is
dropped (else s_t would grow without bound on unlabelled batches). As for MGDA-UB, a representation made of
one tensor per task (MMoE's and PLE's backbones) gives orthogonal gradients (then α_t ∝ 1/‖g_t‖). The linear
system is solved with ``torch.linalg.solve`` (pseudo-inverse when singular, e.g. two parallel gradients).
Reported task weights: the effective weight of the raw L_t on θ: α_t (gradient), e^{s_t} (loss), α_t e^{s_t}
(hybrid).

LibMTL 1.1.5 implements IMTL-H only (same equations, same update of θ, θ_t and s), on parameter gradients, or,
with ``rep_grad``, on representation gradients summed over the batch (we use the whole batch's Z; they agree
for one row). The oracle test compares α and the shared gradient for ``mode: hybrid``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, task_means
from mtlbench.weighting.gradient import GradientWeighting
from mtlbench.weighting.shared_update import flat_gradients
from mtlbench.weighting.surgery import Representation, apply_rep_gradient, apply_shared_gradient, rep_gradients

MODES = ("hybrid", "gradient", "loss")


def imtl_g_weights(grads: Tensor) -> Tensor:
    """IMTL-G's closed form: α [K] with Σα = 1 and (Σ α_t g_t)ᵀ u equal for every unit gradient u_t.

    Tasks with a zero gradient get α_t = 0 and are left out of the system."""
    k = len(grads)
    g = grads.double()
    norms = g.norm(dim=1)
    live = (norms > 0).nonzero().flatten()
    alpha = torch.zeros(k, dtype=torch.float64, device=grads.device)
    if len(live) <= 1:
        alpha[live] = 1.0
        return alpha.to(grads.dtype)
    gl, ul = g[live], g[live] / norms[live].unsqueeze(1)
    d, u = gl[:1] - gl[1:], ul[:1] - ul[1:]  # D, U: [T-1, P]
    a, b = u @ d.T, u @ gl[0]  # α_{2:T} (D Uᵀ) = g_1 Uᵀ  ⇔  (U Dᵀ) α_{2:T}ᵀ = U g_1ᵀ
    try:
        rest = torch.linalg.solve(a, b)
    except RuntimeError:  # singular (e.g. parallel gradients): least-norm solution
        rest = torch.linalg.pinv(a) @ b
    alpha[live] = torch.cat([1 - rest.sum(0, keepdim=True), rest])
    return alpha.to(grads.dtype)


@register_weighting("imtl")
class IMTL(GradientWeighting):
    name = "imtl"

    def __init__(
        self,
        tasks: list[str],
        mode: str = "hybrid",
        rep_grad: bool = False,
        representation: str = "backbone",
        layer: str | None = None,
    ) -> None:
        super().__init__(tasks, layer)
        if mode not in MODES:
            raise ConfigError(f"weighting 'imtl': mode={mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode
        self.gradient_based = mode != "loss"
        self.loss_scale = nn.Parameter(torch.zeros(len(tasks))) if mode != "gradient" else None  # s_t
        self.representation = Representation(self.name, representation) if rep_grad and mode != "loss" else None

    def attach(self, model: nn.Module) -> None:
        if self.gradient_based:
            super().attach(model)
        if self.representation is not None:
            self.representation.attach(model)

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        task_loss = task_means(losses, mask)
        scale = torch.ones_like(task_loss)
        if self.loss_scale is not None:  # IMTL-L: e^s L − s (−s only where the task has labels)
            s = self.loss_scale.to(task_loss.dtype)
            scale = s.exp()
            task_loss = scale * task_loss - s * mask.any(0).to(s.dtype)
        if self.mode == "loss":
            return WeightedLoss(task_loss.sum(), scale.detach())
        if self.representation is not None:
            z = self.representation.take()
            flat = rep_gradients(task_loss, z)
        else:
            params, grads = self.shared_gradients(task_loss, output)
            flat = flat_gradients(params, grads)
        alpha = imtl_g_weights(flat.detach())  # IMTL-G's closed form
        new = (alpha.unsqueeze(1) * flat).sum(0)
        if self.representation is not None:
            loss = apply_rep_gradient(task_loss, z, flat, new)
        else:
            loss = apply_shared_gradient(task_loss, params, flat, new)
        return WeightedLoss(loss, (alpha * scale).detach())
