"""Multi-scenario models M2M, AdaSparse, SAR-Net, HAMUR, M3oE, AdaptDHM: contract, mechanisms, errors, CLI."""

import json

import pytest
import torch
from fixtures.make_aliccp_raw import write_aliccp_raw
from test_ms_models import bce, toy

import mtlbench
from mtlbench.errors import ConfigError
from mtlbench.models import as_output
from mtlbench.models.adaptdhm import DynamicRouter

from conftest import TINY, run_cli, shared_data

ZOO = ["m2m", "adasparse", "sarnet", "hamur", "m3oe", "adaptdhm"]
SCENARIO_COL = 2  # toy(): user, item, scenario


def in_scenario(batch, scenario):
    """The same rows moved to ``scenario`` (an int for all rows, or a [B] tensor)."""
    other = dict(batch)
    other["categorical"] = batch["categorical"].clone()
    other["categorical"][:, SCENARIO_COL] = scenario
    other["scenario"] = other["categorical"][:, SCENARIO_COL]
    return other


# -- every model: shapes, gradients, scenario use, errors ----------------------------------------------------
@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("tasks", [("click",), ("click", "buy", "fav")])
def test_forward_backward_shapes(name, tasks):
    torch.manual_seed(0)
    schema, batch = toy(32, tasks)
    model = mtlbench.create_model(name, schema, embedding_dim=4)
    out = as_output(model(batch))
    assert list(out.logits) == list(tasks)
    assert all(v.shape == (32,) and torch.isfinite(v).all() for v in out.logits.values())
    (bce(out.logits, batch, schema) + sum(out.aux_losses.values(), torch.zeros(()))).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert all(torch.isfinite(v).all() for v in as_output(model(batch)).logits.values())


@pytest.mark.parametrize("name", ZOO)
def test_scenario_changes_the_prediction(name):
    """The same row in another scenario gets another score."""
    torch.manual_seed(0)
    schema, batch = toy(16)
    model = mtlbench.create_model(name, schema, embedding_dim=4).eval()
    other = in_scenario(batch, (batch["scenario"] + 1) % 3)
    with torch.no_grad():
        a, b = as_output(model(batch)).logits["click"], as_output(model(other)).logits["click"]
    assert (a - b).abs().min() > 1e-6


@pytest.mark.parametrize("name", ZOO)
def test_model_without_scenario_field_names_it(name):
    schema, _ = toy(8, scenario=False)
    with pytest.raises(ConfigError) as err:
        mtlbench.create_model(name, schema)
    assert "needs a scenario field; dataset 'toy' has none" in str(err.value) and "\n" not in str(err.value)


def test_sarnet_needs_a_behaviour_sequence_the_others_do_not():
    schema, batch = toy(8, sequence=False)
    with pytest.raises(ConfigError, match=r"model SARNet needs a sequence field; dataset 'toy' has none"):
        mtlbench.create_model("sarnet", schema)
    for name in ZOO:
        if name != "sarnet":
            as_output(mtlbench.create_model(name, schema, embedding_dim=4)(batch))


@pytest.mark.parametrize(
    "name, settings, words",
    [
        ("m2m", {"transformer_heads": 3}, "divisible by transformer_heads"),
        ("m2m", {"scenario_fields": ["page"]}, "scenario_fields ['page']"),
        ("adasparse", {"form": "sign"}, "form must be one of"),
        ("adasparse", {"form": "scaling"}, "prunes no neuron"),
        ("adasparse", {"epsilon": 3.0}, "epsilon must lie in (0, 2.0)"),
        ("adasparse", {"target_sparsity": 1.5}, "0 <= target_sparsity < 1"),
        ("sarnet", {"sequence": "clicks"}, "sequence 'clicks' is not a sequence field"),
        ("sarnet", {"shared_experts": 0, "specific_experts": 0}, "at least one expert"),
        ("sarnet", {"debias_fields": ["position"]}, "debias_fields ['position']"),
        ("hamur", {"backbone": "star"}, "backbone must be 'specific' or 'shared'"),
        ("hamur", {"adapters": 3}, "1 <= adapters <= len(hidden)"),
        ("m3oe", {"bottom": "ple"}, "bottom must be 'star' or 'mlp'"),
        ("m3oe", {"star_dims": [8]}, "star_dims of two widths"),
        ("adaptdhm", {"momentum": 1.0}, "0 <= momentum < 1"),
    ],
)
def test_bad_settings_are_one_line_config_errors(name, settings, words):
    schema, _ = toy(8)
    with pytest.raises(ConfigError) as err:
        mtlbench.create_model(name, schema, **settings)
    assert words in str(err.value) and "\n" not in str(err.value)


