"""Vectorised ranking and calibration metrics for recommendation evaluation.

All functions take flat tensors (anything is flattened) of scores ``preds`` (never NaN), binary
labels ``target`` (a value > 0.5 is a positive) and, for the grouped metrics, arbitrary int64
``group`` ids (typically user ids; need not be contiguous). Rows whose target is NaN are ignored,
so a missing label for one task can be encoded as NaN. Everything is computed with sorts and
segment sums -- there is no Python loop over groups -- and works on any device. Counts are exact
integers and float sums are done in float64; results have dtype
``promote_types(preds.dtype, float32)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["grouped_auc", "gauc", "ndcg_at_k", "log_loss"]


def _flatten_and_filter(preds: Tensor, target: Tensor, group: Tensor | None = None) -> tuple[Tensor, ...]:
    """Flatten the inputs, check that they have the same length and drop rows with a NaN target."""
    preds, target = preds.reshape(-1), target.reshape(-1)
    tensors = [preds, target] if group is None else [preds, target, group.reshape(-1)]
    if any(t.numel() != preds.numel() for t in tensors):
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise ValueError(f"preds, target (and group) must have the same number of elements, got {shapes}")
    if target.is_floating_point():
        keep = ~torch.isnan(target)
        if not bool(keep.all()):
            tensors = [t[keep] for t in tensors]
    return tuple(tensors)


def _out_dtype(preds: Tensor) -> torch.dtype:
    return torch.promote_types(preds.dtype, torch.float32)


_GROUP_LIMIT = 2**30  # group indices must fit in 30 bits to be packed with a 32-bit score key and a label


def _score_key(preds: Tensor) -> Tensor:
    """Integer sort key with the same order and the same ties as the scores.

    Integer sorts are radix sorts on CPU, two to three times faster than float sorts. The IEEE bits of a
    float, read as a signed integer, are ordered like the float for non-negative values; flipping all
    but the sign bit of negative values fixes their order. Adding 0.0 turns -0.0 into +0.0 so that the
    two zeros stay tied. Half, bfloat16 and float32 scores are exactly representable as float32.
    """
    if not preds.is_floating_point():
        return preds.long()
    if preds.dtype == torch.float64:
        bits, shift, mask = (preds + 0.0).view(torch.int64), 63, 0x7FFF_FFFF_FFFF_FFFF
    else:
        bits, shift, mask = (preds.to(torch.float32) + 0.0).view(torch.int32), 31, 0x7FFF_FFFF
    return bits ^ ((bits >> shift) & mask)


def _starts(sorted_values: Tensor) -> Tensor:
    """Mask of the rows that start a run of equal values in ``sorted_values``."""
    is_start = torch.ones_like(sorted_values, dtype=torch.bool)
    is_start[1:] = sorted_values[1:] != sorted_values[:-1]
    return is_start


def _sort_rows(
    preds: Tensor, target: Tensor, group: Tensor, descending: bool, runs: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Sort rows by (group asc, score, label asc), score ascending or descending.

    Returns, in sorted order, the boolean labels, a mask of the rows that start a group and, if
    ``runs``, a mask of the rows that start a run of equal (group, score).

    Fast path (float32 or narrower scores, fewer than 2**30 distinct groups): pack (group, score
    key, label) into a single int64 and sort that alone. On CPU an integer sort is a radix sort,
    and without a permutation there is no random gather, which would cost as much as the sort.
    Group ids spanning 2**30 or more are first re-indexed with ``torch.unique``. Otherwise fall
    back to three stable argsorts.
    """
    key = _score_key(preds)
    key = ~key if descending else key  # bitwise not reverses the order, without overflow
    label = target > 0.5
    group = group.long()
    n = label.numel()
    if key.dtype == torch.int32 and 0 < n < _GROUP_LIMIT:
        low, high = (int(v) for v in torch.aminmax(group))
        group = group - low if high - low < _GROUP_LIMIT else torch.unique(group, return_inverse=True)[1]
        packed = (group << 33) | ((key.long() + 2**31) << 1) | label.long()
        packed = torch.sort(packed).values  # equal packed values are identical rows: no need for stability
        return (packed & 1).bool(), _starts(packed >> 33), _starts(packed >> 1) if runs else None
    order = torch.cat([torch.nonzero(~label).squeeze(1), torch.nonzero(label).squeeze(1)])
    order = order[torch.argsort(key[order], stable=True)]
    order = order[torch.argsort(group[order], stable=True)]
    is_group_start = _starts(group[order])
    return label[order], is_group_start, is_group_start | _starts(key[order]) if runs else None


def _segment_sum(values: Tensor, starts: Tensor) -> Tensor:
    """Exact sums of integer ``values`` over the contiguous segments that begin at ``starts``."""
    cum = torch.cat([values.new_zeros(1), torch.cumsum(values, 0)])
    bounds = torch.cat([starts, starts.new_tensor([values.numel()])])
    return torch.diff(cum[bounds])


def _tied_pairs(label: Tensor, is_run_start: Tensor, bounds: Tensor) -> Tensor:
    """Per group, the number of (positive, negative) pairs with equal scores.

    Only rows in runs of two or more equal (group, score) are looked at, so this is cheap when
    ties are rare. ``bounds`` holds the first row of each group, then the number of rows.
    """
    n_groups = bounds.numel() - 1
    tied = ~is_run_start  # the row has the same (group, score) as the row before it
    if not bool(tied.any()):
        return torch.zeros(n_groups, dtype=torch.long, device=label.device)
    in_run = tied.clone()
    in_run[:-1] |= tied[1:]
    rows = torch.nonzero(in_run).squeeze(1)
    run_starts = torch.nonzero(is_run_start[rows]).squeeze(1)
    pos_run = _segment_sum(label[rows].long(), run_starts)
    neg_run = torch.diff(run_starts, append=run_starts.new_tensor([rows.numel()])) - pos_run
    run_group = torch.searchsorted(bounds, rows[run_starts], right=True) - 1
    zeros = torch.zeros(n_groups, dtype=torch.long, device=label.device)
    return zeros.index_add(0, run_group, pos_run * neg_run)


