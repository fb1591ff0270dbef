"""STAN (RecSys'23) equation by equation on hand-computed examples, its state, its variants end to end."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mtlbench.analysis.stages import kmeans_nmi, last_rows
from mtlbench.data.derived import compute_derived
from mtlbench.data.rows import build_tensors
from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.errors import ConfigError
from mtlbench.factory import create_model, create_weighting
from mtlbench.models import ModelOutput
from mtlbench.models.stan import (
    STAN,
    FeatureDNN,
    FeatureSelfAttention,
    PreferenceHeads,
    TaskAttention,
    preference_loss,
)
from mtlbench.training.run import build_components
from mtlbench.weighting.stan_stage import StanStage, StanWithoutBeta, stage_weighted_loss

from conftest import FAST, TINY, compose_cfg, run_cli


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# -- Eq. 7 ---------------------------------------------------------------------------------------------
def test_eq7_self_attention_identity_weights_by_hand():
    att = FeatureSelfAttention(2)
    with torch.no_grad():
        for w in (att.w_q, att.w_k, att.w_v):
            w.copy_(torch.eye(2))
    u = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # W_Q U (W_K U)^T = I, scaled by 1/sqrt(d1): row softmax of [1/sqrt2, 0]
    hi = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)
    want = torch.tensor([[[hi, 1 - hi], [1 - hi, hi]]])  # times W_V U = I
    assert torch.allclose(att(u), want, atol=1e-6)


def test_eq7_weights_mix_features_not_dimensions():
    att = FeatureSelfAttention(2)
    with torch.no_grad():
        att.w_q.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        att.w_k.copy_(torch.eye(2))
        att.w_v.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # swaps the two features
    u = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    # Q = [[2,0],[0,0]], K = U: QK^T = [[4,0],[0,0]] / sqrt2; V = [[0,3],[2,0]]
    a = math.exp(4 / math.sqrt(2)) / (math.exp(4 / math.sqrt(2)) + 1)
    want = torch.tensor([[[a * 0 + (1 - a) * 2, a * 3 + (1 - a) * 0], [0.5 * 0 + 0.5 * 2, 0.5 * 3]]])
    assert torch.allclose(att(u), want, atol=1e-5)


def test_dnn_extractor_keeps_the_d1_by_d2_shape():
    f = FeatureDNN(3, 4, [8])
    assert f(torch.randn(5, 3, 4)).shape == (5, 3, 4)


# -- Eq. 8 ---------------------------------------------------------------------------------------------
def test_eq8_task_attention_by_hand():
    ta = TaskAttention(2, 2)
    with torch.no_grad():
        ta.weight[0] = torch.eye(2)
        ta.weight[1] = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # W u_f = [u_f2, 0]
    u = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])
    s = ta(u)
    assert s.shape == (1, 2, 2, 2)
    lo, hi = 1 / (1 + math.e**2), math.e**2 / (1 + math.e**2)  # softmax([a, a+2])
    # task 0: scores = U'; softmax over the two features per dimension: [1,3] -> [lo,hi], [2,0] -> [hi,lo]
    assert torch.allclose(s[0, 0], torch.tensor([[1 * lo, 2 * hi], [3 * hi, 0.0]]), atol=1e-6)
    # task 1: W u'_f = [[2,0],[0,0]]: dimension 0 softmax([2,0]) = [hi,lo], dimension 1 softmax([0,0]) = 1/2
    assert torch.allclose(s[0, 1], torch.tensor([[1 * hi, 2 * 0.5], [3 * lo, 0.0]]), atol=1e-6)


def test_eq8_softmax_over_dims_option():
    ta = TaskAttention(1, 2, softmax_over="dims")
    with torch.no_grad():
        ta.weight[0] = torch.eye(2)
    u = torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])
    lo, hi = 1 / (1 + math.e**2), math.e**2 / (1 + math.e**2)
    assert torch.allclose(ta(u)[0, 0], torch.tensor([[lo, 3 * hi], [0.0, 0.0]]), atol=1e-6)
    with pytest.raises(ConfigError, match="task_attention_softmax"):
        TaskAttention(1, 2, softmax_over="rows")


# -- Eq. 9 ---------------------------------------------------------------------------------------------
def test_eq9_single_linear_layer_on_row_major_vec():
    heads = PreferenceHeads(1, 4)
    with torch.no_grad():
        heads.weight.copy_(torch.tensor([[1.0, 10.0, 100.0, 1000.0]]))
        heads.bias.fill_(0.5)
    s = torch.tensor([[[[0.1, 0.02], [0.003, -0.0004]]]])  # vec (footnote 2) = [0.1, 0.02, 0.003, -0.0004]
    logit = 0.1 + 0.2 + 0.3 - 0.4 + 0.5
    assert heads(s).item() == pytest.approx(logit, abs=1e-6)
    assert torch.sigmoid(heads(s)).item() == pytest.approx(sig(logit), abs=1e-6)


def small_schema():
    schema = DatasetSchema(
        "s",
        [
            Feature("user", vocab_size=3, role="user"),
            Feature("age", vocab_size=2, role="user"),
            Feature("item", vocab_size=4, role="item"),
        ],
        tasks=["a", "b"],
        user_field="user",
        item_field="item",
        time_field="t",
    )
    cols = {
        "user": np.array([0, 1, 2, 1]),
        "age": np.array([1, 0, 1, 1]),
        "item": np.array([3, 2, 1, 0]),
        "a": np.array([1, 0, 1, 0], np.float32),
        "b": np.array([0, 0, 1, np.nan], np.float32),
        "t": np.arange(4),
    }
    return schema, cols


def test_eq6_to_9_match_an_independent_loop_implementation():
    """U -> Eq. 7 -> Eq. 8 -> Eq. 9 against plain numpy loops written from the paper's formulas."""
    torch.manual_seed(0)
    schema, cols = small_schema()
    batch = build_tensors(schema, cols)
    model = STAN(schema, embedding_dim=3, expert=(4,), tower=(), user_extractor="attention")
    pref = model(batch).extras["preference"].detach().numpy()
    table = model.embedding.table.weight.detach().numpy().astype(np.float64)
    wq, wk, wv = (
        w.detach().numpy().astype(np.float64) for w in (model.extractor.w_q, model.extractor.w_k, model.extractor.w_v)
    )
    wt = model.task_attention.weight.detach().numpy().astype(np.float64)
    hw, hb = model.preference_heads.weight.detach().numpy(), model.preference_heads.bias.detach().numpy()
    for i in range(4):
        u = np.stack([table[cols["user"][i]], table[3 + cols["age"][i]]])  # d1 = 2 user fields, offsets 0, 3
        scores = (wq @ u) @ (wk @ u).T / math.sqrt(2)
        att = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
        up = att @ (wv @ u)  # Eq. 7
        for k in range(2):
            a = np.array([[wt[k] @ up[f] for f in range(2)]])[0]  # rows W^k u'_f
            soft = np.exp(a) / np.exp(a).sum(0, keepdims=True)  # over the features
            s = up * soft  # Eq. 8
            y = sig(float(s.reshape(-1) @ hw[k] + hb[k]))  # Eq. 9
            assert pref[i, k] == pytest.approx(y, abs=1e-5)


