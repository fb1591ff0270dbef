"""HiNet, APG, HMoE, EPNet, PPNet, MARIA, DeepFM, DIN: each model's defining mechanism on hand examples, the
contract (shapes, gradients, scenario use, one-line errors), and end-to-end CLI runs."""

import json
import math

import pytest
import torch
from test_ms_models import bce, toy
from torch import nn

import mtlbench
from mtlbench.errors import ConfigError
from mtlbench.models.deepfm import fm_pairwise
from mtlbench.models.din import ActivationUnit, Dice
from mtlbench.models.hinet import SubExpertIntegration

from conftest import TINY, run_cli, shared_data

MS = ["hinet", "apg", "hmoe", "epnet", "ppnet", "maria"]  # multi-scenario: need the scenario field
ALL = [*MS, "deepfm", "din"]
USER, ITEM, SCENARIO = 0, 1, 2  # toy()'s categorical columns


def create(name, schema, **kw):
    torch.manual_seed(0)
    return mtlbench.create_model(name, schema, embedding_dim=4, **kw)


def with_scenario(batch, values):
    """A copy of ``batch`` whose rows are in scenarios ``values`` (a tensor [B] or an int)."""
    out = dict(batch)
    out["categorical"] = batch["categorical"].clone()
    out["categorical"][:, SCENARIO] = values
    out["scenario"] = out["categorical"][:, SCENARIO]
    return out


# -- every model: the contract -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("tasks", [("click",), ("click", "buy", "fav")])
def test_forward_backward_single_and_multi_task(name, tasks):
    schema, batch = toy(32, tasks)
    model = create(name, schema)
    out = model(batch)
    assert list(out) == list(tasks) and all(v.shape == (32,) and torch.isfinite(v).all() for v in out.values())
    bce(out, batch, schema).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    with torch.no_grad():
        again = model(batch)
    assert all(torch.isfinite(v).all() for v in again.values())


@pytest.mark.parametrize("name", MS)
def test_scenario_changes_the_prediction(name):
    schema, batch = toy(16)
    model = create(name, schema).eval()
    other = with_scenario(batch, (batch["categorical"][:, SCENARIO] + 1) % 3)
    with torch.no_grad():
        a, b = model(batch)["click"], model(other)["click"]
    assert (a - b).abs().min() > 1e-6


@pytest.mark.parametrize("name", MS)
def test_multi_scenario_model_without_scenario_field_is_one_line_error(name):
    schema, _ = toy(8, scenario=False)
    with pytest.raises(ConfigError) as err:
        mtlbench.create_model(name, schema)
    msg = str(err.value)
    assert "needs a scenario field; dataset 'toy' has none" in msg and "\n" not in msg


def test_din_without_sequence_is_one_line_error_and_deepfm_needs_neither():
    schema, batch = toy(8, scenario=False, sequence=False)
    with pytest.raises(ConfigError) as err:
        mtlbench.create_model("din", schema)
    assert str(err.value) == "model DIN needs a sequence field; dataset 'toy' has none"
    out = create("deepfm", schema)(batch)
    assert out["click"].shape == (8,)


@pytest.mark.parametrize(
    "name, settings, words",
    [
        ("apg", {"rank": 8, "overparam": 4}, "overparam >= rank"),
        ("apg", {"condition_fields": ["page"]}, "condition_fields ['page']"),
        ("hmoe", {"combine": "mean"}, "combine must be one of"),
        ("epnet", {"epnet_granularity": "dim"}, "epnet_granularity"),
        ("epnet", {"domain_fields": ["page"]}, "domain_fields ['page']"),
        ("ppnet", {"prior_fields": ["author"]}, "prior_fields ['author']"),
        ("maria", {"num_refiners": 0}, "num_refiners must be >= 1"),
        ("maria", {"refiner_activation": "swish"}, "refiner_activation"),
        ("din", {"sequence": "clicks"}, "sequence 'clicks' is not a sequence field"),
        ("din", {"product": "inner"}, "product must be one of"),
        ("din", {"activation": "relu"}, "activation must be one of"),
        ("din", {"attention_hidden": []}, "attention_hidden needs at least one layer"),
    ],
)
def test_bad_settings_are_one_line_config_errors(name, settings, words):
    schema, _ = toy(8)
    with pytest.raises(ConfigError) as err:
        mtlbench.create_model(name, schema, **settings)
    assert words in str(err.value) and "\n" not in str(err.value)


