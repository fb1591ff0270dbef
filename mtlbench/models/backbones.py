"""Backbones shared by the models that stack them: embedding -> backbone -> towers.

A backbone maps the flat input x [B, in] to what the towers read: one tensor [B, H] that every tower reads
(shared bottom), or one representation per *slot*, a slot being whatever the model's specific parts (gates,
specific experts, towers) belong to. The ``per`` setting of :class:`SlotModel` chooses: one slot per task
(``task``, K slots, the original models), per scenario (``scenario``, S slots) or per (task, scenario) pair
(``task_scenario``, K·S slots, slot ``k * S + s``). A row then reads its own scenario's slot(s).

- :class:`SharedBottomBackbone`: h = MLP(x) (Caruana 1997).
- :class:`MMoEBackbone`: shared experts mixed by one softmax gate per slot (Ma et al. 2018; STAN Eq. 1, 3);
  for ``per=scenario | task_scenario`` a row's own gate(s) are picked before mixing.
- :class:`CGCLevel`, :class:`PLEBackbone`: PLE's customised gate control and its stacked levels (Tang et al.
  2020; STAN Eq. 1-3).
- :class:`ScenarioCGC`: a CGC whose specific experts and gate belong to the row's scenario.

A new model subclasses :class:`SlotModel` (for the ``per`` setting) or :class:`MultiTaskModel`, builds
``self.embedding``, a backbone and ``self.towers``, and its ``forward`` composes the three.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import MLP, ExpertGroup, ScenarioTowers, Towers, pick_slot

# -- the ``per`` setting: what the specific parts belong to ------------------------------------------------

PER_CHOICES = ("task", "scenario", "task_scenario")


def check_per(model: str, schema: DatasetSchema, per: str) -> int:
    """Validate a model's ``per`` setting; returns its slot count (K, S or K·S towers / gates).

    ``task``: one slot per task (plain multi-task). ``scenario``: one slot per scenario, picked by the row's
    scenario. ``task_scenario``: one slot per (task, scenario) pair, slot index ``k * S + s``.
    """
    if per not in PER_CHOICES:
        raise ConfigError(f"model {model}: per={per!r} is not one of {', '.join(PER_CHOICES)}")
    if per != "task" and schema.scenario_field is None:
        raise ConfigError(
            f"model {model} with per={per!r} needs a scenario field; dataset {schema.name!r} has none (use per=task)"
        )
    k, s = len(schema.tasks), schema.num_scenarios
    return {"task": k, "scenario": s, "task_scenario": k * s}[per]


def row_scenarios(schema: DatasetSchema, batch: dict[str, Tensor]) -> Tensor:
    """The scenario id of every row [B] (``batch["scenario"]``, else the scenario field's column)."""
    if "scenario" in batch:
        return batch["scenario"]
    if schema.scenario_field is None:
        raise ConfigError(f"rows have no scenario id: dataset {schema.name!r} has no scenario field")
    return batch["categorical"][:, [f.name for f in schema.categorical].index(schema.scenario_field)]


Representation = Tensor | list[Tensor]
"""A backbone's output: [B, H] read by every slot, or one [B, H] per slot (a list, or stacked [n, B, H])."""


class SlotModel(MultiTaskModel):
    """Base of the models with a ``per`` setting (``task`` | ``scenario`` | ``task_scenario``, see module doc).

    Gives ``self.per``, ``self.num_slots`` (K, S or K·S), :meth:`make_towers` (one tower per task, or the
    scenario towers of :class:`ScenarioTowers`), :meth:`scenarios` (the rows' scenario ids, None for
    ``per=task``) and :meth:`read_towers` (the towers on a backbone's :data:`Representation`).
    """

    towers: nn.Module  # built by the subclass (:meth:`make_towers`)

    def __init__(self, schema: DatasetSchema, per: str = "task") -> None:
        num_slots = check_per(type(self).__name__, schema, per)
        super().__init__(schema)
        self.per, self.num_slots = per, num_slots
        if per != "task":
            self.required_fields = ("scenario",)

    def make_towers(self, in_dim: int, hidden: list[int], dropout: float = 0.0, act: str = "relu") -> nn.Module:
        """One tower per slot, each ending in the logits of the tasks it serves."""
        if self.per == "task":
            return Towers(self.tasks, in_dim, hidden, dropout, act)
        return ScenarioTowers(self.tasks, self.schema.num_scenarios, self.per, in_dim, hidden, dropout, act)

    def scenarios(self, batch: dict[str, Tensor]) -> Tensor | None:
        """The rows' scenario ids [B] that pick their slots; None for ``per=task``."""
        return None if self.per == "task" else row_scenarios(self.schema, batch)

    def read_towers(self, reps: Representation, scenario: Tensor | None) -> dict[str, Tensor]:
        """``self.towers`` on the backbone's output; a row reads its own scenario's slot(s)."""
        if scenario is None:  # per=task: tower k reads representation k
            return self.towers([reps] * len(self.tasks) if isinstance(reps, Tensor) else reps)
        return self.towers(torch.stack(reps) if isinstance(reps, list) else reps, scenario)


# -- shared bottom ------------------------------------------------------------------------------------------


class SharedBottomBackbone(MLP):
    """Shared-Bottom (Caruana 1997): h = MLP(x), one representation [B, H] that every task (slot) reads."""


# -- MMoE ---------------------------------------------------------------------------------------------------


class MMoEBackbone(nn.Module):
    """MMoE (Ma et al. 2018): shared experts f_i, one gate per slot: w^j = softmax(W^j x) (STAN Eq. 1), and
    the mixture g^j = Σ_i w^j_i f_i(x) (STAN Eq. 3).

    ``per=task`` (default): one gate per task; returns the K mixtures. ``per=scenario``: one gate per
    scenario; a row mixes the experts with its scenario's gate only and returns that one mixture [B, H]
    (read by its scenario's tower). ``per=task_scenario``: one gate per (task, scenario), slot k·S + s; a
    row mixes with its scenario's K gates, and slot (k, s) reads task k's mixture: returns [K·S, B, H].
    """

    def __init__(
        self,
        num_tasks: int,
        in_dim: int,
        num_experts: int,
        expert: list[int],
        dropout: float = 0.0,
        act: str = "relu",
        per: str = "task",
        num_scenarios: int = 1,
    ) -> None:
        super().__init__()
        if per not in PER_CHOICES:
            raise ValueError(f"MMoEBackbone: per must be one of {PER_CHOICES}, got {per!r}")
        self.num_tasks, self.num_experts, self.per, self.num_scenarios = num_tasks, num_experts, per, num_scenarios
        num_gates = {"task": num_tasks, "scenario": num_scenarios, "task_scenario": num_tasks * num_scenarios}[per]
        self.experts = ExpertGroup(num_experts, in_dim, expert, dropout, act)
        self.gates = nn.Linear(in_dim, num_experts * num_gates)  # all gates in one matmul
        self.out_dim = self.experts.out_dim

    def forward(self, x: Tensor, scenario: Tensor | None = None) -> Representation:
        experts = self.experts(x)  # [B, E, H]
        b, k, n, e = len(x), self.num_tasks, self.num_scenarios, self.num_experts
        if self.per == "task":
            w = torch.softmax(self.gates(x).view(b, k, e), dim=-1)  # Eq. 1
            return list(torch.bmm(w, experts).unbind(1))  # Eq. 3: K x [B, H]
        if scenario is None:
            raise ValueError(f"MMoEBackbone(per={self.per!r}) needs the rows' scenario ids")
        if self.per == "scenario":  # the row's scenario gate: [B, S, E] -> [B, 1, E]
            logits = pick_slot(self.gates(x).view(b, n, e), scenario).unsqueeze(1)
        else:  # gate (k, s) is slot k*S + s: [B, K, S, E] -> [B, S, K, E] -> the row's [B, K, E]
            logits = pick_slot(self.gates(x).view(b, k, n, e).transpose(1, 2), scenario)
        mixed = torch.bmm(torch.softmax(logits, dim=-1), experts)  # [B, 1 or K, H]
        if self.per == "scenario":
            return mixed[:, 0]
        return mixed.transpose(0, 1).repeat_interleave(n, dim=0)  # slot (k, s) reads mixture k: [K*S, B, H]


# -- CGC / PLE ----------------------------------------------------------------------------------------------


class CGCLevel(nn.Module):
    """One extraction level. Inputs: one tensor per task (slot) plus one shared tensor (all [B, in])."""

    def __init__(
        self,
        num_tasks: int,
        in_dim: int,
        num_specific: int,
        num_shared: int,
        hidden: list[int],
        last: bool,
        dropout: float = 0.0,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.num_tasks, self.ns, self.nh, self.last = num_tasks, num_specific, num_shared, last
        self.specific = nn.ModuleList(ExpertGroup(num_specific, in_dim, hidden, dropout, act) for _ in range(num_tasks))
        self.shared = ExpertGroup(num_shared, in_dim, hidden, dropout, act)
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, num_specific + num_shared) for _ in range(num_tasks))
        self.shared_gate = None if last else nn.Linear(in_dim, num_tasks * num_specific + num_shared)
        self.out_dim = self.shared.out_dim

    def forward(self, task_in: list[Tensor], shared_in: Tensor) -> tuple[list[Tensor], Tensor | None]:
        shared = self.shared(shared_in)  # [B, nh, H]
        specific = [e(x) for e, x in zip(self.specific, task_in)]  # K x [B, ns, H]
        outs = []
        for k, x in enumerate(task_in):
            h = torch.cat([specific[k], shared], dim=1)  # Eq. 2: H^k = [Exp_sp^k, Exp_sh]
            w = torch.softmax(self.task_gates[k](x), dim=-1)  # Eq. 1: w^k = softmax(W^k x)
            outs.append(torch.bmm(w.unsqueeze(1), h).squeeze(1))  # Eq. 3: weighted sum of experts
        if self.shared_gate is None:
            return outs, None
        everything = torch.cat([*specific, shared], dim=1)
        w = torch.softmax(self.shared_gate(shared_in), dim=-1)
        return outs, torch.bmm(w.unsqueeze(1), everything).squeeze(1)


