"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, Eq. 6-7 of MTAN).

w_k(t) = K·exp(r_k(t-1)/T) / Σ_i exp(r_i(t-1)/T), with r_k(t-1) = L_k(t-1) / L_k(t-2) the relative descent
of task k's loss over the last two epochs (L_k(e) = task k's training loss averaged over the steps of epoch e)
and T = ``temperature``. A task whose loss falls more slowly gets more weight. Weights are 1 in the first two
epochs (no history). The loss history lives in buffers, so it is saved in checkpoints.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, WeightingStrategy, task_means


@register_weighting("dwa")
class DWA(WeightingStrategy):
    epoch_sum: Tensor
    epoch_steps: Tensor
    history: Tensor

    def __init__(self, tasks: list[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if temperature <= 0:
            raise ConfigError(f"weighting 'dwa': temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        k = len(tasks)
        f64 = torch.float64
        self.register_buffer("epoch_sum", torch.zeros(k, dtype=f64))  # Σ of step losses this epoch
        self.register_buffer("epoch_steps", torch.zeros(k, dtype=f64))  # steps with that task's labels
        self.register_buffer("history", torch.full((2, k), float("nan"), dtype=f64))  # L(t-2), L(t-1)

    def weights(self) -> Tensor:
        """Eq. 6-7 from the last two epoch losses; ones until two epochs are complete."""
        older, last = self.history
        if torch.isnan(older).any() or torch.isnan(last).any():
            return torch.ones(len(self.tasks), device=self.history.device)
        r = last / older.clamp_min(1e-12)
        return (len(self.tasks) * torch.softmax(r / self.temperature, dim=0)).float()

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        means = task_means(losses, mask)
        labelled = mask.any(0)
        self.epoch_sum += torch.where(labelled, means.detach().double(), 0.0)
        self.epoch_steps += labelled.double()
        w = self.weights().to(means.dtype)
        return WeightedLoss((w * means).sum(), w)

    def on_train_epoch_end(self, epoch: int) -> None:
        """Push this epoch's average loss per task into the two-epoch history."""
        if not self.epoch_steps.any():
            return
        avg = self.epoch_sum / self.epoch_steps.clamp_min(1)
        self.history.copy_(torch.stack([self.history[1], avg]))
        self.epoch_sum.zero_()
        self.epoch_steps.zero_()
