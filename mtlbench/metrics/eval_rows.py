"""One compact buffer of a task's evaluated rows, shared by all of its row metrics.

Exact AUC, GAUC and NDCG need every row's score, so a split's rows are kept until the end of the epoch. Kept
once per task (not once per metric, as each metric's own buffers would) and narrow (float32 scores, uint8
labels, int32 group ids), a row costs 5 bytes plus 4 per group: about 13 bytes with users and scenarios, against
over 100 in separate per-metric buffers. States are gathered ("cat") across processes for ``compute``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mtlbench.metrics.base import group_ids

__all__ = ["EvalRows"]


class EvalRows(Metric):
    """The (score, label, group ids) of every evaluated row; ``compute`` returns them gathered and widened."""

    full_state_update = False
    preds: list[Tensor] | Tensor  # "cat" states: lists, or after gathering for compute a tensor
    target: list[Tensor] | Tensor

    def __init__(self, groups: Sequence[str] = ()) -> None:
        super().__init__()
        self.groups = tuple(groups)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        for g in self.groups:
            self.add_state(f"ids_{g}", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, groups: Mapping[str, Tensor] | None = None) -> None:
        """Rows with a NaN target are dropped; ``groups`` must hold this buffer's groups."""
        keep = ~torch.isnan(target)
        # lists between updates (torchmetrics concatenates them only while syncing for compute)
        assert isinstance(self.preds, list) and isinstance(self.target, list)
        self.preds.append(preds.detach()[keep].float())
        self.target.append(target.detach()[keep].to(torch.uint8))  # labels are 0/1 (checked when data is read)
        for g in self.groups:
            getattr(self, f"ids_{g}").append(group_ids(groups, g).detach()[keep].to(torch.int32))

    def compute(self) -> tuple[Tensor, Tensor, dict[str, Tensor]] | None:
        """(scores float32, labels float32, {group: int64 ids}) of all rows of all processes; None if no rows."""
        if isinstance(self.preds, list) and not self.preds:
            return None
        groups = {g: dim_zero_cat(getattr(self, f"ids_{g}")).long() for g in self.groups}
        return dim_zero_cat(self.preds), dim_zero_cat(self.target).float(), groups
