"""Stage shift over time (STAN section 4.4.2, Fig. 7): do the inferred stages move the way the true stages do?

The paper shows "the detected user stages of the same group of users on the first and last day" and finds users
who start at New and end at Wander or Loyal. Here the question gets numbers. For a set of users, each has an
*early* and a *late* row (see :func:`mtlbench.analysis.stages.stage_shift` for which rows), an inferred stage at
both (clusters of a learned representation, named after the true stage they overlap most, see
:func:`match_clusters`) and the true stage at both (the simulator's ``true_stage``). Then

* ``true_transitions`` / ``inferred_transitions``: S x S counts, row = stage at the early row, column = stage at
  the late row (:func:`transition_matrix`); ``transition_distance``: the total variation distance between the
  two as joint distributions (0 = the same matrix, 1 = disjoint);
* ``nmi`` / ``ari`` (inferred clusters vs true stages, at the early and at the late rows; invariant to how the
  clusters are named) and ``accuracy`` (after naming);
* ``moved``: users whose true / inferred stage differs between the two rows, and both; ``moved_agreement``: the
  share of users for whom "moved or not" is the same in both; ``transition_accuracy``: the share whose inferred
  (early, late) pair equals the true one.

The picture ``stage_shift.png`` is a pair of transition heat-maps (true | inferred), not the paper's two t-SNE
panels: two t-SNE projections are fitted separately, so their coordinates are not comparable, and a few
highlighted users show anecdotes; the heat-maps show every user's move at once, on the same axes for the truth
and the inference, with the counts printed (colour: the share of the early stage's users that end in each late
stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SHIFT_FILE = "stage_shift.png"


def transition_matrix(early: np.ndarray, late: np.ndarray, n_stages: int) -> np.ndarray:
    """``m[i, j]`` = how many users are in stage i at the early row and in stage j at the late row."""
    early, late = np.asarray(early, dtype=np.int64), np.asarray(late, dtype=np.int64)
    return np.bincount(early * n_stages + late, minlength=n_stages * n_stages).reshape(n_stages, n_stages)


def match_clusters(clusters: np.ndarray, stage: np.ndarray, n_stages: int) -> np.ndarray:
    """Name each cluster after a distinct true stage so that most points get their true stage (the Hungarian
    assignment on the cluster x stage contingency table); returns ``stage_of[cluster id]``.

    Needs no more clusters than stages. Only the names depend on the true stages: NMI and ARI do not.
    """
    from scipy.optimize import linear_sum_assignment

    clusters, stage = np.asarray(clusters, dtype=np.int64), np.asarray(stage, dtype=np.int64)
    k = int(clusters.max()) + 1 if len(clusters) else 0
    if k > n_stages:
        raise ValueError(f"{k} clusters cannot be named after {n_stages} stages")
    counts = np.bincount(clusters * n_stages + stage, minlength=k * n_stages).reshape(k, n_stages)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    stage_of = np.zeros(k, dtype=np.int64)
    stage_of[rows] = cols
    return stage_of


def shift_summary(
    true_early: np.ndarray,
    true_late: np.ndarray,
    cluster_early: np.ndarray,
    cluster_late: np.ndarray,
    names: list[str],
) -> dict[str, Any]:
    """The numbers of the module doc for users with true stages and cluster ids at their early and late rows."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    s = len(names)
    stage_of = match_clusters(np.concatenate([cluster_early, cluster_late]), np.concatenate([true_early, true_late]), s)
    inf_early, inf_late = stage_of[cluster_early], stage_of[cluster_late]
    true_m = transition_matrix(true_early, true_late, s)
    inf_m = transition_matrix(inf_early, inf_late, s)
    n = len(true_early)
    moved_true, moved_inf = true_early != true_late, inf_early != inf_late
    return {
        "users": int(n),
        "stages": list(names),
        "true_transitions": true_m.tolist(),
        "inferred_transitions": inf_m.tolist(),
        "transition_distance": float(0.5 * np.abs(true_m - inf_m).sum() / max(n, 1)),
        "nmi": {
            "early": float(normalized_mutual_info_score(true_early, cluster_early)),
            "late": float(normalized_mutual_info_score(true_late, cluster_late)),
        },
        "ari": {
            "early": float(adjusted_rand_score(true_early, cluster_early)),
            "late": float(adjusted_rand_score(true_late, cluster_late)),
        },
        "accuracy": {"early": float(np.mean(inf_early == true_early)), "late": float(np.mean(inf_late == true_late))},
        "moved": {
            "true": int(moved_true.sum()),
            "inferred": int(moved_inf.sum()),
            "both": int((moved_true & moved_inf).sum()),
        },
        "moved_agreement": float(np.mean(moved_true == moved_inf)),
        "transition_accuracy": float(np.mean((inf_early == true_early) & (inf_late == true_late))),
    }


def plot_transitions(summary: dict[str, Any], path: Path, title: str = "inferred") -> None:
    """``stage_shift.png``: the true and the inferred transition matrices side by side (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = summary["stages"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, key, label in zip(axes, ("true_transitions", "inferred_transitions"), ("true stage (ground truth)", title)):
        m = np.asarray(summary[key], dtype=np.float64)
        share = m / np.maximum(m.sum(1, keepdims=True), 1.0)
        ax.imshow(share, vmin=0.0, vmax=1.0, cmap="Blues")
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(
                    j, i, f"{int(m[i, j])}", ha="center", va="center", color="black" if share[i, j] < 0.6 else "white"
                )
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("stage at the late row")
        ax.set_ylabel("stage at the early row")
        ax.set_title(label)
    fig.suptitle(
        f"{summary['users']} users; NMI early {summary['nmi']['early']:.2f}, late {summary['nmi']['late']:.2f}; "
        f"moved: true {summary['moved']['true']}, inferred {summary['moved']['inferred']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