# -- HiNet ---------------------------------------------------------------------------------------------------
def test_hinet_sei_is_sub_experts_mixed_by_a_softmax_gate():
    torch.manual_seed(0)
    sei = SubExpertIntegration(groups=3, n=2, in_dim=5, hidden=[4])
    x = torch.randn(6, 5)
    experts = sei.experts(x).view(6, 3, 2, 4)
    gates = torch.softmax(sei.gates(x).view(6, 3, 2), -1)
    for g in range(3):  # each group: its own two sub-experts and its own gate
        want = gates[:, g, 0:1] * experts[:, g, 0] + gates[:, g, 1:2] * experts[:, g, 1]
        assert torch.allclose(sei(x)[:, g], want, atol=1e-6)


def test_hinet_scenario_layer_is_shared_own_and_san_weighted_other_scenarios():
    schema, batch = toy(16)
    model = create("hinet", schema).eval()
    p = batch["categorical"][:, SCENARIO]
    with torch.no_grad():
        w = model.san_weights(batch, p)
        # SAN: a distribution over the *other* scenarios, read from the scenario's embedding
        assert (w[torch.arange(16), p] == 0).all() and torch.allclose(w.sum(1), torch.ones(16))
        assert all(torch.equal(w[i], w[j]) for i in range(16) for j in range(16) if p[i] == p[j])
        x = model.embedding.flat(batch)
        shared, specific = model.shared_sei(x)[:, 0], model.specific_sei(x)
        c, h = model.scenario_layer(batch), specific.shape[-1]
        assert torch.allclose(c[:, :h], shared)  # S^sh
        assert torch.allclose(c[:, h : 2 * h], specific[torch.arange(16), p])  # S_i
        san = sum(w[:, j : j + 1] * specific[:, j] for j in range(3))
        assert torch.allclose(c[:, 2 * h :], san, atol=1e-6)  # A_i = Σ_{j≠i} w_ij S_j
        model.embedding.table.weight[model.embedding.offset_of["scenario"] + 0] += 1.0  # scenario 0's embedding
        moved = (model.san_weights(batch, p) - w).abs().amax(1)
    assert (moved[p == 0] > 1e-6).all() and (moved[p != 0] == 0).all()


@pytest.mark.parametrize("san", [True, False])
def test_hinet_other_scenarios_experts_reach_a_row_only_through_san(san):
    schema, batch = toy(16)
    model = create("hinet", schema, san=san).eval()
    p = batch["categorical"][:, SCENARIO]
    n = model.specific_sei.n
    with torch.no_grad():
        before = model(batch)["click"]
        model.specific_sei.experts.biases[-1][n : 2 * n] += 1.0  # scenario 1's specific sub-experts
        moved = (model(batch)["click"] - before).abs()
    assert (moved[p == 1] > 1e-6).all()
    if san:
        assert (moved[p != 1] > 1e-6).all()
    else:
        assert (moved[p != 1] == 0).all()


