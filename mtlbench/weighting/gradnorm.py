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
dependence is read once from the autograd graph); ``layer`` restricts W to the shared parameters whose name
starts with that prefix, e.g. ``weighting.layer=experts.weights.1`` for MMoE's
last expert layer. The gradient norms are detached, so no second-order backward is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, WeightingStrategy, task_means


def shared_parameters_of(weighting: str, model: nn.Module, prefix: str | None = None) -> list[nn.Parameter]:
    """``model.shared_parameters()`` (optionally those named ``prefix*``); ConfigError when there are none."""
    name = type(model).__name__
    shared = list(model.shared_parameters()) if hasattr(model, "shared_parameters") else []
    if prefix is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        shared = [p for p in shared if names.get(id(p), "").startswith(prefix)]
        if not shared:
            known = sorted({names[id(p)] for p in model.shared_parameters()})
            raise ConfigError(f"weighting {weighting!r}: layer={prefix!r} matches no shared parameter of "
                              f"model {name}; shared ones are {known}")
    if not shared:
        raise ConfigError(f"weighting {weighting!r} needs parameters shared by the tasks; "
                          f"model {name} has none")
    return shared


def reached_by(output: ModelOutput, tasks: list[str], params: list[nn.Parameter]) -> Tensor:
    """[K, P] bool: does task k's logit depend on parameter p at all? (structural, from the autograd graph)

    Per-task loss gradients can't tell this: the module computes every task's loss from one stacked tensor,
    so each loss's graph formally touches every parameter (with exact-zero gradients).
    """
    rows = []
    for t in tasks:
        logit = output.logits[t]
        grads = (torch.autograd.grad(logit.sum(), params, retain_graph=True, allow_unused=True)
                 if logit.requires_grad else [None] * len(params))
        rows.append([g is not None for g in grads])
    return torch.tensor(rows, dtype=torch.bool)


def task_gradients(task_losses: Tensor, params: list[nn.Parameter]) -> list[tuple[Tensor | None, ...]]:
    """∇_θ L_k for every task k on ``params`` (None where L_k does not depend on a parameter at all)."""
    return [torch.autograd.grad(task_losses[k], params, retain_graph=True, allow_unused=True)
            for k in range(len(task_losses))]


@register_weighting("gradnorm")
class GradNorm(WeightingStrategy):
    gradient_based = True

    def __init__(self, tasks: list[str], alpha: float = 1.5, layer: str | None = None) -> None:
        super().__init__(tasks)
        self.alpha = float(alpha)
        self.layer = layer
        self.weights = nn.Parameter(torch.ones(len(tasks)))
        self.register_buffer("initial_losses", torch.full((len(tasks),), float("nan")))
        self._model: list[nn.Module] = []  # a list keeps the model out of this module's parameters
        self._params: list[nn.Parameter] = []
        self._shared: list[int] | None = None

    def attach(self, model: nn.Module) -> None:
        self._model = [model]
        self._params = shared_parameters_of("gradnorm", model, self.layer)
        self._shared = None

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor],
                output: ModelOutput) -> WeightedLoss:
        if not self._params:
            raise ConfigError("weighting 'gradnorm' needs attach(model) first: it works on shared weights")
        k = len(self.tasks)
        with torch.no_grad():  # renormalise Σ w = K (and keep w > 0) after the optimiser's last update
            self.weights.clamp_(min=1e-3).mul_(k / self.weights.sum())
        if self._shared is None:  # parameters every task's logit depends on (fixed by the architecture)
            reach = reached_by(output, self.tasks, self._params)
            self._shared = [i for i in range(len(self._params)) if bool(reach[:, i].all())]
        if not self._shared:
            name = type(self._model[0]).__name__
            raise ConfigError(f"weighting 'gradnorm' needs weights shared by every task; no shared "
                              f"parameter of model {name} feeds all of the tasks {self.tasks}")
        task_loss = task_means(losses, mask)
        params = [self._params[i] for i in self._shared]
        grads = task_gradients(task_loss, params)
        norms = torch.stack([torch.sqrt(sum((gi.pow(2).sum() for gi in g if gi is not None),
                                            torch.zeros((), device=losses.device))) for g in grads])
        current = task_loss.detach()
        with torch.no_grad():  # L_k(0): the first labelled value of each task
            first = torch.isnan(self.initial_losses) & mask.any(0) & (current > 0)
            self.initial_losses.copy_(torch.where(first, current, self.initial_losses))
        ratio = current / self.initial_losses                          # L̃_k = L_k(t) / L_k(0)
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
        r = ratio / ratio.mean()                                        # relative inverse training rate
        g_norm = self.weights * norms                                   # G_k = w_k ‖∇_W L_k‖
        target = (g_norm.mean() * r.pow(self.alpha)).detach()          # Ḡ · r_k^α, constant
        grad_loss = (g_norm - target).abs().sum()                       # Eq. 2: L_grad
        loss = (self.weights.detach() * task_loss).sum() + grad_loss
        return WeightedLoss(loss, self.weights.detach().clone())
