"""Multi-task zoo: OMoE, cross-stitch, DSelect-k, MSSM, SNR, AdaTT, ESCM², MetaHeac.

One test per model of the mechanism that defines it, on hand examples; one slow multirun on the tiny
simulator and on the real census sample.
"""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import mtlbench
from mtlbench.data.rows import build_tensors
from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.errors import ConfigError
from mtlbench.models.adatt import FusionLevel
from mtlbench.models.cross_stitch import CrossStitchUnit
from mtlbench.models.dselect_k import binary_codes, selector_distribution, smooth_step
from mtlbench.models.escm2 import dr_risk, ips_risk
from mtlbench.models.hard_concrete import BETA, GAMMA, ZETA, HardConcreteGates
from mtlbench.models.metaheac import mixture_logit
from mtlbench.models.snr import route

from conftest import TINY, run_cli, shared_data

ZOO = ["omoe", "cross_stitch", "dselect_k", "mssm", "snr", "adatt", "escm2", "metaheac"]
TASKS = ["click", "long_view", "purchase"]


def tiny(n=32):
    rng = np.random.default_rng(0)
    feats = [
        Feature("user", "categorical", 10, "user"),
        Feature("item", "categorical", 12, "item"),
        Feature("price", "numeric"),
    ]
    schema = DatasetSchema(
        "tiny", feats, tasks=list(TASKS), user_field="user", item_field="item",
        task_roles={"click": "click", "conversion": "purchase"},
    )  # fmt: skip
    click = rng.integers(0, 2, n).astype(np.float32)
    cols = {
        "user": rng.integers(0, 10, n),
        "item": rng.integers(0, 12, n),
        "price": rng.random(n).astype(np.float32),
        "click": click,
        "long_view": (click * rng.integers(0, 2, n)).astype(np.float32),
        "purchase": (click * rng.integers(0, 2, n)).astype(np.float32),
    }
    schema.validate(cols)
    return schema, build_tensors(schema, cols)


def bce(logit: float, y: float) -> float:
    return math.log1p(math.exp(-logit)) if y == 1 else math.log1p(math.exp(logit))


# -- OMoE -------------------------------------------------------------------------------------------------


def test_omoe_single_gate_gives_every_task_the_same_expert_mix():
    torch.manual_seed(0)
    schema, batch = tiny()
    model = mtlbench.create_model("omoe", schema, embedding_dim=4, num_experts=3, expert=[8], tower=[4])
    seen = []
    for tower in model.towers.towers:
        tower.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    out = model(batch)
    x = model.embedding.flat(batch)
    g = torch.softmax(model.gate(x), dim=-1)
    expected = (g.unsqueeze(-1) * model.experts(x)).sum(1)  # Σ_i g_i f_i(x), one g for all tasks
    assert len(seen) == 3 and all(torch.allclose(s, expected, atol=1e-6) for s in seen)
    assert torch.allclose(out.extras["gate"].sum(-1), torch.ones(32))
    assert sum(p.numel() for p in model.gate.parameters()) == (x.shape[1] + 1) * 3  # one gate, not one per task
    # MMoE with the same experts gives the tasks different mixes: the check can fail
    mmoe = mtlbench.create_model("mmoe", schema, embedding_dim=4, num_experts=3, expert=[8], tower=[4])
    mixes = mmoe.backbone(mmoe.embedding.flat(batch))
    assert not torch.allclose(mixes[0], mixes[1])


# -- cross-stitch -----------------------------------------------------------------------------------------


