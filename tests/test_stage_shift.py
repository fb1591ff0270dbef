"""Stage shift over time (STAN section 4.4.2, Fig. 7): early -> late transition matrices of the inferred and the true
stages, the agreement numbers, the rows they are read at, and the settings of the ``stan_stages`` analysis."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from mtlbench.analysis.shift import match_clusters, shift_summary, transition_matrix
from mtlbench.analysis.stages import StageAnalysis, StanStageAnalysis, first_rows, last_rows, stage_shift
from mtlbench.errors import ConfigError
from mtlbench.training.run import build_analyses, build_components

from conftest import TINY, compose_cfg

NAMES = ["New", "Wander", "Stick", "Loyal"]


def test_transition_matrix_by_hand():
    early = np.array([0, 0, 0, 1, 2, 2, 3])
    late = np.array([0, 1, 1, 3, 2, 0, 3])
    expected = [
        [1, 2, 0, 0],  # New -> New once, -> Wander twice
        [0, 0, 0, 1],  # Wander -> Loyal
        [1, 0, 1, 0],  # Stick -> New, Stick -> Stick
        [0, 0, 0, 1],  # Loyal stays
    ]
    assert transition_matrix(early, late, 4).tolist() == expected


def test_clusters_are_named_after_the_stage_they_overlap_most():
    stage = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])
    clusters = np.array([2, 2, 1, 0, 0, 1, 1, 1, 3])  # cluster 2 ~ New, 0 ~ Wander, 1 ~ Stick, 3 ~ Loyal
    assert match_clusters(clusters, stage, 4).tolist() == [1, 2, 0, 3]
    # distinct names even when one stage dominates two clusters; fewer clusters than stages is fine
    assert match_clusters(np.array([0, 0, 1, 1, 1]), np.array([2, 2, 2, 2, 0]), 4).tolist() == [2, 0]
    with pytest.raises(ValueError, match="3 clusters cannot be named after 2 stages"):
        match_clusters(np.array([0, 1, 2]), np.array([0, 1, 1]), 2)


def test_shift_summary_by_hand():
    """Six users. Truth: New->New, New->Wander, New->Loyal, Wander->Wander, Stick->Loyal, Loyal->Loyal. The clusters
    are the true stages relabelled (cluster = 3 - stage) except user 2's late row (cluster 1 ~ Stick, not Loyal)."""
    true_early = np.array([0, 0, 0, 1, 2, 3])
    true_late = np.array([0, 1, 3, 1, 3, 3])
    cluster_early = 3 - true_early
    cluster_late = 3 - true_late
    cluster_late[2] = 1
    out = shift_summary(true_early, true_late, cluster_early, cluster_late, NAMES)
    assert out["users"] == 6 and out["stages"] == NAMES
    assert out["true_transitions"] == [[1, 1, 0, 1], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]]
    assert out["inferred_transitions"] == [[1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]]
    assert out["transition_distance"] == pytest.approx(1 / 6)  # one user of six in another cell
    assert out["accuracy"] == {"early": 1.0, "late": pytest.approx(5 / 6)}
    assert out["moved"] == {"true": 3, "inferred": 3, "both": 3}  # user 2 moved in both (to Loyal / to Stick)
    assert out["moved_agreement"] == 1.0 and out["transition_accuracy"] == pytest.approx(5 / 6)
    assert out["nmi"]["early"] == pytest.approx(1.0)
    assert out["nmi"]["late"] == pytest.approx(normalized_mutual_info_score(true_late, cluster_late))
    assert out["ari"]["late"] == pytest.approx(adjusted_rand_score(true_late, cluster_late))


def test_first_and_last_rows_in_time_order():
    user, time = np.array([1, 0, 1, 0, 2, 1]), np.array([5, 3, 9, 1, 0, 5])
    rows, users = first_rows(user, time)
    assert dict(zip(users.tolist(), rows.tolist())) == {0: 3, 1: 0, 2: 4}  # user 1: rows 0 and 5 tie; lowest
    rows, users = last_rows(user, time)
    assert dict(zip(users.tolist(), rows.tolist())) == {0: 1, 1: 2, 2: 4}


def test_stage_shift_reads_each_users_first_and_last_row_and_their_true_stages(tmp_path):
    """Against a loop over users: which users, their rows, the true transition matrix (an untrained STAN)."""
    cfg = compose_cfg([*TINY, "model=stan", "model.expert=[8]", "model.tower=[]"])
    dm, module = build_components(cfg)
    out = stage_shift(module, dm, tmp_path, "preference", max_users=100_000, plot=False)["stage_shift"]
    user, time, stage = (dm.columns[k] for k in ("user_id", "timestamp", "true_stage"))
    test = set(dm.splits["test"].tolist())
    expected = np.zeros((4, 4), dtype=int)
    users = 0
    for u in np.unique(user):
        rows = np.flatnonzero(user == u)
        rows = rows[np.lexsort((rows, time[rows]))]
        if len(rows) >= 2 and rows[-1] in test:
            expected[stage[rows[0]], stage[rows[-1]]] += 1
            users += 1
    assert out["users"] == users > 300 and out["true_transitions"] == expected.tolist()
    assert np.sum(out["inferred_transitions"]) == users and out["clusters"] == 4
    assert out["representation"] == "preference" and 0.0 <= out["nmi"]["late"] <= 1.0
    assert not (tmp_path / "stage_shift.png").exists()
    # a representation the model lacks is skipped with the reason, not a crash after training
    dm_ple, ple = build_components(compose_cfg([*TINY, "model=ple", "model.expert=[8]", "model.tower=[]"]))
    skipped = stage_shift(ple, dm_ple, tmp_path, "preference", plot=False)["stage_shift"]
    assert "has no 'preference' representation" in skipped["skipped"]
    assert stage_shift(ple, dm_ple, tmp_path, "backbone", plot=False)["stage_shift"]["users"] > 300


def test_shift_settings_agree_with_the_configs_and_bad_ones_fail_in_one_line():
    cfg = compose_cfg(["model=stan"])
    (callback,) = build_analyses(cfg)
    assert isinstance(callback, StanStageAnalysis) and callback.shift
    assert callback.shift_settings["representation"] == "preference"
    (off,) = build_analyses(compose_cfg(["model=stan", "analysis.shift=false"]))
    assert not off.shift and off.analyse_shift(None, None, None) == {}  # type: ignore[attr-defined]
    (ple,) = build_analyses(compose_cfg(["model=ple_stage"]))
    assert isinstance(ple, StageAnalysis) and not ple.shift
    with pytest.raises(ConfigError, match="shift_representation must be one of preference, user_representation"):
        build_analyses(compose_cfg(["model=stan", "analysis.shift_representation=gamma"]))
    with pytest.raises(ConfigError, match="max_users must be an integer >= 10"):
        StanStageAnalysis(max_users=0)
    with pytest.raises(ConfigError, match="shift representation must be one of"):
        from mtlbench.cli.stages import analyse_run

        analyse_run("nowhere", shift_representation="gamma")