def test_stan_settings_errors_are_config_errors():
    schema, _ = small_schema()
    with pytest.raises(ConfigError, match="backbone"):
        STAN(schema, backbone="mlp")
    with pytest.raises(ConfigError, match="user_extractor"):
        STAN(schema, user_extractor="rnn")
    with pytest.raises(ConfigError, match="user_fields"):
        STAN(schema, user_fields=["nosuch"])
    with warnings.catch_warnings():  # one user field: warned about (see the test below)
        warnings.simplefilter("ignore", UserWarning)
        m = STAN(schema, backbone="mmoe", user_extractor="dnn", user_fields=["user"], embedding_dim=4)
    assert m.user_fields == ["user"] and len(m.backbone(torch.randn(2, m.embedding.output_dim))) == 2


def test_user_feature_set_takes_user_sequences_pooled_and_f_defaults_to_the_dnn():
    """U = every user-side categorical *and* sequence field (the history mean-pooled as in the backbone)."""
    torch.manual_seed(0)
    schema = DatasetSchema(
        "seq_u",
        [
            Feature("user", vocab_size=3, role="user"),
            Feature("item", vocab_size=4, role="item"),
            Feature("hist", "sequence", role="user", max_len=2, embedding="item"),
        ],
        tasks=["a", "b"],
        user_field="user",
        item_field="item",
    )
    cols = {
        "user": np.array([0, 0]),
        "item": np.array([1, 1]),
        "hist": np.array([[2, -1], [3, 2]]),
        "a": np.array([1, 0], np.float32),
        "b": np.array([0, 1], np.float32),
    }
    model = STAN(schema, embedding_dim=4, expert=(4,), tower=())
    assert model.user_fields == ["user", "hist"] and isinstance(model.extractor, FeatureDNN)
    assert model.model_info() == {"user_fields": ["user", "hist"], "user_extractor": "dnn"}
    batch = build_tensors(schema, cols)
    u = model.embedding.fields(batch)[:, model.user_index]
    table = model.embedding.table.weight
    assert torch.allclose(u[0, 1], table[3 + 2]) and torch.allclose(u[1, 1], (table[3 + 3] + table[3 + 2]) / 2)
    pref = model(batch).extras["preference"]
    assert not torch.allclose(pref[0], pref[1])  # same user, other history: another preference
    att = STAN(schema, embedding_dim=4, expert=(4,), tower=(), user_extractor="attention")
    assert isinstance(att.extractor, FeatureSelfAttention) and att.model_info()["user_extractor"] == "attention"