def test_hinet_task_layer_mixes_each_tasks_own_experts_with_the_shared_ones():
    schema, batch = toy(16)
    model = create("hinet", schema).eval()
    level = model.task_layer
    with torch.no_grad():
        c = model.scenario_layer(batch)
        reps, _ = level([c, c], c)
        for k in range(2):  # CGC: gate_k over [task k's experts, shared experts]
            experts = torch.cat([level.specific[k](c), level.shared(c)], dim=1)
            gate = torch.softmax(level.task_gates[k](c), -1)
            assert torch.allclose(reps[k], (gate.unsqueeze(-1) * experts).sum(1), atol=1e-6)
        before = model(batch)
        level.specific[0].biases[-1] += 1.0  # task 0's own expert: moves task 0 only
        mid = model(batch)
        level.shared.biases[-1] += 1.0  # the shared expert: moves both
        after = model(batch)
    assert (mid["click"] - before["click"]).abs().min() > 1e-6 and torch.equal(mid["buy"], before["buy"])
    assert all((after[t] - mid[t]).abs().min() > 1e-6 for t in ("click", "buy"))


# -- APG -----------------------------------------------------------------------------------------------------
def test_apg_layer_is_low_rank_u_s_v_with_shared_factors_and_generated_s():
    schema, batch = toy(16)
    model = create("apg", schema, rank=3, overparam=5, condition_fields=["user"]).eval()
    layer = model.layers[0]
    with torch.no_grad():
        x, z = model.embedding.flat(batch), model.condition(batch)
        s = layer.generate(z)
        assert s.shape == (16, 3, 3) and layer.overparam == 5
        v, u = layer.shared_factors()  # over-parameterised: V = V_l V_r, U = U_l U_r (merged for inference)
        assert torch.allclose(v, layer.v_l @ layer.v_r) and torch.allclose(u, layer.u_l @ layer.u_r)
        assert v.shape == (x.shape[1], 3) and u.shape == (3, 256)
        w = v @ s @ u  # every row's own full weight matrix [B, in, out]
        assert torch.allclose(layer(x, z), torch.einsum("bi,bio->bo", x, w) + layer.bias, atol=1e-5)
        assert all(torch.linalg.matrix_rank(w[i]) <= 3 for i in range(16))  # low rank
    assert model.layers[1].rank == 3
    assert create("apg", schema, rank=500, overparam=None).layers[1].rank == 128  # K <= min(in, out)


def test_apg_weights_depend_on_the_instance_condition_only():
    schema, batch = toy(4)
    model = create("apg", schema, condition_fields=["user"]).eval()
    cat = batch["categorical"].clone()
    cat[1] = cat[0]
    cat[1, ITEM] = (cat[0, ITEM] + 1) % 30  # row 1: row 0's condition (user, scenario), another item
    cat[2] = cat[0]
    cat[2, USER] = (cat[0, USER] + 1) % 20  # row 2: another user
    cat[3] = cat[0]
    cat[3, SCENARIO] = (cat[0, SCENARIO] + 1) % 3  # row 3: another scenario
    b = dict(batch, categorical=cat, scenario=cat[:, SCENARIO])
    with torch.no_grad():
        s = model.layers[0].generate(model.condition(b))
    assert torch.equal(s[0], s[1])
    assert (s[0] - s[2]).abs().max() > 1e-6 and (s[0] - s[3]).abs().max() > 1e-6
    plain = create("apg", schema, overparam=None)
    assert plain.layers[0].overparam is None and not hasattr(plain.layers[0], "u_l")


# -- HMoE ----------------------------------------------------------------------------------------------------
def test_hmoe_prediction_mixes_every_scenarios_prediction_in_the_label_space():
    schema, batch = toy(16)
    model = create("hmoe", schema).eval()
    p = batch["categorical"][:, SCENARIO]
    with torch.no_grad():
        x = model.embedding.flat(batch)
        y, w = model.scenario_predictions(x), model.transfer_weights(x, p)  # [B, S, K], [B, K, S]
        assert torch.allclose(w.sum(-1), torch.ones(16, 2))
        out = model(batch)
        for k, t in enumerate(schema.tasks):
            prob = sum(w[:, k, j] * torch.sigmoid(y[:, j, k]) for j in range(3))
            assert torch.allclose(out[t], torch.log(prob / (1 - prob)), atol=1e-5)
        model.towers.bias[1] += 2.0  # scenario 1's prediction moves ...
        moved = (model(batch)["click"] - out["click"]).abs()
    assert (moved[p == 0] > 1e-6).all() and (moved[p == 2] > 1e-6).all()  # ... and with it scenarios 0 and 2's
    logit_mix = create("hmoe", schema, combine="logit").eval()
    with torch.no_grad():
        x = logit_mix.embedding.flat(batch)
        y, w = logit_mix.scenario_predictions(x), logit_mix.transfer_weights(x, p)
        assert torch.allclose(logit_mix(batch)["buy"], (w[:, 1] * y[:, :, 1]).sum(-1), atol=1e-6)