def test_cross_stitch_unit_is_a_linear_combination_of_columns_initialised_near_identity():
    unit = CrossStitchUnit(3, 0.9)
    assert torch.allclose(unit.alpha, torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
    assert torch.allclose(CrossStitchUnit(2, 0.9).alpha, torch.tensor([[0.9, 0.1], [0.1, 0.9]]))  # paper's 0.9/0.1
    torch.manual_seed(0)
    with torch.no_grad():
        unit.alpha.copy_(torch.randn(3, 3))
    x = torch.randn(3, 5, 4)
    out = unit(x)
    for i in range(3):
        assert torch.allclose(out[i], sum(unit.alpha[i, j] * x[j] for j in range(3)), atol=1e-6)  # x̃_i = Σ α_ij x_j


def test_cross_stitch_with_identity_alpha_keeps_the_columns_independent():
    torch.manual_seed(0)
    schema, batch = tiny()
    model = mtlbench.create_model("cross_stitch", schema, embedding_dim=4, hidden=[8, 6], self_weight=1.0)
    model(batch).logits["click"].sum().backward()
    # with α = I, task click's loss reaches only column 0 of every layer
    w = model.layers[1].weights[0].grad
    assert w[0].abs().sum() > 0 and w[1].abs().sum() == 0 and w[2].abs().sum() == 0
    model.zero_grad()
    model.stitches[0].alpha.data.fill_(1 / 3)
    model(batch).logits["click"].sum().backward()
    assert model.layers[0].weights[0].grad[1].abs().sum() > 0  # stitched: the other columns now contribute


# -- DSelect-k --------------------------------------------------------------------------------------------


def test_smooth_step_and_binary_selector():
    t = torch.tensor([-2.0, -0.5, 0.0, 0.25, 0.5, 2.0])
    s = smooth_step(t, 1.0)
    assert torch.allclose(s, torch.tensor([0.0, 0.0, 0.5, -2 * 0.25**3 + 1.5 * 0.25 + 0.5, 1.0, 1.0]))
    codes = binary_codes(4)
    assert codes.tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]
    r = selector_distribution(torch.tensor([3.0, -3.0]), codes, 1.0)  # bits (1, 0): expert 1
    assert r.tolist() == [0.0, 1.0, 0.0, 0.0]
    r = selector_distribution(torch.tensor([0.0, 0.0]), codes, 1.0)
    assert torch.allclose(r, torch.full((4,), 0.25))


def test_dselect_k_selects_at_most_k_experts_once_saturated_and_penalises_selector_entropy():
    torch.manual_seed(0)
    schema, batch = tiny()
    model = mtlbench.create_model("dselect_k", schema, embedding_dim=4, num_experts=8, k=2, expert=[6], tower=[4])
    gates = model.gates
    with torch.no_grad():
        gates.z.weight.zero_()
        gates.z.bias.copy_(torch.randn(gates.z.bias.shape).sign() * 5.0)  # every smooth-step saturated
    out = model(batch)
    q = out.extras["gate"]  # [B, T, n]
    assert ((q > 0).sum(-1) <= 2).all() and torch.allclose(q.sum(-1), torch.ones(32, 3))
    assert torch.allclose(out.aux_losses["selector_entropy"], torch.zeros(()), atol=1e-5)  # one-hot: no entropy
    with torch.no_grad():
        gates.z.bias.zero_()  # S = 1/2 everywhere: every selector uniform over 8 experts
    out = model(batch)
    expected = 1e-3 * 3 * 2 * math.log(8)  # λ Σ_tasks Σ_selectors H(uniform over 8)
    assert math.isclose(out.aux_losses["selector_entropy"].item(), expected, rel_tol=1e-4)
    assert ((out.extras["gate"] > 0).sum(-1) == 8).all()  # unsaturated: dense
    with pytest.raises(ConfigError, match="power of two"):
        mtlbench.create_model("dselect_k", schema, num_experts=6)


# -- hard-concrete gates (SNR, MSSM) ----------------------------------------------------------------------


def test_hard_concrete_gates_reach_exact_zeros_and_ones_and_the_penalty_is_the_expected_l0():
    torch.manual_seed(0)
    gates = HardConcreteGates((40_000,))
    with torch.no_grad():
        gates.log_alpha.fill_(0.3)
    z = gates()
    assert (z == 0).any() and (z == 1).any() and ((z > 0) & (z < 1)).any()
    p_nonzero = torch.sigmoid(torch.tensor(0.3 - BETA * math.log(-GAMMA / ZETA))).item()
    assert math.isclose(gates.expected_l0().item(), 40_000 * p_nonzero, rel_tol=1e-5)
    assert abs((z != 0).float().mean().item() - p_nonzero) < 0.01  # Monte Carlo: E||z||_0 is the penalty
    gates.eval()
    with torch.no_grad():
        gates.log_alpha[:2] = torch.tensor([-8.0, 8.0])
    z = gates()
    assert z[0] == 0 and z[1] == 1  # deterministic gate: exact 0 and 1
    gates.train()
    with torch.no_grad():
        gates.log_alpha.fill_(0.0)
    gates()[:10].sum().backward()
    assert gates.log_alpha.grad[:10].abs().sum() > 0  # differentiable in log α