def test_a_single_user_field_is_warned_about_once_per_dataset(recwarn):
    schema, _ = small_schema()
    STAN(schema, embedding_dim=4, expert=(4,), tower=())  # user + age: no warning
    assert not [w for w in recwarn if "single field" in str(w.message)]
    one = DatasetSchema(
        "one_user_field",
        [Feature("user", vocab_size=3, role="user"), Feature("item", vocab_size=4, role="item")],
        tasks=["a", "b"],
        user_field="user",
        item_field="item",
    )
    with pytest.warns(UserWarning, match="'one_user_field'.*single field .'user'"):
        STAN(one, embedding_dim=4, expert=(4,), tower=())
    recwarn.clear()
    STAN(one, embedding_dim=4, expert=(4,), tower=())  # the same dataset again: once is enough
    assert not [w for w in recwarn if "single field" in str(w.message)]


def test_stan_configs_select_the_dnn_of_section_4_1_3_and_attention_on_request():
    for name in ("stan", "stan_wo_beta"):
        assert compose_cfg([f"model={name}"]).model.user_extractor == "dnn"
        assert compose_cfg([f"model={name}", "model.user_extractor=attention"]).model.user_extractor == "attention"


# -- Eq. 10: pseudo-labels -----------------------------------------------------------------------------
def history_table():
    schema = DatasetSchema(
        "h", [Feature("u", vocab_size=3, role="user")], tasks=["a", "b"], user_field="u", time_field="t"
    )
    nan = np.nan
    cols = {
        "u": np.array([0, 0, 1, 0, 1, 1]),
        "t": np.array([5, 1, 2, 3, 2, 7]),
        "a": np.array([1, 0, 1, 1, 0, 1], np.float32),
        "b": np.array([0, 1, nan, nan, 1, 0], np.float32),
    }
    return schema, cols


def test_eq10_running_mean_of_strictly_earlier_labels():
    schema, cols = history_table()
    got = compute_derived("stan_pseudo_label", schema, cols, np.arange(6), prior=0.25, history="all")
    want = np.array(
        [
            [0.5, 1.0],  # row 0 (u0, t5): rows 1, 3 before; b of row 3 missing
            [0.25, 0.25],  # row 1 (u0, t1): first interaction -> prior
            [0.25, 0.25],  # row 2 (u1, t2): nothing strictly before (row 4 has the same time)
            [0.0, 1.0],  # row 3 (u0, t3): row 1
            [0.25, 0.25],  # row 4 (u1, t2): row 2 is simultaneous, not earlier
            [0.5, 1.0],  # row 5 (u1, t7): rows 2, 4; b of row 2 missing
        ]
    )
    np.testing.assert_allclose(got, want)
    assert got.dtype == np.float32


