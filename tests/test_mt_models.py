"""AITM, ESMM and AEM2TL: shapes and gradients, their distinctive equations on hand examples, CLI runs."""

import json
import math
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

import mtlbench
from mtlbench.data.rows import build_tensors
from mtlbench.data.schema import DatasetSchema, Feature, select_tasks
from mtlbench.errors import ConfigError
from mtlbench.models.aem2tl import PersonalizedTower, ScenarioCGC
from mtlbench.models.aitm import AIT, label_constraint
from mtlbench.models.esmm import ctcvr_logit
from mtlbench.testing import check_forward_backward

from conftest import TINY, run_cli

TASKS = ["click", "long_view", "purchase"]


def tiny(n=48, scenario=True):
    """Three tasks like the lifecycle data: purchase implies click, labels on every impression."""
    rng = np.random.default_rng(0)
    feats = [
        Feature("user", "categorical", 10, "user"),
        Feature("item", "categorical", 12, "item"),
        Feature("price", "numeric"),
        Feature("hist", "sequence", max_len=3, embedding="item", role="user"),
    ]
    if scenario:
        feats.append(Feature("scenario", "categorical", 3))
    schema = DatasetSchema(
        "tiny",
        feats,
        tasks=list(TASKS),
        user_field="user",
        item_field="item",
        scenario_field="scenario" if scenario else None,
        task_roles={"click": "click", "conversion": "purchase"},
    )
    click = rng.integers(0, 2, n).astype(np.float32)
    cols = {
        "user": rng.integers(0, 10, n),
        "item": rng.integers(0, 12, n),
        "price": rng.random(n).astype(np.float32),
        "hist": rng.integers(-1, 12, (n, 3)),
        "click": click,
        "long_view": (click * rng.integers(0, 2, n)).astype(np.float32),
        "purchase": (click * rng.integers(0, 2, n)).astype(np.float32),
    }
    if scenario:
        cols["scenario"] = np.arange(n) % 3
    schema.validate(cols)
    return schema, build_tensors(schema, cols)


# -- forward / backward -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["aitm", "esmm", "aem2tl"])
def test_forward_backward_shapes(name):
    settings = {"chain": ["click", "purchase"]} if name == "aitm" else {}
    model, out = check_forward_backward(name, tiny(), embedding_dim=4, **settings)  # shapes, gradients everywhere
    if name == "aitm":
        assert set(out.aux_losses) == {"label_constraint"} and out.aux_losses["label_constraint"].dim() == 0
    else:
        assert out.extras["cvr"].shape == (48,) and ((out.extras["cvr"] > 0) & (out.extras["cvr"] < 1)).all()
    assert model.shared_parameters(), "gradient-based weightings need shared parameters"


@pytest.mark.parametrize(
    "name, kwargs, words",
    [
        ("esmm", {"cvr_task": "buy"}, ["cvr_task='buy'", "purchase"]),
        ("esmm", {"ctr_task": "purchase", "cvr_task": "purchase"}, ["must differ"]),
        ("aem2tl", {"ctr_task": "clk"}, ["ctr_task='clk'"]),
        ("aem2tl", {"prior_fields": ["user", "age"]}, ["prior_fields", "age"]),
        ("aitm", {"chain": ["click", "buy"]}, ["chain", "buy"]),
        ("aitm", {"chain": ["click"]}, ["at least two"]),
    ],
)
def test_bad_settings_are_one_line_config_errors(name, kwargs, words):
    schema, _ = tiny()
    with pytest.raises(ConfigError) as err:
        mtlbench.create_model(name, schema, embedding_dim=4, **kwargs)
    assert "\n" not in str(err.value)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("name", ["esmm", "aem2tl"])
