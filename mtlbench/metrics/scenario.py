"""Per-scenario AUC and GAUC for every task, from one gathered state (no loop over users).

:class:`PerGroupMetrics` is the breakdown by any group (``auc@<key>=<id or name>``); the scenario metric here and
the stage metric (:mod:`mtlbench.metrics.stage`) are two settings of it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from mtlbench.metrics.base import RowMetric, group_ids
from mtlbench.metrics.functional import grouped_auc
from mtlbench.registry import register_metric


def per_group_gauc(preds: Tensor, target: Tensor, user: Tensor, group: Tensor) -> tuple[Tensor, Tensor]:
    """GAUC within each group: impression-weighted AUC over the (group, user) pairs of that group.

    Returns (group ids, gauc per group); NaN where a group has no user with both classes.
    """
    groups, g_idx = torch.unique(group, return_inverse=True)
    users, u_idx = torch.unique(user, return_inverse=True)
    key = g_idx * len(users) + u_idx
    auc, n, valid = grouped_auc(preds, target, key)
    key_g = torch.unique(key) // len(users)
    w = n.to(torch.float64) * valid
    zeros = torch.zeros(len(groups), dtype=torch.float64, device=preds.device)
    num = zeros.index_add(0, key_g, w * auc.nan_to_num(0.0).double())
    den = zeros.index_add(0, key_g, w)
    return groups, torch.where(den > 0, num / den.clamp_min(1e-12), torch.nan)


#: the per-scenario form (scenario ids as groups)
per_scenario_gauc = per_group_gauc


class PerGroupMetrics(RowMetric):
    """``auc@<key>=g`` and (with users) ``gauc@<key>=g`` for every group g of the rows (group ``group``).

    ``g`` is the group's id, or its name where the dataset names the ids (``set_group_labels``) and the class
    asks for names (``named``). ``with_users``: None uses the user ids whenever the rows offer them.
    """

    group: ClassVar[str]
    key: ClassVar[str]
    named: ClassVar[bool] = False
    dict_output = True
    higher_is_better = True

    preds: list[Tensor] | Tensor  # "cat" states: lists, or after gathering for compute a tensor
    target: list[Tensor] | Tensor
    ids: list[Tensor] | Tensor
    user: list[Tensor] | Tensor

    def __init__(self, with_users: bool | None = None, labels: Sequence[str] = ()) -> None:
        super().__init__()
        self.with_users = with_users
        self.labels = list(labels)
        for name in ("preds", "target", "ids", "user"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def set_group_labels(self, labels: Mapping[str, Sequence[str]]) -> None:
        if self.named and self.group in labels:
            self.labels = list(labels[self.group])

    def update(self, preds: Tensor, target: Tensor, groups: Mapping[str, Tensor] | None = None) -> None:
        """``groups``: the rows' group ids by name (this metric's ``group``, optionally ``user``)."""
        ids = group_ids(groups, self.group)
        keep = ~torch.isnan(target)
        # lists between updates (torchmetrics concatenates them only while syncing for compute)
        assert isinstance(self.preds, list) and isinstance(self.target, list) and isinstance(self.ids, list)
        assert isinstance(self.user, list)
        self.preds.append(preds[keep])
        self.target.append(target[keep])
        self.ids.append(ids[keep])
        if self.with_users or (self.with_users is None and groups is not None and "user" in groups):
            self.user.append(group_ids(groups, "user")[keep])

    def _name(self, gid: int) -> str:
        return self.labels[gid] if self.named and 0 <= gid < len(self.labels) else str(gid)

    def compute(self) -> dict[str, float]:
        if isinstance(self.preds, list) and not self.preds:
            return {}
        groups = {self.group: dim_zero_cat(self.ids)}
        if self.with_users or (self.with_users is None and len(self.user) > 0):  # a list, or gathered: a tensor
            groups["user"] = dim_zero_cat(self.user)
        return self.compute_rows(dim_zero_cat(self.preds), dim_zero_cat(self.target), groups)

    def row_groups(self, offered: Collection[str]) -> tuple[str, ...]:
        users = self.with_users or (self.with_users is None and "user" in offered)
        return (self.group, "user") if users else (self.group,)

    def compute_rows(self, preds: Tensor, target: Tensor, groups: Mapping[str, Tensor]) -> dict[str, float]:
        g = group_ids(groups, self.group)
        out: dict[str, float] = {}
        ids = torch.unique(g)
        auc, _, valid = grouped_auc(preds, target, g)
        for gid, a, v in zip(ids.tolist(), auc.tolist(), valid.tolist()):
            out[f"auc@{self.key}={self._name(gid)}"] = a if v else float("nan")
        if "user" in groups and (self.with_users or self.with_users is None):
            ids, gauc = per_group_gauc(preds, target, groups["user"], g)
            out.update({f"gauc@{self.key}={self._name(gid)}": v for gid, v in zip(ids.tolist(), gauc.tolist())})
        return out


@register_metric("scenario")
class ScenarioMetrics(PerGroupMetrics):
    """``auc@scenario=s`` and (with users) ``gauc@scenario=s`` for every scenario id s.

    ``with_users``: None (the registered metric) uses the user ids whenever the rows offer them.
    """

    groups = ("scenario",)
    group = "scenario"
    key = "scenario"