@pytest.mark.parametrize("stop", [True, False])
def test_hmoe_task_constrained_backprop_stops_other_scenarios_gradients(stop):
    schema, batch = toy(16)
    model = create("hmoe", schema, stop_gradient=stop)
    b = with_scenario(batch, 0)  # every row in scenario 0
    bce(model(b), b, schema).backward()
    e = model.num_experts
    tower_w, gate_w = model.towers.weight.grad, model.gates.weight.grad
    assert tower_w[0].abs().sum() > 0 and gate_w[:e].abs().sum() > 0  # its own scenario network learns
    assert model.experts.weights[0].grad.abs().sum() > 0 and model.transfer[0].weight.grad.abs().sum() > 0
    others = [tower_w[1:], gate_w[e:], model.towers.hidden.weights[0].grad[1:]]  # scenarios 1, 2's networks
    if stop:
        assert all((g == 0).all() for g in others)
    else:
        assert all(g.abs().sum() > 0 for g in others)


# -- EPNet / PPNet -------------------------------------------------------------------------------------------
def test_epnet_gate_scales_the_embedding_from_the_domain_side_with_stopped_gradient():
    schema, batch = toy(16)
    model = create("epnet", schema)
    o_ep, delta = model.personalise(batch)
    e = model.embedding.flat(batch)
    assert torch.allclose(o_ep, delta * e) and ((delta > 0) & (delta < 2)).all()
    with torch.no_grad():
        want = model.towers([model.dnn(o_ep)] * 2)
        assert all(torch.allclose(model(batch)[t], want[t]) for t in schema.tasks)  # the DNN reads O_ep
        other = model.personalise(with_scenario(batch, (batch["categorical"][:, SCENARIO] + 1) % 3))[1]
        assert (other - delta).abs().amax(1).min() > 1e-6  # the gate is the scenario's
    model.zero_grad()
    model.personalise(batch)[1].sum().backward()  # δ's gradient reaches the table only at F_d's (scenario) rows
    grad = model.embedding.table.weight.grad.abs().sum(1)
    start = model.embedding.offset_of["scenario"]
    assert grad[start : start + 3].sum() > 0 and grad[:start].sum() == 0 and grad[start + 3 :].sum() == 0


def test_ppnet_gates_every_task_layer_from_the_priors_and_has_no_embedding_gate():
    schema, batch = toy(16)
    model = create("ppnet", schema).eval()
    assert model.prior_fields == ["user", "item", "scenario"]
    seen = {}
    hooks = [
        tower[0].register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, i[0]))
        for k, tower in enumerate(model.towers)
    ]
    with torch.no_grad():
        model(batch)
        e = model.embedding.flat(batch)
        gates = model.task_gates(batch, e)
    for h in hooks:
        h.remove()
    for k in range(2):  # layer 1 of task k reads δ_k^(1) ⊗ E: the raw embedding, no EPNet gate on it
        assert torch.allclose(seen[k], gates[0][:, k] * e)
    assert [g.shape[1:] for g in gates] == [(2, e.shape[1]), (2, 256), (2, 128), (2, 64)]
    other = dict(batch, categorical=batch["categorical"].clone())
    other["categorical"][:, USER] = (batch["categorical"][:, USER] + 1) % 20
    with torch.no_grad():
        assert (model.task_gates(other, e)[1] - gates[1]).abs().amax((1, 2)).min() > 1e-6  # the user prior
    only_user = create("ppnet", schema, prior_fields=["user"])
    only_user.task_gates(batch, only_user.embedding.flat(batch))[0].sum().backward()  # ⊘(E) in the gate input
    grad = only_user.embedding.table.weight.grad.abs().sum(1)
    assert grad[:20].sum() > 0 and grad[20:].sum() == 0