# -- M2M -------------------------------------------------------------------------------------------------------
def test_m2m_meta_unit_weights_come_from_the_scenario_and_drive_attention_and_towers():
    torch.manual_seed(0)
    schema, batch = toy(16)
    model = mtlbench.create_model(
        "m2m", schema, embedding_dim=4, expert=[8], scenario_dim=5, attention_hidden=6, tower_layers=1
    ).eval()
    p = batch["scenario"]
    s, inverse, groups = model.scenario_knowledge(batch)
    # S = h(E(scenario)): one per distinct scenario, each row's is its scenario's
    emb = model.embedding.table(p + model.embedding.offset_of["scenario"])
    assert len(s) == len(p.unique()) == 3 and torch.allclose(s[inverse], model.scenario_view(emb))
    # meta unit: W = reshape(V S + v), b = U S + u; different scenarios, different weights
    ((w, b),) = model.attention.generate(s)
    gen, bgen = model.attention.weight_gen[0], model.attention.bias_gen[0]
    for u in range(3):
        assert torch.allclose(w[u], (gen.weight @ s[u] + gen.bias).view(16, 6), atol=1e-6)
        assert torch.allclose(b[u], bgen.weight @ s[u] + bgen.bias, atol=1e-6)
    assert (w[0] - w[1]).abs().amax() > 1e-3 and (w[1] - w[2]).abs().amax() > 1e-3
    # meta attention by hand: a_ti = vᵀ σ((E_i ⊕ T_t) W(S) + b(S)), α = softmax_i, R_t = Σ α_ti E_i
    e, t = model.views(batch)
    alpha = model.meta_attention(e, t, s, inverse, groups)
    ((wt, bt),) = model.towers.generate(s)
    out = model(batch)
    for r in range(16):
        u = inverse[r]
        for k, task in enumerate(schema.tasks):
            a = torch.stack([model.attention_v(torch.relu(torch.cat([e[r, i], t[k]]) @ w[u] + b[u])) for i in range(4)])
            assert torch.allclose(alpha[r, k], torch.softmax(a.squeeze(-1), 0), atol=1e-5)
            rep = alpha[r, k] @ e[r]
            top = torch.relu(rep @ wt[u, k] + bt[u, k] + rep)  # residual meta tower layer
            assert torch.allclose(out[task][r], top @ model.towers.out[k] + model.towers.out_bias[k], atol=1e-5)
    # the scenario decides how the tasks read the experts: another scenario, another α
    s2, inv2, groups2 = model.scenario_knowledge(in_scenario(batch, (p + 1) % 3))
    assert (model.meta_attention(e, t, s2, inv2, groups2) - alpha).abs().amax(-1).amin() > 1e-6


def test_m2m_rows_are_scored_on_their_own_and_grouped_weights_equal_per_row_weights():
    torch.manual_seed(0)
    schema, batch = toy(16)
    grouped = mtlbench.create_model("m2m", schema, embedding_dim=4, tower_layers=2).eval()
    per_row = mtlbench.create_model("m2m", schema, embedding_dim=4, tower_layers=2, max_groups=0).eval()
    per_row.load_state_dict(grouped.state_dict())
    assert per_row.scenario_knowledge(batch)[2] is None and len(grouped.scenario_knowledge(batch)[2]) == 3
    with torch.no_grad():
        a, b = grouped(batch), per_row(batch)
        first = grouped({k: v[:3] for k, v in batch.items()})  # a row's score does not depend on the batch
    for task in schema.tasks:
        assert torch.allclose(a[task], b[task], atol=1e-5) and torch.allclose(first[task], a[task][:3], atol=1e-5)


def test_m2m_meta_unit_split_first_layer_equals_the_concatenated_pairs():
    from mtlbench.models.m2m import MetaUnit

    torch.manual_seed(0)
    unit = MetaUnit(2 * 3, [5, 4], scenario_dim=2)
    e, t, s = torch.randn(6, 4, 3), torch.randn(2, 3), torch.randn(2, 2)  # 4 experts, 2 tasks, 2 scenarios
    inverse = torch.tensor([0, 1, 1, 0, 1, 0])
    pairs = torch.cat([e.unsqueeze(1).expand(6, 2, 4, 3), t.view(1, 2, 1, 3).expand(6, 2, 4, 3)], -1)
    want = unit(pairs.reshape(6, 8, 6), s, inverse, None).view(6, 2, 4, 4)
    groups = [torch.tensor([0, 3, 5]), torch.tensor([1, 2, 4])]
    assert torch.allclose(unit.pairs(e, t, s, inverse, groups), want, atol=1e-6)
    assert torch.allclose(unit.pairs(e, t, s, inverse, None), want, atol=1e-6)


