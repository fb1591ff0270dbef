"""AdaTT: Adaptive Task-to-Task Fusion Network (Li et al., KDD 2023), the AdaTT-sp form with shared experts.

Every fusion level k holds m_t task-specific experts per task t and m_s shared experts. Task t's experts
read f_t^{k-1} (the output of task t's fusion unit at the level below), the shared experts read
f_s^{k-1}; at level 1 everything reads the embedding x. A fusion unit combines the stacked outputs E^k of
*all* experts, of every task and the shared ones (the paper's fusion unit):

    f_t^k = E^k · g_t^k(f_t^{k-1}) + E_t^k · v_t^k,    g_t^k(h) = softmax(W_t^k h)

the adaptive fusion (a gate over all experts, conditioned on the unit's own input) plus a residual of the
task's *own* (native) experts E_t^k, combined linearly by learned weights v_t^k (with one native expert,
v = 1: the plain expert output, as in the paper). A shared fusion unit f_s^k is built the same way for
every level but the last. Task towers read f_t^L.

Paper's: task-specific and shared fusion units, gates over all experts conditioned on the unit's input,
the native-expert residual. Ours: experts are MLPs (``expert`` widths per level: one entry per level),
v initialised to 1/m_t (the mean of the native experts at the start; Meta's reference draws v uniformly),
widths and counts as in the config.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput, MultiTaskModel
from mtlbench.models.layers import ExpertGroup, FeatureEmbedding, Towers
from mtlbench.registry import register_model


class FusionLevel(nn.Module):
    """One AdaTT level: T task units (+ a shared unit unless ``last``) over all K·m + m_s experts.

    Input [T + 1, B, D] (task units' inputs, then the shared unit's); output [T (+ 1), B, H].
    """

    expert_owner: Tensor
    v: Tensor

    def __init__(
        self,
        num_tasks: int,
        m: int,
        m_shared: int,
        in_dim: int,
        hidden: list[int],
        last: bool,
        dropout: float,
        act: str,
    ) -> None:
        super().__init__()
        self.t, self.m, self.m_shared, self.last = num_tasks, m, m_shared, last
        n = num_tasks * m + m_shared
        owner = torch.cat([torch.arange(num_tasks).repeat_interleave(m), torch.full((m_shared,), num_tasks)])
        self.register_buffer("expert_owner", owner, persistent=False)  # which unit's input each expert reads
        self.experts = ExpertGroup(n, in_dim, hidden, dropout, act)
        self.units = num_tasks if last else num_tasks + 1
        self.gates = ExpertGroup(self.units, in_dim, [n], 0.0, act)
        self.gates.act = nn.Identity()  # a linear map W_t^k per unit
        native = [m] * num_tasks + ([] if last else [m_shared])
        # v: learned weights of each unit's native experts; with one native expert per unit, fixed to 1
        v = torch.tensor([[1.0 / c] * max(native) for c in native])
        if max(native) > 1:
            self.v = nn.Parameter(v)
        else:
            self.register_buffer("v", v, persistent=False)
        self.out_dim = self.experts.out_dim

    def native_weights(self) -> Tensor:
        """[units, n]: v_t on unit t's own experts, zero elsewhere (ones if every unit has one native expert)."""
        native_owner = self.expert_owner.unsqueeze(0) == torch.arange(self.units, device=self.v.device).unsqueeze(1)
        v = self.v
        pos = torch.cat([torch.arange(self.m).repeat(self.t), torch.arange(self.m_shared)]).to(self.v.device)
        return torch.where(native_owner, v[:, pos.clamp_max(v.shape[1] - 1)], torch.zeros(()))

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        e = self.experts(inputs[self.expert_owner])  # [B, n, H]
        g = torch.softmax(self.gates(inputs[: self.units]), dim=-1)  # [B, units, n]: g_t^k(f_t^{k-1})
        w = g + self.native_weights().unsqueeze(0)  # fusion unit: E·g_t + E_t·v_t in one product
        return torch.bmm(w, e).transpose(0, 1), g


@register_model("adatt")
class AdaTT(MultiTaskModel):
    """Fusion levels of task-specific and shared experts; towers on the task units of the last level."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        task_experts: int = 2,
        shared_experts: int = 1,
        expert: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if task_experts < 1 or shared_experts < 0 or not expert:
            raise ConfigError("model 'adatt': need task_experts >= 1, shared_experts >= 0 and at least one level")
        if shared_experts == 0 and len(expert) > 1:
            raise ConfigError("model 'adatt': shared_experts=0 needs a single level (expert with one width)")
        k = len(self.tasks)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        dims = [self.embedding.output_dim, *expert]
        self.levels = nn.ModuleList(
            FusionLevel(k, task_experts, shared_experts, a, [b], i == len(expert) - 1, dropout, activation)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))
        )  # one expert layer per level
        self.towers = Towers(self.tasks, dims[-1], list(tower), dropout, activation)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        x = self.embedding.flat(batch)
        h = x.unsqueeze(0).expand(len(self.tasks) + 1, -1, -1)  # every unit reads x at level 1
        for level in self.levels:
            h, _ = level(h)
        return ModelOutput(logits=self.towers(list(h[: len(self.tasks)])))