def test_eq10_never_sees_the_current_label():
    schema, cols = history_table()
    base = compute_derived("stan_pseudo_label", schema, cols, np.arange(6), prior=0.25, history="all")
    for i in range(6):
        flipped = {k: v.copy() for k, v in cols.items()}
        for t in ("a", "b"):
            flipped[t][i] = 1.0 - flipped[t][i] if not np.isnan(flipped[t][i]) else 1.0
        got = compute_derived("stan_pseudo_label", schema, flipped, np.arange(6), prior=0.25, history="all")
        np.testing.assert_array_equal(got[i], base[i])  # the row's own label never enters its pseudo-label


def test_eq10_priors_and_training_history():
    schema, cols = history_table()
    glob = compute_derived("stan_pseudo_label", schema, cols, np.arange(6))
    np.testing.assert_allclose(glob[1], [4 / 6, 2 / 4], rtol=1e-6)  # training means of a and b
    none = compute_derived("stan_pseudo_label", schema, cols, np.arange(6), prior=None)
    assert np.isnan(none[[1, 2, 4]]).all() and not np.isnan(none[[0, 3, 5]]).any()
    # rows 0 and 3 are not training rows: only row 1's labels may reach user 0's pseudo-labels
    train = compute_derived("stan_pseudo_label", schema, cols, np.array([1, 2, 4, 5]), prior=0.5)
    np.testing.assert_allclose(train[[0, 3]], [[0.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ConfigError, match="prior"):
        compute_derived("stan_pseudo_label", schema, cols, np.arange(6), prior="mean")


def test_algorithm1_positions_count_training_rows_in_time_order():
    schema, cols = history_table()
    assert compute_derived("stan_position", schema, cols, np.arange(6)).tolist() == [3, 1, 1, 2, 2, 3]
    assert compute_derived("stan_position", schema, cols, np.array([1, 2, 4, 5])).tolist() == [2, 1, 1, 2, 2, 3]


# -- Eq. 11 and Eq. 13 ------------------------------------------------------------------------------------
def test_eq11_squared_error_per_task_mean_over_defined_pseudo_labels():
    pref = torch.tensor([[0.5, 0.2], [0.1, 0.9], [0.3, 0.4]])
    pseudo = torch.tensor([[1.0, 0.0], [0.0, float("nan")], [0.5, 1.0]])
    want = (0.25 + 0.01 + 0.04) / 3 + (0.04 + 0.36) / 2
    assert preference_loss(pref, pseudo).item() == pytest.approx(want, abs=1e-6)


def loss_matrix():
    losses = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    return losses * mask, mask


def test_eq13_gamma_weighted_bce_per_task_mean():
    losses, mask = loss_matrix()
    gamma = torch.tensor([[0.5, 1.0], [1.0, 0.5], [0.1, 0.25]])
    # a: (0.5*1 + 1*3 + 0.1*5) / 3; b: (1*2 + 0.25*4) / 2 (row 1 unlabelled)
    assert stage_weighted_loss(losses, mask, gamma).item() == pytest.approx(4 / 3 + 1.5)
    out = StanWithoutBeta(["a", "b"])(losses, mask, {}, ModelOutput({}, extras={"preference": gamma}))
    assert out.loss.item() == pytest.approx(4 / 3 + 1.5)
    assert torch.equal(out.task_weights, gamma)


def test_eq13_stan_stage_uses_the_drawn_gamma_of_each_sample():
    losses, mask = loss_matrix()
    w = StanStage(["a", "b"], num_users=3)
    w.train()
    batch = {"user": torch.tensor([0, 1, 0]), "stan_position": torch.tensor([1, 1, 2])}
    out = w(losses, mask, batch, ModelOutput({}, extras={"preference": torch.full((3, 2), 0.3)}))
    gamma = out.task_weights
    assert gamma.shape == (3, 2) and ((gamma > 0) & (gamma < 1)).all()
    want = sum((gamma[mask[:, k], k] * losses[mask[:, k], k]).sum() / mask[:, k].sum() for k in range(2))
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_full_objective_adds_the_preference_loss_to_the_weighted_bce():
    """Eq. 13 through the LightningModule: weighting (gamma * BCE) + the model's Eq. 11 term."""
    from mtlbench.training.module import MultiTaskModule

    torch.manual_seed(0)
    schema, cols = small_schema()
    batch = build_tensors(schema, cols)
    batch["stan_pseudo_label"] = torch.from_numpy(compute_derived("stan_pseudo_label", schema, cols, np.arange(4)))
    model = STAN(schema, embedding_dim=3, expert=(4,), tower=())
    module = MultiTaskModule(model, StanWithoutBeta(schema.tasks), schema)
    module.log = lambda *a, **k: None
    module._trainer = type("T", (), {"log_every_n_steps": 1, "global_step": 0})()
    loss = module.training_step(batch, 0)
    out = model(batch)
    labels = batch["labels"]
    mask = ~torch.isnan(labels)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.stack([out.logits["a"], out.logits["b"]], 1), labels.nan_to_num(0), reduction="none"
    )
    gamma = out.extras["preference"]
    want = sum((gamma[:, k] * bce[:, k])[mask[:, k]].mean() for k in range(2)) + out.aux_losses["preference"]
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


# -- Algorithm 1 ----------------------------------------------------------------------------------------
def test_algorithm1_alpha_beta_after_a_known_sequence_in_any_batch_order():
    w = StanStage(["a"], num_users=2)
    # user 0's samples at positions 1, 2, 3 with y~ = 0.2, 0.5, 0.9, fed out of order in two batches
    w.update(torch.tensor([0, 1]), torch.tensor([[0.9], [0.6]]), torch.tensor([3, 1]))
    w.update(torch.tensor([0, 0]), torch.tensor([[0.2], [0.5]]), torch.tensor([1, 2]))
    assert w.alpha[0, 0].item() == pytest.approx(1 + 0.2 * 1 + 0.5 * 2 + 0.9 * 3)  # 4.9
    assert w.beta[0, 0].item() == pytest.approx(1 + 0.8 * 1 + 0.5 * 2 + 0.1 * 3)  # 3.1
    assert (w.alpha[1, 0].item(), w.beta[1, 0].item()) == pytest.approx((1.6, 1.4))
    assert w.count.tolist() == [3, 1]


def literal_algorithm1(users, pref, num_users):
    """Algorithm 1 as printed: loop over samples in time order with a running counter c_u."""
    alpha, beta = np.ones((num_users, pref.shape[1])), np.ones((num_users, pref.shape[1]))
    c = np.zeros(num_users)
    for u, p in zip(users, pref):
        c[u] += 1
        alpha[u] += p * c[u]
        beta[u] += (1 - p) * c[u]
    return alpha, beta, c


def test_algorithm1_vectorised_shuffled_equals_the_literal_loop():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 7, 200)
    pref = rng.random((200, 3))
    alpha, beta, c = literal_algorithm1(users, pref, 7)
    position = np.zeros(200, dtype=np.int64)  # 1-based rank of each sample within its user (time = index)
    for u in range(7):
        position[users == u] = np.arange(1, (users == u).sum() + 1)
    w = StanStage(["a", "b", "c"], num_users=7)
    for chunk in np.array_split(rng.permutation(200), 9):
        w.update(torch.from_numpy(users[chunk]), torch.from_numpy(pref[chunk]), torch.from_numpy(position[chunk]))
    np.testing.assert_allclose(w.alpha.numpy(), alpha)
    np.testing.assert_allclose(w.beta.numpy(), beta)
    np.testing.assert_array_equal(w.count.numpy(), c)