# -- AdaSparse -------------------------------------------------------------------------------------------------
def test_adasparse_fusion_factors_prune_neurons_to_exact_zero():
    torch.manual_seed(0)
    schema, batch = toy(16)
    model = mtlbench.create_model("adasparse", schema, embedding_dim=4, hidden=[8], tower=[4]).eval()
    pruner = model.bottom.pruners[0]
    with torch.no_grad():  # half the neurons pushed far below the threshold, half above
        pruner.linear.bias.copy_(torch.tensor([-9.0] * 4 + [9.0] * 4))
    x = model.embedding.flat(batch)
    e_d = model.embedding.table(batch["scenario"] + model.embedding.offset_of["scenario"])
    h, factors, shares = model.bottom(x, e_d, model.alpha_now)
    u = pruner.linear(torch.cat([e_d, x], 1))  # α = 1
    want = 2 * torch.sigmoid(u) * (2 * torch.sigmoid(u) >= 0.25)  # π = β σ(αu) · 1[β σ(αu) >= ε]
    assert torch.allclose(factors[0], want) and (factors[0][:, :4] == 0).all() and (factors[0][:, 4:] > 1.9).all()
    layer = model.bottom.layers[0]
    assert torch.allclose(h, want * torch.relu(layer(x)))  # x_1 = π ⊙ φ(W x + b)
    assert (h[:, :4] == 0).all()  # pruned neurons: exactly zero, whatever their pre-activation
    assert float(shares[0].detach()) == pytest.approx(0.5)  # r_l counts the pruned neurons


def test_adasparse_binary_form_is_zero_one_with_straight_through_gradient():
    torch.manual_seed(0)
    schema, batch = toy(16)
    model = mtlbench.create_model("adasparse", schema, embedding_dim=4, hidden=[8], tower=[4], form="binary")
    out = model(batch)
    assert all(set(f.unique().tolist()) <= {0.0, 1.0} for f in model.last_factors)
    bce(out.logits, batch, schema).backward()
    assert model.bottom.pruners[0].linear.weight.grad.abs().sum() > 0


def test_adasparse_alpha_grows_with_training_steps_only():
    schema, batch = toy(8)
    model = mtlbench.create_model("adasparse", schema, embedding_dim=4, alpha=1.0, alpha_step=0.5, alpha_max=2.2)
    for _ in range(2):
        model(batch)
    assert float(model.alpha_now) == pytest.approx(2.0)
    model.eval()
    model(batch)
    assert float(model.alpha_now) == pytest.approx(2.0) and int(model.steps) == 2
    model.train()
    model(batch)
    assert float(model.alpha_now) == pytest.approx(2.2)  # capped at alpha_max
    assert "steps" in model.state_dict() and "alpha_now" in model.state_dict()


