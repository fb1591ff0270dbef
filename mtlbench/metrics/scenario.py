"""Per-scenario AUC and GAUC for every task, from one gathered state (no loop over users)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from mtlbench.metrics.base import RecMetric, group_ids
from mtlbench.metrics.functional import grouped_auc
from mtlbench.registry import register_metric


def per_scenario_gauc(preds: Tensor, target: Tensor, user: Tensor, scenario: Tensor) -> tuple[Tensor, Tensor]:
    """GAUC within each scenario: impression-weighted AUC over the (scenario, user) groups of that scenario.

    Returns (scenario ids, gauc per scenario); NaN where a scenario has no user with both classes.
    """
    scenarios, s_idx = torch.unique(scenario, return_inverse=True)
    users, u_idx = torch.unique(user, return_inverse=True)
    key = s_idx * len(users) + u_idx
    auc, n, valid = grouped_auc(preds, target, key)
    key_s = torch.unique(key) // len(users)
    w = n.to(torch.float64) * valid
    zeros = torch.zeros(len(scenarios), dtype=torch.float64, device=preds.device)
    num = zeros.index_add(0, key_s, w * auc.nan_to_num(0.0).double())
    den = zeros.index_add(0, key_s, w)
    return scenarios, torch.where(den > 0, num / den.clamp_min(1e-12), torch.nan)


@register_metric("scenario")
class ScenarioMetrics(RecMetric):
    """``auc@scenario=s`` and (with users) ``gauc@scenario=s`` for every scenario s.

    ``with_users``: None (the registered metric) uses the user ids whenever the rows offer them.
    """

    groups = ("scenario",)
    dict_output = True
    higher_is_better = True

    preds: list[Tensor] | Tensor  # "cat" states: lists, or after gathering for compute a tensor
    target: list[Tensor] | Tensor
    scenario: list[Tensor] | Tensor
    user: list[Tensor] | Tensor

    def __init__(self, with_users: bool | None = None) -> None:
        super().__init__()
        self.with_users = with_users
        for name in ("preds", "target", "scenario", "user"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, groups: Mapping[str, Tensor] | None = None) -> None:
        """``groups``: the rows' group ids by name (``scenario``, optionally ``user``)."""
        scenario = group_ids(groups, "scenario")
        keep = ~torch.isnan(target)
        # lists between updates (torchmetrics concatenates them only while syncing for compute)
        assert isinstance(self.preds, list) and isinstance(self.target, list) and isinstance(self.scenario, list)
        assert isinstance(self.user, list)
        self.preds.append(preds[keep])
        self.target.append(target[keep])
        self.scenario.append(scenario[keep])
        if self.with_users or (self.with_users is None and groups is not None and "user" in groups):
            self.user.append(group_ids(groups, "user")[keep])

    def compute(self) -> dict[str, float]:
        p, y, s = (dim_zero_cat(x) for x in (self.preds, self.target, self.scenario))
        out: dict[str, float] = {}
        ids = torch.unique(s)
        auc, _, valid = grouped_auc(p, y, s)
        for sid, a, v in zip(ids.tolist(), auc.tolist(), valid.tolist()):
            out[f"auc@scenario={sid}"] = a if v else float("nan")
        if self.with_users or (self.with_users is None and len(self.user) > 0):  # a list, or gathered: a tensor
            ids, g = per_scenario_gauc(p, y, dim_zero_cat(self.user), s)
            out.update({f"gauc@scenario={sid}": v for sid, v in zip(ids.tolist(), g.tolist())})
        return out