def test_state_reset_each_epoch_or_carried_over():
    for reset, want in ((True, 1 + 0.5 * 2), (False, 1 + 0.5 * 2 + 0.5 * 2)):
        w = StanStage(["a"], reset_each_epoch=reset, num_users=1)
        w.update(torch.tensor([0]), torch.tensor([[0.5]]), torch.tensor([2]))
        w.on_train_epoch_end(0)
        assert w.alpha[0, 0].item() == pytest.approx(1 + 0.5 * 2)  # the finished epoch's state stays readable
        w.update(torch.tensor([0]), torch.tensor([[0.5]]), torch.tensor([2]))
        assert w.alpha[0, 0].item() == pytest.approx(want)
        assert w.count.item() == (1 if reset else 2)


def test_gamma_mean_over_many_draws_is_alpha_over_alpha_plus_beta():
    w = StanStage(["a", "b"], num_users=2)
    w.alpha[0] = torch.tensor([4.9, 1.0], dtype=torch.float64)
    w.beta[0] = torch.tensor([3.1, 9.0], dtype=torch.float64)
    torch.manual_seed(0)
    gamma = w.sample(torch.zeros(200_000, dtype=torch.int64))
    assert gamma.dtype == torch.float32
    # standard errors: sqrt(ab / ((a+b)^2 (a+b+1)) / n) = 3.6e-4 and 2.0e-4
    assert gamma[:, 0].mean().item() == pytest.approx(4.9 / 8.0, abs=2e-3)
    assert gamma[:, 1].mean().item() == pytest.approx(0.1, abs=1.2e-3)
    assert torch.allclose(w.expected_gamma()[0], torch.tensor([4.9 / 8, 0.1], dtype=torch.float64))