def test_snr_routing_is_the_gated_sum_or_transform_and_the_l0_aux_loss():
    torch.manual_seed(0)
    v = torch.randn(5, 3, 4)  # [B, lower, H]
    z = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.2, 1.0]])
    w = torch.randn(2, 3, 4, 6)
    aver, trans = route(v, z, None), route(v, z, w)
    for j in range(2):
        assert torch.allclose(aver[j], sum(z[j, i] * v[:, i] for i in range(3)), atol=1e-6)  # SNR-Aver
        assert torch.allclose(trans[j], sum(z[j, i] * v[:, i] @ w[j, i] for i in range(3)), atol=1e-5)  # SNR-Trans
    schema, batch = tiny()
    for variant in ("trans", "aver"):
        model = mtlbench.create_model("snr", schema, embedding_dim=4, variant=variant, lower=[8], upper=[6])
        out = model(batch)
        assert torch.allclose(out.aux_losses["l0"], 1e-3 * model.z.expected_l0())
        model.eval()
        with torch.no_grad():
            model.z.log_alpha[0].fill_(-10.0)  # close every connection into task 0's upper sub-network
        out = model(batch)
        assert torch.allclose(out.logits["click"], out.logits["click"][0].expand(32))  # task 0 sees no input
    with pytest.raises(ConfigError, match="variant"):
        mtlbench.create_model("snr", schema, variant="mean")


# -- MSSM -------------------------------------------------------------------------------------------------


def test_mssm_field_masks_are_sparse_differentiable_and_cells_connect_sparsely():
    torch.manual_seed(0)
    schema, batch = tiny()
    model = mtlbench.create_model("mssm", schema, embedding_dim=4, num_shared=1, cells=[8, 6], tower=[4])
    assert model.field_masks.log_alpha.shape == (3, 3)  # tasks x (user, item, price)
    model.eval()
    with torch.no_grad():
        model.field_masks.log_alpha[0, 1] = -10.0  # task 0 drops the item field
    masks = model.field_masks()
    assert masks[0, 1] == 0 and (masks[1:] > 0).all()
    x = model.task_inputs(batch, masks)  # [K + S, B, D]
    assert (x[0, :, 4:8] == 0).all() and (x[1, :, 4:8] != 0).any()  # the masked field's columns are zero
    assert torch.equal(x[3], model.embedding.flat(batch))  # the shared cell reads every field
    with torch.no_grad():
        model.connections.log_alpha[0].fill_(-10.0)  # no cell reads anything at layer 2
    out = model(batch)
    assert torch.allclose(out.logits["click"], out.logits["click"][0].expand(32))
    model.train()
    out = model(batch)
    expected = 1e-3 * model.field_masks.expected_l0()
    assert torch.allclose(out.aux_losses["field_l0"], expected)
    assert torch.allclose(out.aux_losses["cell_l0"], 1e-3 * model.connections.expected_l0())
    with torch.no_grad():
        model.field_masks.log_alpha.fill_(0.0)  # gates strictly inside (0, 1) with probability > 0
        model.connections.log_alpha.fill_(0.0)
    sum(model(batch).logits.values()).sum().backward()
    assert model.field_masks.log_alpha.grad.abs().sum() > 0  # masks learn from the task losses


# -- AdaTT ------------------------------------------------------------------------------------------------


