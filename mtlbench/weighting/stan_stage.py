"""STAN's stage-adaptive loss (Li et al., RecSys 2023, sections 3.3-3.4) as loss-weighting strategies.

``stan_stage``: the latent user stage of Algorithm 1. Per user u and task k it keeps ``alpha_u^k`` and
``beta_u^k`` (both start at 1) and the counter ``c_u`` (starts at 0); every training sample i of u adds
``alpha += y~_i c_i`` and ``beta += (1 - y~_i) c_i`` with ``y~`` the model's user preference (Eq. 9, entering
detached), and the sample's weight ``gamma ~ Beta(alpha_u, beta_u)`` (Eq. 12) multiplies its BCE in Eq. 13.

``stan_wo_beta`` ("STAN w/o Beta", section 4.1.2): ``gamma := y~`` directly.

Both need a model that returns its preferences in ``ModelOutput.extras["preference"]`` ([B, K]
probabilities) and its preference loss (Eq. 11) in ``aux_losses``, i.e. ``model=stan``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput
from mtlbench.registry import register_weighting
from mtlbench.weighting.base import WeightedLoss, WeightingStrategy, task_means

PREFERENCE = "preference"


def _preference(output: ModelOutput, name: str) -> Tensor:
    pref = output.extras.get(PREFERENCE)
    if pref is None:
        raise ConfigError(
            f"weighting {name!r} needs a model that outputs user preferences "
            f"(extras['{PREFERENCE}']), such as model=stan"
        )
    return pref.detach()


def _check_model(model: nn.Module, name: str) -> None:
    if not getattr(model, "outputs_preference", False):
        raise ConfigError(
            f"weighting {name!r} needs a model that outputs user preferences (STAN Eq. 9), "
            f"such as model=stan; {type(model).__name__} does not"
        )


def stage_weighted_loss(losses: Tensor, mask: Tensor, gamma: Tensor) -> Tensor:
    """Eq. 13 without its L_s term (the model adds that): Σ_k mean over labelled rows of gamma_bk · BCE_bk.

    ``losses`` holds Eq. 14's per-sample terms as the binary cross-entropy (the printed Eq. 14 lacks the
    minus sign), averaged per task over the rows that carry the task's label instead of summed, so the
    scale does not depend on the batch size (the same reduction as the model's Eq. 11 term).
    """
    return task_means(losses * gamma.to(losses.dtype), mask).sum()


def distributed() -> bool:
    """Whether more than one process trains (torch.distributed initialised with world size > 1)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_rows(x: Tensor) -> Tensor:
    """Rows of ``x`` from every process, rank by rank (``x`` itself without torch.distributed).

    Row counts may differ between processes: sizes are exchanged first and rows padded to the largest.
    """
    if not distributed():
        return x
    world = dist.get_world_size()
    n = torch.tensor([len(x)], dtype=torch.int64, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    padded = torch.zeros((max(counts), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, counts)])


@register_weighting("stan_stage")
class StanStage(WeightingStrategy):
    """Algorithm 1 + Eq. 13, vectorised per batch.

    With shuffled mini-batches the algorithm's sequential counter is replaced by each row's own position:
    unrolled, Algorithm 1 gives ``alpha_u = 1 + Σ_i y~_i c_i`` and ``beta_u = 1 + Σ_i (1 - y~_i) c_i`` with
    ``c_i`` the 1-based position of sample i in u's training rows in time order. Taking ``c_i`` from the
    derived input ``stan_position`` makes the update order-independent: after one pass over the training
    data the state is exactly Algorithm 1's, whatever order the batches came in (``y~_i`` being the
    preference at the step the sample was seen). ``c_u`` is kept as the number of samples applied.

    Per batch: first the batch's samples update the state (``index_add_``), then every sample draws its
    own ``gamma`` from its user's Beta (the global torch RNG, seeded by the run), detached. Under
    torch.distributed every process applies the (user, y~, position) rows of all processes, in rank
    order, so the state stays identical everywhere.

    ``reset_each_epoch``: True (default) starts every epoch from alpha = beta = 1, c = 0, so the state is
    Algorithm 1 over one pass of the data (the reset happens at the first step of the next epoch, so the
    state saved with an epoch's checkpoint is that epoch's complete pass); False carries the state over,
    so a user's pseudo-counts accumulate over epochs.

    The state (``alpha``, ``beta`` [users, K] float64, ``count`` [users]) lives in persistent buffers sized
    by the user vocabulary, created when the strategy is attached to the model (or from ``num_users``), so
    Lightning checkpoints carry it.
    """

    required_inputs = ("stan_position",)
    alpha: Tensor  # the state buffers, registered by _init_state
    beta: Tensor
    count: Tensor

    def __init__(self, tasks: list[str], reset_each_epoch: bool = True, num_users: int | None = None) -> None:
        super().__init__(tasks)
        self.reset_each_epoch = bool(reset_each_epoch)
        self._reset_pending = False
        if num_users is not None:
            self._init_state(int(num_users))

    def _init_state(self, num_users: int) -> None:
        k = len(self.tasks)
        self.register_buffer("alpha", torch.ones(num_users, k, dtype=torch.float64))
        self.register_buffer("beta", torch.ones(num_users, k, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(num_users, dtype=torch.int64))

    def attach(self, model: nn.Module) -> None:
        _check_model(model, "stan_stage")
        schema = model.schema
        if not isinstance(schema, DatasetSchema):
            raise ConfigError(
                f"weighting 'stan_stage' needs a model with a dataset schema; {type(model).__name__} has none"
            )
        if schema.user_field is None:
            raise ConfigError(f"weighting 'stan_stage' needs a user field; dataset {schema.name!r} has none")
        if not hasattr(self, "alpha"):
            self._init_state(schema.feature(schema.user_field).vocab_size)

    def reset_state(self) -> None:
        """Algorithm 1, line 3: alpha = beta = 1, c = 0 for every user."""
        self.alpha.fill_(1.0)
        self.beta.fill_(1.0)
        self.count.zero_()

    def on_train_epoch_end(self, epoch: int) -> None:
        self._reset_pending = self.reset_each_epoch

    @torch.no_grad()
    def update(self, users: Tensor, pref: Tensor, position: Tensor) -> None:
        """Algorithm 1, lines 6-8 for a batch: c_u += 1, alpha += y~ c, beta += (1 - y~) c (all processes)."""
        if self._reset_pending:
            self.reset_state()
            self._reset_pending = False
        u, c, p = users, position.to(torch.float64).unsqueeze(1), pref.to(torch.float64)
        if distributed():  # the (user, c, y~) rows of every process, as one float64 table
            rows = all_gather_rows(torch.cat([u.to(torch.float64).unsqueeze(1), c, p], 1))
            u, c, p = rows[:, 0].long(), rows[:, 1:2], rows[:, 2:]
        self.alpha.index_add_(0, u, p * c)  # line 7
        self.beta.index_add_(0, u, (1.0 - p) * c)  # line 8
        self.count.index_add_(0, u, torch.ones_like(u))  # line 6

    def sample(self, users: Tensor) -> Tensor:
        """Algorithm 1, line 11: gamma ~ Beta(alpha_u, beta_u), one independent draw per sample [B, K]."""
        # validate_args=False: alpha, beta >= 1 by construction, so the per-step argument checks are skipped
        return torch.distributions.Beta(self.alpha[users], self.beta[users], validate_args=False).sample().float()

    def expected_gamma(self) -> Tensor:
        """E[gamma_u] = alpha_u / (alpha_u + beta_u) [users, K]."""
        return self.alpha / (self.alpha + self.beta)

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        pref = _preference(output, "stan_stage")
        users = batch["user"]
        if self.training:
            self.update(users, pref, batch["stan_position"])
        gamma = self.sample(users).to(losses.device)
        return WeightedLoss(stage_weighted_loss(losses, mask, gamma), gamma)  # Eq. 13


@register_weighting("stan_wo_beta")
class StanWithoutBeta(WeightingStrategy):
    """STAN w/o Beta (section 4.1.2): Eq. 13 with gamma := y~ (the preference of Eq. 9, detached)."""

    def attach(self, model: nn.Module) -> None:
        _check_model(model, "stan_wo_beta")

    def forward(self, losses: Tensor, mask: Tensor, batch: dict[str, Tensor], output: ModelOutput) -> WeightedLoss:
        gamma = _preference(output, "stan_wo_beta").to(losses.dtype)
        return WeightedLoss(stage_weighted_loss(losses, mask, gamma), gamma)