def test_stan_weightings_refuse_a_model_without_preferences():
    schema, _ = small_schema()
    mmoe = create_model("mmoe", schema, embedding_dim=4)
    for name in ("stan_stage", "stan_wo_beta"):
        with pytest.raises(ConfigError, match="model=stan"):
            create_weighting(name, schema.tasks).attach(mmoe)
    w = create_weighting("stan_stage", schema.tasks)
    w.attach(create_model("stan", schema, embedding_dim=4))
    assert w.alpha.shape == (3, 2) and w.count.shape == (3,)  # sized by the user vocabulary


# -- section 2.1 rule-based stage --------------------------------------------------------------------------
def test_rule_stage_medians_over_training_users():
    schema = DatasetSchema("r", [Feature("u", vocab_size=7, role="user")], tasks=["c", "s", "p"], user_field="u")
    # two training rows per user 0..5; rates (c, s, p):
    # u0 (0, 0, 0), u1 (1, 0, 0), u2 (1, 1, 0), u3 (1, 1, 1), u4 (0, .5, .5), u5 (0, 0, 0)
    # medians over users: c 0.5, s 0.25, p 0 -> high = strictly above
    rates = {0: (0, 0, 0), 1: (1, 0, 0), 2: (1, 1, 0), 3: (1, 1, 1), 4: (0, 1, 1), 5: (0, 0, 0)}
    u, c, s, p = [], [], [], []
    for user, (rc, rs, rp) in rates.items():
        u += [user, user]
        c += [rc, rc]
        s += [rs, rs if user != 4 else 0]
        p += [rp, rp if user != 4 else 0]
    u += [0, 6]  # non-training rows: user 0 clicks (must not count), user 6 has no training rows
    c += [1, 1]
    s += [1, 1]
    p += [1, 1]
    cols = {"u": np.array(u), "c": np.array(c, np.float32), "s": np.array(s, np.float32), "p": np.array(p, np.float32)}
    stage = compute_derived("rule_stage", schema, cols, np.arange(12))
    by_user = dict(zip(cols["u"].tolist(), stage.tolist()))
    assert by_user == {0: 0, 1: 1, 2: 2, 3: 3, 4: 0, 5: 0, 6: 4}  # New, Wander, Stick, Loyal, New, New, none
    assert stage[12] == 0  # user 0's non-training row gets the user's stage
    with pytest.raises(ConfigError, match="rule_stage"):
        compute_derived("rule_stage", schema, cols, np.arange(12), tasks=["c", "nosuch"])