def test_adatt_fusion_unit_gates_all_experts_plus_the_residual_of_its_own_experts():
    torch.manual_seed(0)
    level = FusionLevel(2, 2, 1, 5, [4], last=False, dropout=0.0, act="relu")
    with torch.no_grad():
        level.v.copy_(torch.randn(3, 2))
    inputs = torch.randn(3, 7, 5)  # task 0, task 1, shared
    out, g = level(inputs)
    owner = [0, 0, 1, 1, 2]
    e = torch.stack([level.experts(inputs[o])[:, i] for i, o in enumerate(owner)], dim=1)  # [B, 5, H]
    for unit, own in [(0, [0, 1]), (1, [2, 3]), (2, [4])]:
        gate = torch.softmax(inputs[unit] @ level.gates.weights[0][unit] + level.gates.biases[0][unit], dim=-1)
        fused = (gate.unsqueeze(-1) * e).sum(1)  # E · g_t(f_t)
        residual = sum(level.v[unit, j] * e[:, i] for j, i in enumerate(own))  # E_t · v_t
        assert torch.allclose(g[:, unit], gate, atol=1e-6)
        assert torch.allclose(out[unit], fused + residual, atol=1e-5)
    last = FusionLevel(2, 1, 1, 5, [4], last=True, dropout=0.0, act="relu")
    out, g = last(inputs)
    e = torch.stack([last.experts(inputs[o])[:, i] for i, o in enumerate([0, 1, 2])], dim=1)
    assert out.shape[0] == 2 and not last.v.requires_grad  # no shared unit at the last level; v = 1 fixed
    assert torch.allclose(out[1], (g[:, 1].unsqueeze(-1) * e).sum(1) + e[:, 1], atol=1e-5)  # one native: + E_t


# -- ESCM² ------------------------------------------------------------------------------------------------


def test_escm2_ips_and_dr_risks_on_a_hand_example():
    cvr = torch.tensor([0.0, 1.0, -1.0, 2.0])
    click = torch.tensor([1.0, 0.0, 1.0, 0.0])
    conv = torch.tensor([1.0, 0.0, 0.0, 0.0])
    prop = torch.tensor([0.5, 0.2, 0.25, 0.1])
    e = [bce(c, y) for c, y in zip(cvr.tolist(), conv.tolist())]
    ips = (e[0] / 0.5 + e[2] / 0.25) / 4  # 1/|D| Σ o_i e_i / ô_i
    assert math.isclose(ips_risk(cvr, click, conv, prop).item(), ips, rel_tol=1e-6)
    e_hat = [0.5, 0.1, 0.0, 1.2]  # imputed errors
    o, p = click.tolist(), prop.tolist()
    dr = sum(e_hat[i] + o[i] * (e[i] - e_hat[i]) / p[i] for i in range(4)) / 4  # ê + o (e - ê) / ô
    imp = sum(o[i] * (e[i] - e_hat[i]) ** 2 / p[i] for i in range(4)) / 4  # o (e - ê)² / ô
    risk, imputation = dr_risk(cvr, torch.tensor(e_hat), click, conv, prop)
    assert math.isclose(risk.item(), dr, rel_tol=1e-6) and math.isclose(imputation.item(), imp, rel_tol=1e-6)


@pytest.mark.parametrize("variant", ["ips", "dr"])
def test_escm2_ctcvr_is_the_product_and_the_regulariser_uses_pctr_as_propensity(variant):
    torch.manual_seed(0)
    schema, batch = tiny()
    model = mtlbench.create_model("escm2", schema, embedding_dim=4, variant=variant, tower=[8], cvr_weight=0.5)
    assert (model.ctr_task, model.cvr_task) == ("click", "purchase")
    out = model(batch)
    pctr, pcvr = out.extras["ctr"], out.extras["cvr"]
    assert torch.allclose(torch.sigmoid(out.logits["purchase"]), pctr * pcvr, atol=1e-6)  # pCTCVR = pCTR·pCVR
    labels = batch["labels"]
    cvr_logit, prop = torch.logit(pcvr.double()).float(), pctr.clamp_min(0.05)
    if variant == "ips":
        expected = 0.5 * ips_risk(cvr_logit, labels[:, 0], labels[:, 2], prop)
        assert set(out.aux_losses) == {"counterfactual"}
    else:
        x = model.embedding.flat(batch)
        e_hat = torch.nn.functional.softplus(model.imputation(x).squeeze(-1))
        expected = 0.5 * dr_risk(cvr_logit, e_hat, labels[:, 0], labels[:, 2], prop)[0]
        assert set(out.aux_losses) == {"counterfactual", "imputation"}
    assert torch.allclose(out.aux_losses["counterfactual"], expected, atol=1e-5)
    model.eval()
    assert model(batch).aux_losses == {}  # the regulariser is a training loss only
    with pytest.raises(ConfigError) as err:
        mtlbench.create_model("escm2", replace(schema, task_roles={}))
    assert "\n" not in str(err.value) and "'click' task role" in str(err.value)