def grouped_auc(preds: Tensor, target: Tensor, group: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group ROC AUC by the Mann-Whitney U statistic.

    Within a group, each positive scores 1 per negative with a lower score and 1/2 per negative
    with an equal score -- the tie-averaged-rank formula, same value as
    ``sklearn.metrics.roc_auc_score``. Computed from one sort in exact integer arithmetic.

    Returns ``(auc, impressions, valid)``, one entry per distinct group id in ascending id order:
    the AUC (NaN where undefined), the number of (non-NaN-target) rows, and whether the group has
    both a positive and a negative.
    """
    preds, target, group = _flatten_and_filter(preds, target, group)
    label, is_group_start, is_run_start = _sort_rows(preds, target, group, descending=False, runs=True)
    assert is_run_start is not None  # runs=True
    n = label.numel()
    group_starts = torch.nonzero(is_group_start).squeeze(1)
    bounds = torch.cat([group_starts, group_starts.new_tensor([n])])
    counts = torch.diff(bounds)

    # Negatives sort before positives of equal score, so the rows before a positive in its group
    # are the negatives scoring lower or equal plus the positives before it.
    pos_rows = torch.nonzero(label).squeeze(1)
    pos_bounds = torch.searchsorted(pos_rows, bounds)
    n_pos = torch.diff(pos_bounds)
    pos_row_sum = _segment_sum(pos_rows, pos_bounds[:-1])
    neg_lower_or_tied = pos_row_sum - n_pos * group_starts - n_pos * (n_pos - 1) // 2
    twice_u = 2 * neg_lower_or_tied - _tied_pairs(label, is_run_start, bounds)

    n_neg = counts - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    auc = twice_u.to(torch.float64) / (2 * n_pos * n_neg).to(torch.float64)
    auc = torch.where(valid, auc, torch.full_like(auc, float("nan")))
    return auc.to(_out_dtype(preds)), counts, valid


def gauc(preds: Tensor, target: Tensor, group: Tensor) -> Tensor:
    """Group AUC: per-group AUC averaged with weights = group impressions.

    Groups with a single label class have no AUC and are skipped; NaN if no group is valid.
    """
    auc, impressions, valid = grouped_auc(preds, target, group)
    weights = impressions[valid].to(torch.float64)
    value = (auc[valid].to(torch.float64) * weights).sum() / weights.sum()
    return value.to(_out_dtype(preds))


def ndcg_at_k(preds: Tensor, target: Tensor, group: Tensor, k: int) -> Tensor:
    """Mean NDCG@k over groups, with binary relevance and items ranked by descending score.

    DCG@k = sum_{pos<k} rel / log2(pos + 2) and IDCG@k = sum_{i<min(k, n_pos)} 1 / log2(i + 2).
    Groups without a positive are skipped and the remaining groups are averaged unweighted
    (NaN if none remain). Ties in score are broken pessimistically -- among equal scores in a
    group, negatives rank before positives -- so the result does not depend on row order and a
    constant predictor gets no credit.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    preds, target, group = _flatten_and_filter(preds, target, group)
    label, is_group_start, _ = _sort_rows(preds, target, group, descending=True)
    group_starts = torch.nonzero(is_group_start).squeeze(1)
    n_groups = group_starts.numel()

    pos_rows = torch.nonzero(label).squeeze(1)
    pos_group = torch.searchsorted(group_starts, pos_rows, right=True) - 1
    pos_rank = pos_rows - group_starts[pos_group]  # 0-based position inside the group
    top = pos_rank < k
    gains = 1.0 / torch.log2(pos_rank[top].to(torch.float64) + 2.0)
    dcg = torch.zeros(n_groups, dtype=torch.float64, device=preds.device).index_add(0, pos_group[top], gains)

    n_pos = torch.bincount(pos_group, minlength=n_groups)
    n_ideal = torch.clamp(n_pos, max=k)
    table_len = int(n_ideal.max()) if n_groups else 0
    discounts = 1.0 / torch.log2(torch.arange(table_len, dtype=torch.float64, device=preds.device) + 2.0)
    idcg = torch.cat([discounts.new_zeros(1), torch.cumsum(discounts, 0)])[n_ideal]

    has_pos = n_pos > 0
    return (dcg[has_pos] / idcg[has_pos]).mean().to(_out_dtype(preds))


def _log_loss_sum(preds: Tensor, target: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """Sum of binary cross-entropies (float64) and the number of non-NaN-target rows."""
    preds, target = _flatten_and_filter(preds, target)
    p = preds.to(torch.float64).clamp(eps, 1.0 - eps)
    y = target.to(torch.float64)
    losses = -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p))
    return losses.sum(), torch.tensor(y.numel(), dtype=torch.long, device=preds.device)


def log_loss(preds: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """Mean binary cross-entropy of probabilities ``preds`` clipped to [eps, 1 - eps]; NaN if empty."""
    total, count = _log_loss_sum(preds, target, eps)
    return (total / count).to(_out_dtype(preds))
