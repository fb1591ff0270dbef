"""The loss-weighting contract (LibMTL-style): one small class, composable with any model."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from mtlbench.models.base import ModelOutput


@dataclass
class WeightedLoss:
    """The scalar to minimise and the per-task weights that produced it (logged every step)."""

    loss: Tensor
    task_weights: Tensor | None = None  # [K], or [B, K] for per-sample weights


def task_means(losses: Tensor, mask: Tensor) -> Tensor:
    """Mean loss per task over the samples that have that task's label: [B, K] -> [K].

    Averaging per task (not summing over samples) keeps the loss scale independent of batch size and
    of how many rows carry a label.
    """
    return (losses * mask).sum(0) / mask.sum(0).clamp_min(1)


class WeightingStrategy(nn.Module):
    """Combines the per-sample x per-task loss matrix into one loss.

    ``forward(losses, mask, batch, output)``: ``losses`` [B, K] per-sample losses (zero where ``mask`` is
    False), ``batch`` the batch dict (user ids, scenario ids, ...), ``output`` the model's output. Strategies
    may hold parameters (optimised with the model) or per-user state (buffers are saved in checkpoints).
    Gradient-based strategies (GradNorm, PCGrad) subclass :class:`mtlbench.weighting.gradient.GradientWeighting`,
    which takes the model through :meth:`attach` and gives the per-task gradients of the shared parameters; the
    loss they return must carry the gradient they want applied.
    """

    required_inputs: tuple[str, ...] = ()
    gradient_based = False  # True (GradientWeighting): takes per-task gradients of the shared parameters, so dense

    def __init__(self, tasks: list[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)

    def attach(self, model: nn.Module) -> None:
        """Called once with the model being trained (kept out of this module's parameters)."""

    def on_train_epoch_end(self, epoch: int) -> None:
        """Called after every training epoch (e.g. DWA's loss history)."""

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        raise NotImplementedError


def weighted_sum(losses: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
    """Σ_k η^k · L^k (STAN Eq. 5) with L^k the per-task mean loss."""
    return (weights.to(losses.dtype) * task_means(losses, mask)).sum()