# -- MetaHeac ---------------------------------------------------------------------------------------------


def test_metaheac_critics_are_mixed_per_task_over_per_task_expert_mixes():
    torch.manual_seed(0)
    schema, batch = tiny()
    model = mtlbench.create_model(
        "metaheac", schema, embedding_dim=4, num_experts=3, num_critics=2, expert=[8], tower=[4]
    ).eval()  # f_θ: evaluation never adapts
    out = model(batch)
    x = model.embedding.flat(batch)
    mean = model.embedding.fields(batch).mean(1)
    f = model.experts(x)
    for t, task in enumerate(TASKS):
        gin = torch.cat([model.task_embedding.weight[t].expand(32, -1), mean], dim=1)
        a = torch.softmax(model.expert_gate(gin), dim=-1)
        h = (a.unsqueeze(-1) * f).sum(1)  # h_t = Σ_i a_ti f_i(x)
        beta = torch.softmax(model.critic_gate(gin), dim=-1)
        p = (beta * torch.sigmoid(model.critic_logits(h))).sum(-1)  # ŷ_t = Σ_j β_tj σ(c_j(h_t))
        assert torch.allclose(torch.sigmoid(out.logits[task]), p, atol=1e-5)
    assert not torch.allclose(out.logits["click"], out.logits["long_view"])
    with torch.no_grad():
        model.task_embedding.weight[1] = model.task_embedding.weight[0]  # same task embedding: same mix
    out = model(batch)
    assert torch.allclose(out.logits["click"], out.logits["long_view"])
    w, logits = torch.tensor([0.2, 0.8]), torch.tensor([30.0, -2.0])
    assert torch.isclose(torch.sigmoid(mixture_logit(w, logits)), (w * torch.sigmoid(logits)).sum())


def heac_params(model):
    return dict(model.named_parameters())