@pytest.mark.parametrize("target", [0.2, 0.7])
def test_adasparse_sparsity_regulariser_prunes_the_target_share(target):
    torch.manual_seed(0)
    schema, batch = toy(64)
    model = mtlbench.create_model(
        "adasparse", schema, embedding_dim=4, hidden=[16, 16], tower=[8], target_sparsity=target, sparsity_weight=1.0
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    start = model(batch)
    assert float(start.aux_losses["sparsity"].detach()) == pytest.approx(target, abs=0.05)  # nothing pruned at start
    for _ in range(50):
        out = model(batch)
        opt.zero_grad()
        out.aux_losses["sparsity"].backward()
        opt.step()
    with torch.no_grad():
        model.eval()(batch)
    measured = torch.tensor([float((f == 0).float().mean()) for f in model.last_factors])
    assert torch.allclose(model.last_sparsity, measured)
    assert abs(float(measured.mean()) - target) < 0.06 and ((measured - target).abs() < 0.15).all(), measured


# -- SAR-Net ---------------------------------------------------------------------------------------------------
def test_sarnet_scenario_attention_changes_with_the_scenario_and_ignores_padding():
    torch.manual_seed(0)
    schema, batch = toy(32)
    model = mtlbench.create_model("sarnet", schema, embedding_dim=4, attention_dim=3).eval()
    att = model.scenario_attention
    seq, mask = model.embedding.sequence(batch, "hist")
    scen = model.embedding.table(torch.arange(3) + model.embedding.offset_of["scenario"])
    weights = [att.weights(scen[i].expand(32, -1), seq, mask) for i in range(3)]
    real = mask.sum(1)
    for w, q in zip(weights, scen):
        assert (w[~mask] == 0).all()  # padding: weight exactly 0
        assert torch.allclose(w.sum(1), (real > 0).float())  # softmax over the real behaviours; none -> 0
        scores = (att.q(q) * att.k(seq)).sum(-1) / 3**0.5
        want = torch.softmax(scores.masked_fill(~mask, -torch.inf), 1).nan_to_num(0.0)
        assert torch.allclose(w, want, atol=1e-6)
    several = real >= 2
    assert several.any() and ((weights[0] - weights[1]).abs().amax(1)[several] > 1e-4).all()
    # more padding changes nothing; no behaviour gives h = 0
    longer = dict(batch)
    longer["seq:hist"] = torch.cat([batch["seq:hist"], torch.full((32, 3), -1)], dim=1)
    with torch.no_grad():
        assert torch.allclose(model.encode(batch)[0], model.encode(longer)[0], atol=1e-6)
        h = model.scenario_attention(scen[0].expand(32, -1), seq, mask)
    assert (real == 0).any() and (h[real == 0] == 0).all()


def test_sarnet_rows_use_shared_experts_and_their_own_scenarios_experts_and_gate():
    torch.manual_seed(0)
    schema, batch = toy(32)
    model = mtlbench.create_model("sarnet", schema, embedding_dim=4, shared_experts=2, specific_experts=1).eval()
    x, p = model.encode(batch)
    before, gates = model.experts(x, p), model.gates(x, p)
    assert before.shape == (32, 3, 64) and gates.shape == (32, 2, 3)
    assert torch.allclose(gates.sum(-1), torch.ones(32, 2))
    with torch.no_grad():
        model.specific.weights[0][1].add_(0.5)  # scenario 1's specific expert
        model.gate_weight[2].add_(0.5)  # scenario 2's gate
    after, gates_after = model.experts(x, p), model.gates(x, p)
    moved = (after - before).abs().amax(-1)
    assert (moved[:, :2] == 0).all()  # shared experts untouched
    assert (moved[p == 1, 2] > 0).all() and (moved[p != 1, 2] == 0).all()
    gate_moved = (gates_after - gates).abs().amax((1, 2))
    assert (gate_moved[p == 2] > 0).all() and (gate_moved[p != 2] == 0).all()
    # x_s = x ⊙ w_s + b_s, starting as the identity
    assert torch.allclose(model.scale, torch.ones_like(model.scale)) and (model.shift == 0).all()


def test_sarnet_debias_tower_adds_a_training_only_logit():
    torch.manual_seed(0)
    schema, batch = toy(16)
    model = mtlbench.create_model("sarnet", schema, embedding_dim=4, debias_fields=["user"])
    assert "user" not in model.embedding.field_names
    with torch.no_grad():
        train, serve = model.train()(batch), model.eval()(batch)
        bias = model.bias_towers(model.embedding.table(batch["categorical"][:, 0]))
    for k, t in enumerate(schema.tasks):
        assert torch.allclose(train[t] - serve[t], bias[:, k], atol=1e-6)


# -- HAMUR -----------------------------------------------------------------------------------------------------
def test_hamur_adapter_weights_are_generated_by_the_hyper_network_per_instance_and_domain():
    torch.manual_seed(0)
    schema, batch = toy(16)
    model = mtlbench.create_model(
        "hamur", schema, embedding_dim=4, hidden=[8, 6], bottleneck=3, k=2, hyper_hidden=[5], backbone="shared"
    ).eval()
    p = batch["scenario"]
    x = model.embedding.flat(batch)
    hyper = model.instance_matrix(x)  # H(x): the domain-shared hyper-network's output
    assert torch.allclose(hyper, model.hyper(x).view(16, 2, 2))
    cell = model.adapters[0]
    w1, w2 = cell.weights(hyper, p)
    for r in range(16):  # W_1 = U_1 H(x) V_1, W_2 = U_2 H(x) V_2 with the row's domain's factors
        assert torch.allclose(w1[r], cell.u1[p[r]] @ hyper[r] @ cell.v1[p[r]], atol=1e-6)
        assert torch.allclose(w2[r], cell.u2[p[r]] @ hyper[r] @ cell.v2[p[r]], atol=1e-6)
    same_domain = (p == p[0]).nonzero().squeeze(1)
    assert len(same_domain) > 1 and (w1[same_domain[0]] - w1[same_domain[1]]).abs().amax() > 1e-5  # per instance
    w1_other, _ = cell.weights(hyper, (p + 1) % 3)
    assert (w1 - w1_other).abs().amax((1, 2)).amin() > 1e-5  # same instance, other domain: other weights
    # the cell: h' = h + DN_d((σ(h W_1 + b_1)) W_2 + b_2)
    h = torch.randn(16, 6)
    a = torch.sigmoid(torch.einsum("bm,bmr->br", h, w1) + cell.b1[p])
    o = torch.einsum("br,brm->bm", a, w2) + cell.b2[p]
    assert torch.allclose(cell(h, hyper, p), h + cell.norm(o, p), atol=1e-5)


def test_hamur_backbone_is_shared_or_per_domain_as_configured():
    torch.manual_seed(0)
    schema, batch = toy(16)
    shared = mtlbench.create_model("hamur", schema, embedding_dim=4, backbone="shared")
    specific = mtlbench.create_model("hamur", schema, embedding_dim=4)
    h = torch.randn(16, shared.embedding.output_dim)
    zeros, ones = torch.zeros(16, dtype=torch.long), torch.ones(16, dtype=torch.long)
    assert torch.equal(shared.backbone_layer(0, h, zeros), shared.backbone_layer(0, h, ones))
    assert not torch.allclose(specific.backbone_layer(0, h, zeros), specific.backbone_layer(0, h, ones))
    # shared backbone: the only dense parameters with a domain dimension are the adapters' (and its norm)
    per_domain = [n for n, q in shared.named_parameters() if q.dim() >= 2 and q.shape[0] == 3 and "embedding" not in n]
    assert per_domain and all(n.startswith("adapters.") for n in per_domain)
    out = shared(batch)
    assert list(out) == ["click", "buy"]


# -- M3oE ------------------------------------------------------------------------------------------------------
def test_m3oe_learned_fusion_weights_mix_shared_domain_and_task_experts():
    torch.manual_seed(0)
    schema, batch = toy(16)
    model = mtlbench.create_model(
        "m3oe", schema, embedding_dim=4, star_dims=[8, 6], expert=[5], tower=[3], num_experts=2
    ).eval()
    assert "fusion_logits" in dict(model.named_parameters())
    e, p = model.represent(batch)
    fused = model.fuse(e, p)
    shared, domain, task = model.shared(e), model.domain_experts(e), model.task_experts(e)
    w = torch.sigmoid(model.fusion_logits)  # α_D, α_T, β_D, β_T
    for r in range(16):
        d = int(p[r])
        gates = model.gates(e[r]).view(3, 2, 2)[d]
        for t in range(2):
            s = torch.softmax(gates[t], 0) @ shared[r]
            d_bal = w[2] * domain[r, d] + (1 - w[2]) / 2 * sum(domain[r, j] for j in range(3) if j != d)
            t_bal = w[3] * task[r, t] + (1 - w[3]) * task[r, 1 - t]
            assert torch.allclose(fused[r, t], s + w[0] * d_bal + w[1] * t_bal, atol=1e-6)
    # the weights are learned: they get a gradient and move with the optimizer
    model.train()
    opt = torch.optim.SGD([model.fusion_logits], lr=1.0)
    bce(model(batch), batch, schema).backward()
    assert (model.fusion_logits.grad != 0).all()
    before = model.fusion_logits.detach().clone()
    opt.step()
    assert (model.fusion_logits != before).all()
    # α_D = α_T = 0: only the shared experts remain
    with torch.no_grad():
        model.fusion_logits[:2] = -40.0
    shared_only = torch.bmm(torch.softmax(model.gates(e).view(16, 3, 2, 2)[torch.arange(16), p], -1), shared)
    assert torch.allclose(model.fuse(e, p), shared_only, atol=1e-6)


def test_m3oe_each_domain_and_task_has_its_tower():
    torch.manual_seed(0)
    schema, batch = toy(16)
    model = mtlbench.create_model("m3oe", schema, embedding_dim=4, star_dims=[8, 6], expert=[5]).eval()
    out = model(batch)
    with torch.no_grad():
        model.towers.weight[1 * 3 + 2].add_(1.0)  # tower of (task 1, domain 2)
    moved = model(batch)
    p = batch["scenario"]
    assert torch.equal(out["click"], moved["click"])
    buy_moved = (out["buy"] - moved["buy"]).abs()
    assert (buy_moved[p == 2] > 0).all() and (buy_moved[p != 2] == 0).all()


# -- AdaptDHM --------------------------------------------------------------------------------------------------
def test_adaptdhm_routing_by_hand_and_centres_move_in_training_only():
    router = DynamicRouter(2, num_clusters=2, momentum=0.5, iters=1)
    with torch.no_grad():
        router.centers.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[3.0, 0.1], [0.2, 2.0], [1.0, 0.9]])
    router.eval()
    assert router(x).tolist() == [0, 1, 0]  # argmax_j softmax_j(x · c_j)
    assert router(torch.tensor([[0.1, 3.0]])).tolist() == [1]  # the routing follows the input
    assert torch.equal(router.centers, torch.eye(2))  # evaluation: centres fixed
    router.train()
    r = torch.softmax(x @ torch.eye(2), 1)
    pulled = torch.nn.functional.normalize(r.T @ x, dim=1)
    want = torch.nn.functional.normalize(0.5 * torch.eye(2) + 0.5 * pulled, dim=1)
    clusters = router(x)
    assert torch.allclose(router.centers, want, atol=1e-6)
    assert clusters.tolist() == (x @ want.T).argmax(1).tolist()