# -- MARIA ---------------------------------------------------------------------------------------------------
def test_maria_feature_scaling_and_refinement_follow_the_scenario():
    schema, batch = toy(16)
    model = create("maria", schema).eval()
    p = batch["categorical"][:, SCENARIO]
    other = with_scenario(batch, (p + 1) % 3)
    with torch.no_grad():
        q, e_s = model.fields(batch), model.scenario_embedding(batch)
        assert q.shape == (16, 5, 4)  # user, item, scenario, hist, price (x · v)
        assert torch.allclose(q[:, 4], batch["numeric"][:, :1] * model.fields.numeric[0])
        alpha = model.scaling(e_s).view_as(q)
        q_scaled, q_refined, h = model.bottom(batch)
        assert torch.allclose(q_scaled, alpha * q)  # FS: one factor per element
        assert all(torch.equal(alpha[i], alpha[j]) for i in range(16) for j in range(16) if p[i] == p[j])
        assert (model.bottom(other)[0] - q_scaled)[:, [0, 1, 3, 4]].abs().amax((1, 2)).min() > 1e-6
        ref = model.refinement  # FR: per field, softmax selector over its refiners, on q̃_i ⊕ e_s
        pi = ref.selection(q_scaled, e_s)
        assert pi.shape == (16, 5, 4) and torch.allclose(pi.sum(-1), torch.ones(16, 5))
        for i in range(5):
            r = torch.stack([torch.tanh(q_scaled[:, i] @ ref.weight[i, k] + ref.bias[i, k]) for k in range(4)], 1)
            assert torch.allclose(q_refined[:, i], (pi[:, i, :, None] * r).sum(1), atol=1e-6)
        pi_other = ref.selection(q_scaled, model.scenario_embedding(other))  # same features, other scenario
        assert (pi_other - pi).abs().amax((1, 2)).min() > 1e-6
        # FCM: the pairwise inner products of the refined fields follow them
        pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
        corr = torch.stack([(q_refined[:, i] * q_refined[:, j]).sum(-1) for i, j in pairs], 1)
        assert torch.allclose(h, torch.cat([q_refined.flatten(1), corr], 1), atol=1e-6)
        m = model.moe(h, p)  # the row's scenario gate; its scenario tower + the shared tower
        own, shared = model.towers(m, p), model.shared_tower([m, m])
        assert all(torch.allclose(model(batch)[t], own[t] + shared[t], atol=1e-6) for t in schema.tasks)
    assert create("maria", schema, correlation=False).moe.experts.weights[0].shape[1] == 5 * 4