def test_metaheac_meta_training_is_the_maml_local_update_and_its_second_order_gradient():
    """Query logits of task t come from θ'_t = θ − α ∇_θ L_t(f_θ; S_t) (the local update), support logits carry
    no gradient, and the gradient of the query loss is (I − α ∇²L_t^S(θ)) ∇L_t^Q(θ'_t) (MAML's global update)."""
    torch.manual_seed(0)
    schema, batch = tiny(32)
    batch["labels"][3, 0] = float("nan")  # a support row without task click's label: not in click's S
    batch["labels"][20, 2] = float("nan")  # a query row without purchase's label: not in purchase's Q
    alpha = 0.5  # large enough that the local update and its Hessian term show
    settings = {"embedding_dim": 4, "num_experts": 2, "num_critics": 2, "expert": [6], "tower": [3]}
    model = mtlbench.create_model("metaheac", schema, inner_lr=alpha, support_share=0.25, **settings).double()
    batch["numeric"] = batch["numeric"].double()
    labels = batch["labels"].double()
    out = model.train()(batch)
    s, q = slice(0, 8), slice(8, 32)  # 25% of 32 rows: the support set
    plain = model.eval()(batch)
    model.train()
    params = heac_params(model)
    for k, t in enumerate(TASKS):
        # support rows: f_θ, detached (no parameter gets a gradient from them)
        assert torch.allclose(out.logits[t][s], plain.logits[t][s])
        from_support = torch.autograd.grad(out.logits[t][s].sum(), list(params.values()), retain_graph=True)
        assert all((g == 0).all() for g in from_support)
        # query rows: f at θ'_t from the local update on the labelled support rows, computed here by hand
        ys = labels[s, k]
        keep = ~torch.isnan(ys)
        support = torch.nn.functional.binary_cross_entropy_with_logits(plain.logits[t][s][keep], ys[keep])
        names = list(params)
        grads = torch.autograd.grad(support, [params[n] for n in names], create_graph=True, allow_unused=True)
        adapted = mtlbench.create_model("metaheac", schema, meta=False, **settings).double().eval()
        with torch.no_grad():
            for n, g in zip(names, grads):
                adapted.get_parameter(n).copy_(params[n] - alpha * (g if g is not None else 0.0))
        moved = adapted(batch).logits[t][q]
        assert torch.allclose(out.logits[t][q], moved, atol=1e-10)
        assert not torch.allclose(moved, plain.logits[t][q], atol=1e-3)  # the local update changed the query logits
        # the query loss's gradient w.r.t. θ: (I − α H_S) ∇L_Q(θ'), H_S v by double backward (MAML's global update)
        yq = labels[q, k]
        kq = ~torch.isnan(yq)
        query = torch.nn.functional.binary_cross_entropy_with_logits(out.logits[t][q][kq], yq[kq])
        meta_grad = torch.autograd.grad(query, [params[n] for n in names], retain_graph=True, allow_unused=True)
        adapted.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(adapted(batch).logits[t][q][kq], yq[kq]).backward()
        v = [adapted.get_parameter(n).grad for n in names]
        v = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, v)]
        dot = sum((g * vi).sum() for g, vi in zip(grads, v) if g is not None)
        hv = torch.autograd.grad(dot, [params[n] for n in names], retain_graph=True, allow_unused=True)
        want = [vi - alpha * (h if h is not None else 0.0) for vi, h in zip(v, hv)]
        got = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, meta_grad)]
        assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(got, want))
        first_order = max((a - vi).abs().max().item() for a, vi in zip(got, v))
        assert first_order > 1e-6  # the Hessian term is there: the check above can fail without it
    # meta: false trains on every row with f_θ; evaluation is f_θ either way
    e2e = mtlbench.create_model("metaheac", schema, meta=False, **settings).double()
    e2e.load_state_dict(model.state_dict())
    assert all(torch.allclose(e2e.train()(batch).logits[t], plain.logits[t]) for t in TASKS)


# -- end to end -------------------------------------------------------------------------------------------


def results(sweep):
    return {json.loads(p.read_text())["model"]: json.loads(p.read_text()) for p in sweep.rglob("results.json")}


@pytest.mark.slow
def test_cli_trains_every_zoo_model_in_one_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY, f"model={','.join(ZOO)}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = results(sweep)
    assert sorted(runs) == sorted(ZOO)
    for name, res in runs.items():
        for task in TASKS:
            auc = res["metrics"]["test"][task]["auc"]
            assert math.isfinite(auc) and 0.0 < auc < 1.0, (name, task)
    assert 0.0 < runs["escm2"]["cvr"]["test"]["auc"] < 1.0


@pytest.mark.slow
def test_cli_trains_the_zoo_on_census_and_escm2_refuses_without_conversion_roles(tmp_path):
    folder = shared_data("census-income-kdd")
    data = ["dataset=census_income", f"dataset.path={folder}", "dataset.max_rows=20000"]
    fast = ["trainer.max_epochs=1", "batch_size=512", "trainer.enable_progress_bar=false", "logger=none"]
    others = [m for m in ZOO if m != "escm2"]
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *data, *fast, f"model={','.join(others)}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = results(sweep)
    assert sorted(runs) == sorted(others)
    for name, res in runs.items():
        for task in ("income", "never_married"):
            auc = res["metrics"]["test"][task]["auc"]
            assert math.isfinite(auc) and 0.0 < auc < 1.0, (name, task)
    proc = run_cli([*data, *fast, "model=escm2", f"hydra.run.dir={tmp_path / 'escm2'}"], cwd=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "escm2" in line and "task role" in line]
    assert len(lines) == 1 and "'click' task role" in lines[0], proc.stderr[-2000:]