# -- checkpoints -------------------------------------------------------------------------------------------
def test_stage_state_survives_a_lightning_checkpoint(tmp_path):
    import pytorch_lightning as pl

    cfg = compose_cfg(
        [
            *TINY,
            "model=stan",
            "weighting=stan_stage",
            "model.expert=[8]",
            "model.tower=[]",
            "analysis=none",
            "trainer.max_epochs=1",
        ]
    )
    dm, module = build_components(cfg)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=dm)
    state = {k: getattr(module.weighting, k).clone() for k in ("alpha", "beta", "count")}
    assert state["count"].sum().item() == 3 * 512  # three batches applied
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    _, fresh = build_components(cfg)
    assert fresh.weighting.count.sum().item() == 0
    fresh.load_state_dict(torch.load(tmp_path / "x.ckpt", weights_only=False)["state_dict"])
    for k, v in state.items():
        assert torch.equal(getattr(fresh.weighting, k), v), k


# -- analysis helpers --------------------------------------------------------------------------------------
def test_last_rows_and_kmeans_nmi():
    rows, users = last_rows(np.array([1, 0, 1, 0, 2]), np.array([5, 3, 9, 1, 0]))
    assert dict(zip(users.tolist(), rows.tolist())) == {0: 1, 1: 2, 2: 4}
    rng = np.random.default_rng(0)
    stage = np.repeat(np.arange(3), 50)
    separated = np.eye(3)[stage] * 10 + rng.normal(0, 0.1, (150, 3))
    assert kmeans_nmi(separated, stage) == pytest.approx(1.0)
    assert kmeans_nmi(rng.normal(size=(150, 3)), stage) < 0.1