class PLEBackbone(nn.Module):
    """``num_levels`` CGC levels; returns one representation per task (the towers' inputs).

    ``num_tasks`` is the number of specific slots: tasks for plain PLE, scenarios or (task, scenario) pairs
    for ``PLE(per=...)``. At every level but the last, a shared gate mixes all experts to feed the next
    level's shared experts.
    """

    def __init__(
        self,
        num_tasks: int,
        in_dim: int,
        num_levels: int,
        num_specific: int,
        num_shared: int,
        expert: list[int],
        dropout: float = 0.0,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        levels = []
        for i in range(num_levels):
            levels.append(
                CGCLevel(
                    num_tasks,
                    in_dim,
                    num_specific,
                    num_shared,
                    expert,
                    last=i == num_levels - 1,
                    dropout=dropout,
                    act=act,
                )
            )
            in_dim = levels[-1].out_dim
        self.levels = nn.ModuleList(levels)
        self.out_dim = in_dim

    def forward(self, x: Tensor) -> list[Tensor]:
        task_in, shared_in = [x] * self.num_tasks, x
        for level in self.levels:
            task_in, shared_in = level(task_in, shared_in)
        return task_in


class ScenarioCGC(nn.Module):
    """CGC over scenarios: the sample's scenario gate mixes that scenario's experts with the shared ones.

    All scenarios' specific experts run on the whole batch as one batched expert group, and each row then
    takes its own scenario's experts and gate (a gather, no loop over scenarios). Returns [B, H].
    """

    def __init__(
        self,
        num_scenarios: int,
        in_dim: int,
        num_specific: int,
        num_shared: int,
        hidden: list[int],
        dropout: float = 0.0,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.s, self.ns, self.nh = num_scenarios, num_specific, num_shared
        self.specific = ExpertGroup(num_scenarios * num_specific, in_dim, hidden, dropout, act)
        self.shared = ExpertGroup(num_shared, in_dim, hidden, dropout, act)
        self.gates = nn.Linear(in_dim, num_scenarios * (num_specific + num_shared))  # W_s for every s
        self.out_dim = self.shared.out_dim

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        rows = torch.arange(len(x), device=x.device)
        own = self.specific(x).view(len(x), self.s, self.ns, -1)[rows, scenario]  # Exp_sp^s: [B, ns, H]
        h = torch.cat([own, self.shared(x)], dim=1)  # CGC Eq. 2: [Exp_sp^s, Exp_sh]
        w = torch.softmax(self.gates(x).view(len(x), self.s, -1)[rows, scenario], -1)  # Eq. 1: softmax(W_s x)
        return torch.bmm(w.unsqueeze(1), h).squeeze(1)  # CGC Eq. 3