def test_entire_space_models_refuse_a_click_conditional_conversion_label(name):
    """A CVR label that exists only on clicked rows is the biased label ESMM replaces: refused, not trained."""
    schema, _ = tiny()
    schema = replace(schema, tasks=["click", "cvr", "purchase"], conditional_tasks={"cvr": "click"})
    with pytest.raises(
        ConfigError,
        match=r"cvr_task names 'cvr', labelled only where 'click' is positive.*"
        r"entire-space conversion task is 'purchase'",
    ):
        mtlbench.create_model(name, schema, embedding_dim=4, cvr_task="cvr")
    narrowed = select_tasks(schema, ["click", "cvr"])  # no entire-space conversion task left
    assert narrowed.conditional_tasks == {"cvr": "click"} and narrowed.task_roles == {"click": "click"}
    with pytest.raises(ConfigError, match="labelled only where.*entire-space tasks of this dataset: \\['click'\\]"):
        mtlbench.create_model(name, narrowed, embedding_dim=4, cvr_task="cvr")
    with pytest.raises(ConfigError, match="needs the dataset's 'conversion' task role"):
        mtlbench.create_model(name, narrowed, embedding_dim=4)
    assert select_tasks(schema, ["click", "purchase"]).conditional_tasks == {}


@pytest.mark.parametrize("name", ["esmm", "aem2tl"])
def test_conversion_models_take_their_tasks_from_the_task_roles(name):
    schema, _ = tiny()
    model = mtlbench.create_model(name, schema, embedding_dim=4)
    assert (model.ctr_task, model.cvr_task) == ("click", "purchase")
    swapped = replace(schema, task_roles={"click": "long_view", "conversion": "purchase"})
    assert mtlbench.create_model(name, swapped, embedding_dim=4).ctr_task == "long_view"
    named = mtlbench.create_model(
        name, replace(schema, task_roles={}), embedding_dim=4, ctr_task="click", cvr_task="long_view"
    )  # the config's names win, roles or not
    assert (named.ctr_task, named.cvr_task) == ("click", "long_view")
    with pytest.raises(ConfigError) as err:
        mtlbench.create_model(name, replace(schema, task_roles={}), embedding_dim=4)
    assert "\n" not in str(err.value) and "needs the dataset's 'click' task role" in str(err.value)


def test_aitm_chain_defaults_to_the_funnel_roles_else_every_task_and_refuses_a_conditional_step():
    schema, _ = tiny()
    assert mtlbench.create_model("aitm", schema, embedding_dim=4).chain == ["click", "purchase"]
    assert mtlbench.create_model("aitm", replace(schema, task_roles={}), embedding_dim=4).chain == TASKS
    funnel = replace(schema, tasks=["click", "cvr", "purchase"], conditional_tasks={"cvr": "click"})
    with pytest.raises(ConfigError, match=r"chain names 'cvr', labelled only where 'click' is positive"):
        mtlbench.create_model("aitm", funnel, embedding_dim=4, chain=["click", "cvr"])
    assert mtlbench.create_model("aitm", funnel, embedding_dim=4, chain=["cvr", "purchase"]).chain[0] == "cvr"


def test_aem2tl_without_a_scenario_field_names_the_missing_field():
    schema, _ = tiny(scenario=False)
    with pytest.raises(ConfigError, match="needs a scenario field"):
        mtlbench.create_model("aem2tl", schema, embedding_dim=4)


# -- ESMM: the entire-space product -------------------------------------------------------------------


def test_ctcvr_logit_is_the_logit_of_the_product_and_stays_finite():
    assert ctcvr_logit(torch.tensor(0.0), torch.tensor(0.0)).item() == pytest.approx(math.log(1 / 3))  # p=1/4
    a = torch.tensor([-3.0, 0.5, 2.0, 8.0, -40.0], dtype=torch.float64)
    b = torch.tensor([1.0, -0.5, 4.0, -9.0, -40.0], dtype=torch.float64)
    log_p = F.logsigmoid(a) + F.logsigmoid(b)
    want = log_p - torch.log1p(-torch.exp(log_p))  # log(pCTR·pCVR) - log(1 - pCTR·pCVR), in float64
    assert torch.allclose(ctcvr_logit(a.float(), b.float()).double(), want, rtol=1e-5, atol=1e-5)
    # where 1 - p underflows even in float64 the formula above gives inf; by hand: 50 - log(1 + e^-10 + e^-60)
    big = ctcvr_logit(torch.tensor(60.0), torch.tensor(50.0))
    assert torch.isfinite(big) and big.item() == pytest.approx(50 - math.log1p(math.exp(-10) + math.exp(-60)))