# -- DeepFM --------------------------------------------------------------------------------------------------
def test_fm_pairwise_term_is_the_sum_of_pairwise_inner_products():
    torch.manual_seed(0)
    e = torch.randn(3, 5, 4)
    want = sum((e[:, i] * e[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5))
    assert torch.allclose(fm_pairwise(e), want, atol=1e-5)


def test_deepfm_logit_is_first_order_plus_pairwise_fm_plus_dnn_on_shared_embeddings():
    schema, batch = toy(16)
    model = create("deepfm", schema).eval()
    with torch.no_grad():
        model.first_order.table.weight.normal_()
        model.first_order_numeric.weight.normal_()
        model.bias.copy_(torch.tensor([0.5, -0.5]))
        out = model(batch)
        table, emb = model.first_order.table.weight, model.fields.embedding
        cat, hist = batch["categorical"], batch["seq:hist"]
        e = model.fields(batch)
        assert torch.allclose(e[:, 0], emb.table.weight[cat[:, USER]])  # the DNN and the FM share these
        names = ["user", "item", "scenario"]
        for r in range(16):
            vectors = [emb.table.weight[emb.offset_of[f] + cat[r, c]] for c, f in enumerate(names)]
            real = hist[r][hist[r] >= 0]
            pooled = emb.table.weight[20 + real].mean(0) if len(real) else torch.zeros(4)
            vectors += [pooled, batch["numeric"][r, 0] * model.fields.numeric[0]]
            pairwise = sum(vectors[i] @ vectors[j] for i in range(5) for j in range(i + 1, 5))
            deep = model.towers([model.dnn(e[r : r + 1].flatten(1))] * 2)
            for k, t in enumerate(schema.tasks):
                first = sum(table[model.first_order.offset_of[f] + cat[r, c], k] for c, f in enumerate(names))
                first = first + (table[20 + real, k].mean() if len(real) else 0.0)
                first = first + model.first_order_numeric.weight[k, 0] * batch["numeric"][r, 0] + model.bias[k]
                assert torch.allclose(out[t][r], first + pairwise + deep[t][0], atol=1e-5), (r, t)


# -- DIN -----------------------------------------------------------------------------------------------------
def test_din_activation_unit_reads_behaviour_candidate_and_their_outer_product():
    torch.manual_seed(0)
    unit = ActivationUnit(3, [5], "outer")
    keys, q = torch.randn(2, 4, 3), torch.randn(2, 3)
    explicit = nn.Linear(3 + 3 + 9, 5)  # one linear layer on [e, v, vec(e vᵀ)]
    with torch.no_grad():
        explicit.weight.copy_(
            torch.cat([unit.w_key.weight, unit.w_query.weight, unit.w_outer.permute(2, 0, 1).reshape(5, 9)], 1)
        )
        explicit.bias.copy_(unit.w_key.bias)
    outer = (keys.unsqueeze(-1) * q[:, None, None, :]).flatten(-2)
    feats = torch.cat([keys, q[:, None].expand_as(keys), outer], -1)
    assert torch.allclose(unit.first_layer(keys, q), explicit(feats), atol=1e-5)
    element = ActivationUnit(3, [5], "element")
    want = element.first(torch.cat([keys, q[:, None].expand_as(keys), keys - q[:, None], keys * q[:, None]], -1))
    assert torch.allclose(element.first_layer(keys, q), want)


def test_din_attention_ignores_padding_is_unnormalised_and_follows_the_candidate():
    schema, batch = toy(16)
    model = create("din", schema).eval()
    hist = batch["seq:hist"]
    keys, mask = model.embedding.sequence(batch, "hist")
    q = model.embedding.table.weight[20 + batch["categorical"][:, ITEM]]
    with torch.no_grad():
        w = model.attention.weights(keys, mask, q)
        assert (w[~mask] == 0).all() and (w[mask] != 0).all()
        assert not torch.allclose(w.sum(1)[mask.any(1)], torch.ones(int(mask.any(1).sum())))  # no softmax
        assert torch.allclose(model.interest(batch), (w.unsqueeze(-1) * keys).sum(1))  # Σ_j a(e_j, v_A) e_j
        longer = dict(batch, **{"seq:hist": torch.cat([hist, torch.full((16, 3), -1)], 1)})  # more PAD
        assert torch.allclose(model(batch)["click"], model(longer)["click"], atol=1e-6, rtol=0)
        other = dict(batch, categorical=batch["categorical"].clone())
        other["categorical"][:, ITEM] = (batch["categorical"][:, ITEM] + 1) % 30  # another candidate
        q2 = model.embedding.table.weight[20 + other["categorical"][:, ITEM]]
        moved = (model.attention.weights(keys, mask, q2) - w).abs().amax(1)
    assert (moved[mask.any(1)] > 1e-6).all() and (moved[~mask.any(1)] == 0).all() and (~mask.any(1)).any()


def test_dice_uses_batch_statistics_in_training_and_moving_averages_in_inference():
    torch.manual_seed(0)
    dice = Dice(2)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.5, -1.0]))
    x = torch.randn(8, 2) * 3 + 1
    mean, var = x.mean(0), x.var(0, unbiased=False)
    p = torch.sigmoid((x - mean) / torch.sqrt(var + 1e-8))
    assert torch.allclose(dice(x), p * x + (1 - p) * dice.alpha * x, atol=1e-6)
    assert torch.allclose(dice.running_mean, 0.1 * mean) and torch.allclose(dice.running_var, 0.9 + 0.1 * x.var(0))
    dice.eval()
    p = torch.sigmoid((x - dice.running_mean) / torch.sqrt(dice.running_var + 1e-8))
    assert torch.allclose(dice(x), p * x + (1 - p) * dice.alpha * x, atol=1e-6)
    dice.train()
    assert torch.isfinite(dice(x[:1])).all()  # one row: moving averages, not a zero variance