def test_adaptdhm_routes_rows_to_clusters_and_runs_only_their_clusters_layers():
    torch.manual_seed(0)
    schema, batch = toy(64)
    model = mtlbench.create_model("adaptdhm", schema, embedding_dim=4, num_clusters=3).eval()
    centres = model.router.centers.clone()
    out = model(batch)
    k = model.last_clusters
    x = model.embedding.flat(batch)
    assert torch.equal(k, (x @ centres.T).argmax(1)) and torch.equal(model.router.centers, centres)
    assert len(k.unique()) >= 2, k.bincount()
    target = int(k[0])
    with torch.no_grad():  # cluster `target`'s own weights of the first routed layer
        model.bottom.layers[0].scenario_weight[target].mul_(1.5)
    moved = (model(batch)["click"] - out["click"]).abs()
    assert (moved[k == target] > 0).all() and (moved[k != target] == 0).all()
    model.train()
    model(batch)
    assert not torch.equal(model.router.centers, centres)  # training moves the centres


# -- end to end ------------------------------------------------------------------------------------------------
def results(sweep):
    return {json.loads(p.read_text())["model"]: json.loads(p.read_text()) for p in sweep.rglob("results.json")}


@pytest.mark.slow
def test_cli_runs_every_zoo_model_in_one_multirun_with_per_scenario_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY, f"model={','.join(ZOO)}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = results(sweep)
    assert sorted(runs) == sorted(ZOO)
    for name, res in runs.items():
        for task in ("click", "long_view", "purchase"):
            m = res["metrics"]["test"][task]
            assert {"auc@scenario=0", "auc@scenario=1", "auc@scenario=2", "gauc@scenario=0"} <= set(m), name
            assert 0.0 < m["auc"] < 1.0, (name, task)


