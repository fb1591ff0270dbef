"""Per-scenario AUC and GAUC for every task, from one gathered state (no loop over users)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mtlbench.metrics.functional import grouped_auc


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


class ScenarioMetrics(Metric):
    """``auc@scenario=s`` and (with users) ``gauc@scenario=s`` for every scenario s."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, with_users: bool = True) -> None:
        super().__init__()
        self.with_users = with_users
        for name in ("preds", "target", "scenario", "user"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, scenario: Tensor, user: Tensor | None = None) -> None:
        keep = ~torch.isnan(target)
        self.preds.append(preds[keep])
        self.target.append(target[keep])
        self.scenario.append(scenario[keep])
        if self.with_users:
            self.user.append(user[keep])

    def compute(self) -> dict[str, float]:
        p, y, s = (dim_zero_cat(x) for x in (self.preds, self.target, self.scenario))
        out: dict[str, float] = {}
        ids = torch.unique(s)
        auc, _, valid = grouped_auc(p, y, s)
        for sid, a, v in zip(ids.tolist(), auc.tolist(), valid.tolist()):
            out[f"auc@scenario={sid}"] = a if v else float("nan")
        if self.with_users:
            ids, g = per_scenario_gauc(p, y, dim_zero_cat(self.user), s)
            out.update({f"gauc@scenario={sid}": v for sid, v in zip(ids.tolist(), g.tolist())})
        return out