def test_din_paper_sizes_and_prelu_option():
    schema, batch = toy(8, tasks=("click",))
    model = create("din", schema)
    assert [m.out_features for m in model.dnn if isinstance(m, nn.Linear)] == [200, 80]
    assert isinstance(model.dnn[1], Dice) and isinstance(model.towers[0][0], nn.Linear)  # one linear logit
    prelu = create("din", schema, activation="prelu")
    assert not any(isinstance(m, Dice) for m in prelu.modules()) and math.isfinite(prelu(batch)["click"].sum().item())


# -- end to end ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_runs_every_zoo_b_model_in_one_multirun_with_per_scenario_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY, f"model={','.join(ALL)}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {json.loads(p.read_text())["model"]: json.loads(p.read_text()) for p in sweep.rglob("results.json")}
    assert sorted(results) == sorted(ALL)
    for name, res in results.items():
        for task in ("click", "long_view", "purchase"):
            m = res["metrics"]["test"][task]
            assert {"auc@scenario=0", "auc@scenario=1", "auc@scenario=2", "gauc@scenario=0", "sgauc"} <= set(m)
            assert 0.0 < m["auc"] < 1.0 and all(0.0 < m[f"auc@scenario={s}"] < 1.0 for s in range(3)), (name, task)


@pytest.mark.slow
def test_zoo_b_models_train_on_the_ali_ccp_sample(tmp_path):
    """The real Ali-CCP rows (Scenario-Wise-Rec's sample, 3 scenarios), the publisher's train/val/test files.
    Its processed layout has no behaviour sequence, so DIN is refused with one line instead."""
    from mtlbench.datasets.ali_ccp import AliCCP

    folder = shared_data("ali-ccp")
    schema, _ = AliCCP(path=str(folder), pattern="scenariowiserec_*").build()
    with pytest.raises(ConfigError, match=r"^model DIN needs a sequence field; dataset '.*' has none$"):
        mtlbench.create_model("din", schema)
    models = [m for m in ALL if m != "din"]
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "dataset=ali_ccp",
        f"dataset.path={folder}",
        "dataset.pattern=scenariowiserec_*",
        "dataset.split.method=column:split_part",
        "tasks=[ctr,ctcvr]",
        f"model={','.join(models)}",
        "trainer.max_epochs=1",
        "batch_size=32",
        "eval_batch_size=256",
        "trainer.enable_progress_bar=false",
        "logger=none",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_cli(args, cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {json.loads(p.read_text())["model"]: json.loads(p.read_text()) for p in sweep.rglob("results.json")}
    assert sorted(results) == sorted(models)
    for name, res in results.items():
        assert res["dataset"] == "ali_ccp" and list(res["metrics"]["test"]) == ["ctr", "ctcvr"], name
        for task in ("ctr", "ctcvr"):  # 50 test rows: per-scenario AUCs may be undefined (null), the keys exist
            m = res["metrics"]["test"][task]
            assert {f"auc@scenario={s}" for s in range(3)} <= set(m), (name, task, sorted(m))
            assert 0.0 <= m["auc"] <= 1.0, (name, task)