@pytest.mark.slow
def test_cli_runs_the_zoo_on_ali_ccp_samples(tmp_path):
    """The real Ali-CCP sample (Scenario-Wise-Rec's files: 3 scenarios, no behaviour sequence) for the five
    models without a sequence; SAR-Net, which needs one, on the raw-layout fixture (sequences 109_14 ...)."""
    folder = shared_data("ali-ccp")
    fast = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none", "tasks=[ctr]"]
    small = ["batch_size=64", "eval_batch_size=256", f"cache_dir={tmp_path / 'cache'}"]
    no_seq = [m for m in ZOO if m != "sarnet"]
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "dataset=ali_ccp",
            f"dataset.path={folder}",
            "dataset.pattern=scenariowiserec_*",
            f"model={','.join(no_seq)}",
            *fast,
            *small,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = write_aliccp_raw(tmp_path / "raw")
    proc = run_cli(
        ["dataset=ali_ccp", f"dataset.path={raw}", "model=sarnet", *fast, *small, f"hydra.run.dir={sweep / 'sarnet'}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = results(sweep)
    assert sorted(runs) == sorted(ZOO)
    for name, res in runs.items():
        assert res["dataset"] == "ali_ccp" and list(res["metrics"]["test"]) == ["ctr"], name
        assert {f"auc@scenario={s}" for s in range(3)} <= set(res["metrics"]["test"]["ctr"]), name