# -- end to end ---------------------------------------------------------------------------------------------
def run_ok(args, tmp_path, name):
    out = tmp_path / name
    proc = run_cli([*TINY, *args, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_stan_trains_from_the_cli_and_writes_the_stage_analysis(tmp_path):
    out, res = run_ok(["model=stan", "analysis.tsne_users=200"], tmp_path, "stan")
    assert (res["model"], res["weighting"]) == ("stan", "stan_stage")
    for t in ("click", "long_view", "purchase"):
        assert 0.5 < res["metrics"]["test"][t]["auc"] < 1.0
    sa = res["stage_analysis"]
    assert sa["rows"] == "each user's last test interaction" and sa["users"] > 100
    for rep in ("preference", "user_representation", "backbone", "gamma_mean", "pseudo_label"):
        assert 0.0 <= sa["representations"][rep]["kmeans_nmi"] <= 1.0, rep
    assert 0.0 <= sa["rule_stage_nmi"] <= 1.0 and (out / "stage_tsne.png").stat().st_size > 10_000
    users = pq.read_table(out / "user_stages.parquet").to_pydict()
    for t in ("click", "long_view", "purchase"):
        for col in ("preference", "gamma", "gamma_mean", "alpha", "beta"):
            assert f"{col}_{t}" in users
    assert len(users["user_id"]) == 400 and set(users["true_stage"]) <= {0, 1, 2, 3}
    alpha, beta = np.array(users["alpha_click"]), np.array(users["beta_click"])
    assert np.allclose(np.array(users["gamma_mean_click"]), alpha / (alpha + beta))
    # one epoch = one pass: every user's pseudo-counts sum to 2 + Σ c over its training rows
    count = np.array(users["count"])
    np.testing.assert_allclose(alpha + beta, 2 + count * (count + 1) / 2, rtol=1e-6)
    # the stage shift over time (Fig. 7), on by default: y~ clustered at each user's first and last row
    shift = res["stage_shift"]
    assert shift["representation"] == "preference" and shift["users"] > 100 and shift["stages"][0] == "New"
    assert np.sum(shift["true_transitions"]) == np.sum(shift["inferred_transitions"]) == shift["users"]
    assert (out / "stage_shift.png").stat().st_size > 10_000
    # the command for finished runs rebuilds the best checkpoint and finds the same shift
    from mtlbench.cli.stages import analyse_run

    again = analyse_run(out, probe=False)
    assert again["stage_shift"] == shift and "stage_analysis" in again
    assert "stage_shift" not in analyse_run(out, shift=False, probe=False)


@pytest.mark.slow
def test_stan_wo_beta_and_ple_stage_train_from_the_cli(tmp_path):
    out, res = run_ok(["model=stan_wo_beta", "analysis.tsne_users=0"], tmp_path, "wo")
    assert (res["model"], res["weighting"]) == ("stan_wo_beta", "stan_wo_beta") and "stage_analysis" in res
    users = pq.read_table(out / "user_stages.parquet").to_pydict()
    assert users["gamma_click"] == users["preference_click"] and "alpha_click" not in users
    out, res = run_ok(["model=ple_stage", "+derived.rule_stage.tasks=[click,long_view,purchase]"], tmp_path, "ps")
    assert res["model"] == "ple_stage" and 0.5 < res["metrics"]["test"]["click"]["auc"] < 1.0
    assert 0.0 <= res["stage_analysis"]["representations"]["backbone"]["kmeans_nmi"] <= 1.0
    assert "stage_shift" not in res  # analysis=stages: the shift is off unless asked for


@pytest.mark.slow
def test_stan_weighting_with_another_model_is_one_clear_line(tmp_path):
    proc = run_cli([*TINY, "model=mmoe", "weighting=stan_stage", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "model=stan" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad" / "results.json").exists()


def test_model_configs_select_their_weighting_and_the_command_line_wins():
    assert compose_cfg(["model=stan"]).weighting.name == "stan_stage"
    assert compose_cfg(["model=stan_wo_beta"]).weighting.name == "stan_wo_beta"
    assert compose_cfg(["model=stan", "weighting=equal"]).weighting.name == "equal"
    assert compose_cfg(["model=ple"]).weighting.name == "equal"
    cfg = compose_cfg(["model=stan", "+derived.stan_pseudo_label.prior=0.5"])
    assert cfg.derived.stan_pseudo_label.prior == 0.5 and cfg.weighting.reset_each_epoch is True


# -- WeChat (the paper's public dataset) ---------------------------------------------------------------------
FIXTURES = Path(__file__).resolve().parent / "fixtures"
WECHAT = ["dataset=wechat", f"dataset.path={FIXTURES / 'wechat'}", *FAST]


def test_stan_on_wechat_reads_userid_device_and_the_history():
    from mtlbench.datasets.wechat import WeChat

    for hist_len, fields in ((10, ["userid", "device", "hist_feeds"]), (0, ["userid", "device"])):
        schema, _ = WeChat(path=str(FIXTURES / "wechat"), hist_len=hist_len).build()
        assert STAN(schema, embedding_dim=4, expert=(4,), tower=()).model_info()["user_fields"] == fields
    assert compose_cfg(["dataset=wechat"]).dataset.hist_len == 10


@pytest.mark.slow
def test_stan_on_the_wechat_fixture_records_its_user_fields_in_results_json(tmp_path):
    proc = run_cli([*WECHAT, "model=stan", f"hydra.run.dir={tmp_path / 'stan'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "stan" / "results.json").read_text())
    assert res["model_info"] == {"user_fields": ["userid", "device", "hist_feeds"], "user_extractor": "dnn"}
    assert set(res["metrics"]["test"]) == {"like", "click_avatar", "forward"}
    proc = run_cli(
        [
            *WECHAT,
            "model=stan_wo_beta",
            "dataset.hist_len=0",
            "model.user_extractor=attention",
            f"hydra.run.dir={tmp_path / 'wo'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "wo" / "results.json").read_text())
    assert res["model"] == "stan_wo_beta"
    assert res["model_info"] == {"user_fields": ["userid", "device"], "user_extractor": "attention"}