def test_esmm_conversion_logit_is_pctr_times_pcvr_trained_over_all_impressions():
    schema, batch = tiny()
    model = mtlbench.create_model("esmm", schema, embedding_dim=4, tower=[8])
    out = model(batch)
    x = model.embedding.flat(batch)
    towers = dict(zip(TASKS, model.towers.towers))
    p_ctr = torch.sigmoid(towers["click"](x).squeeze(-1))
    p_cvr = torch.sigmoid(towers["purchase"](x).squeeze(-1))
    assert torch.allclose(torch.sigmoid(out.logits["click"]), p_ctr, atol=1e-6)
    assert torch.allclose(out.extras["cvr"], p_cvr, atol=1e-6)
    assert torch.allclose(torch.sigmoid(out.logits["purchase"]), p_ctr * p_cvr, atol=1e-6)  # Eq. 2
    # the module's BCE on the purchase logit is ESMM's CTCVR log loss over every impression (Eq. 3)
    y = batch["labels"][:, 2]
    pc = p_ctr * p_cvr
    ctcvr = -(y * torch.log(pc) + (1 - y) * torch.log(1 - pc)).mean()
    assert F.binary_cross_entropy_with_logits(out.logits["purchase"], y).item() == pytest.approx(ctcvr.item(), rel=1e-5)
    # the long_view task is an ordinary tower
    assert torch.allclose(out.logits["long_view"], towers["long_view"](x).squeeze(-1), atol=1e-6)


# -- AITM: transfer unit and calibrator --------------------------------------------------------------


def test_ait_unit_attends_over_transferred_and_own_representation():
    ait = AIT(2)
    with torch.no_grad():
        for h in (ait.h1, ait.h2):
            h.weight.copy_(torch.eye(2))
        ait.h3.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    p, q = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    # scores <h1(u), h2(u)>/sqrt(2): p -> 1/sqrt(2), q -> 4/sqrt(2); h3(p) = (2, 0), h3(q) = (0, 2)
    sp, sq = 1 / math.sqrt(2), 4 / math.sqrt(2)
    wp = math.exp(sp) / (math.exp(sp) + math.exp(sq))
    want = torch.tensor([[2.0 * wp, 2.0 * (1 - wp)]])
    assert torch.allclose(ait(p, q), want, atol=1e-6)


def test_label_constraint_penalises_only_later_steps_predicted_above_earlier_ones():
    click = torch.tensor([0.2, 0.5, 0.9])
    buy = torch.tensor([0.3, 0.1, 0.95])
    assert label_constraint([click, buy]).item() == pytest.approx((0.1 + 0.0 + 0.05) / 3)
    third = torch.tensor([0.5, 0.0, 0.0])
    assert label_constraint([click, buy, third]).item() == pytest.approx((0.1 + 0.05 + 0.2) / 3)


def test_aitm_transfers_along_the_chain_only_and_returns_the_weighted_calibrator():
    schema, batch = tiny()
    model = mtlbench.create_model(
        "aitm", schema, embedding_dim=4, tower=[6], chain=["click", "purchase"], calibrator_weight=0.6
    )
    out = model(batch)
    probs = [torch.sigmoid(out.logits[t]) for t in ("click", "purchase")]
    want = 0.6 * torch.relu(probs[1] - probs[0]).mean()
    assert out.aux_losses["label_constraint"].item() == pytest.approx(want.item(), rel=1e-6)
    with torch.no_grad():  # change the click tower: purchase (next in the chain) moves, long_view doesn't
        model.towers[0][0].weight.add_(0.5)
    after = model(batch).logits
    assert not torch.allclose(after["purchase"], out.logits["purchase"])
    assert torch.allclose(after["long_view"], out.logits["long_view"])
    no_calibrator = mtlbench.create_model("aitm", schema, embedding_dim=4, calibrator_weight=0.0)
    assert no_calibrator(batch).aux_losses == {}


# -- AEM2TL: scenario CGC, personalised gates, decomposition -----------------------------------------


def test_scenario_cgc_uses_each_rows_own_scenario_experts_and_gate():
    torch.manual_seed(0)
    cgc = ScenarioCGC(num_scenarios=3, in_dim=5, num_specific=2, num_shared=1, hidden=[4])
    x, scen = torch.randn(9, 5), torch.arange(9) % 3
    got = cgc(x, scen)
    spec = cgc.specific(x).view(9, 3, 2, 4)
    shared = cgc.shared(x)
    logits = cgc.gates(x).view(9, 3, 3)
    for i in range(9):  # by hand, row by row
        s = int(scen[i])
        experts = torch.cat([spec[i, s], shared[i]], 0)
        w = torch.softmax(logits[i, s], 0)
        assert torch.allclose(got[i], w @ experts, atol=1e-6)


def test_personalized_gate_scales_units_by_two_sigmoid_and_stops_the_gradient_into_the_gate_input():
    torch.manual_seed(0)
    tower = PersonalizedTower(in_dim=3, hidden=[4], prior_dim=2, gate_hidden=5, gate_scale=2.0)
    e, prior = torch.randn(6, 3, requires_grad=True), torch.randn(6, 2)
    delta = 2.0 * torch.sigmoid(tower.gate(torch.cat([prior, e], 1))).detach()  # PPNet gate, held constant
    d0, d1 = delta[:, :3], delta[:, 3:]
    want = tower.head(d1 * torch.relu(tower.layers[0](d0 * e))).squeeze(-1)
    got = tower(e, prior)
    assert torch.allclose(got, want, atol=1e-6)
    assert ((delta > 0) & (delta < 2)).all()
    (g_got,) = torch.autograd.grad(got.sum(), e)
    (g_want,) = torch.autograd.grad(want.sum(), e)
    assert torch.allclose(g_got, g_want, atol=1e-6)  # e reaches the gate only through stop_gradient
    with torch.no_grad():  # a gate that outputs logit 0 scales by 2·sigmoid(0) = 1: the plain tower
        tower.gate[-1].weight.zero_()
        tower.gate[-1].bias.zero_()
    plain = tower.head(torch.relu(tower.layers[0](e))).squeeze(-1)
    assert torch.allclose(tower(e, prior), plain, atol=1e-6)


def test_aem2tl_decomposes_conversion_over_the_entire_space_with_personalised_priors():
    schema, batch = tiny()
    model = mtlbench.create_model("aem2tl", schema, embedding_dim=4, tower=[6])
    assert model.prior_index == [0, 1, 2]  # default priors: the user, item and scenario fields
    out = model(batch)
    assert torch.allclose(
        torch.sigmoid(out.logits["purchase"]), torch.sigmoid(out.logits["click"]) * out.extras["cvr"], atol=1e-6
    )
    # by hand: embeddings -> Scenario-CGC -> Task-CGC -> gated towers; the click logit is its tower's output
    fields = model.embedding.fields(batch)
    x = torch.cat([fields.flatten(1), batch["numeric"]], 1)
    h = model.scenario_cgc(x, batch["scenario"])
    e, _ = model.task_cgc([h] * 3, h)
    prior = fields[:, [0, 1, 2]].flatten(1)
    assert torch.allclose(out.logits["click"], model.towers[0](e[0], prior), atol=1e-6)
    assert torch.allclose(out.extras["cvr"], torch.sigmoid(model.towers[2](e[2], prior)), atol=1e-6)
    only_item = mtlbench.create_model("aem2tl", schema, embedding_dim=4, tower=[6], prior_fields=["item"])
    assert only_item.prior_index == [1] and only_item.towers[0].gate[0].in_features == 4 + 128


# -- end to end ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["aitm", "esmm", "aem2tl"])
def test_cli_run_writes_per_task_and_per_scenario_metrics(tmp_path, name):
    out = tmp_path / "run"
    proc = run_cli([*TINY, f"model={name}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == name
    for task in TASKS:
        m = res["metrics"]["test"][task]
        assert 0.0 < m["auc"] < 1.0 and {"auc@scenario=0", "gauc@scenario=2", "sgauc"} <= set(m)
    if name in ("esmm", "aem2tl"):  # pCVR is reported on the clicked test rows
        preds = pq.read_table(out / "predictions.parquet").to_pydict()
        clicked = int((np.asarray(preds["label_click"]) == 1).sum())
        assert res["cvr"]["task"] == "purchase" and res["cvr"]["test"]["rows"] == clicked
        assert 0.0 < res["cvr"]["test"]["auc"] < 1.0
