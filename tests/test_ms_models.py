"""Multi-scenario models (STAR, PEPNet, SFPNet, BaseDNN): shapes, equations on hand examples, errors, CLI."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import mtlbench
from mtlbench.errors import ConfigError
from mtlbench.models.layers import FeatureEmbedding
from mtlbench.models.pepnet import GateNU
from mtlbench.models.sfpnet import (
    ResidualTailoringModule,
    ScenarioAdaptiveModule,
    ScenarioDNN,
    TargetAttention,
    distribution_pooling,
)
from mtlbench.models.star import PartitionedNorm, StarLinear
from mtlbench.testing import check_forward_backward
from mtlbench.testing import toy_data as toy  # also the fixture of test_ms_zoo_a / test_ms_zoo_b

from conftest import TINY, compose_cfg, run_cli

MS_MODELS = ["star", "pepnet", "sfpnet", "base_dnn"]


def bce(out, batch, schema):
    return sum(
        nn.functional.binary_cross_entropy_with_logits(out[t], batch["labels"][:, k])
        for k, t in enumerate(schema.tasks)
    )


# -- every model: shapes, gradients, single- and multi-task ------------------------------------------------
@pytest.mark.parametrize("name", MS_MODELS)
@pytest.mark.parametrize("tasks", [("click",), ("click", "buy", "fav")])
def test_forward_backward_shapes(name, tasks):
    """One finite [B] logit per task, single- and multi-task; a gradient on every parameter; finite in eval."""
    model, out = check_forward_backward(name, toy(32, tasks), embedding_dim=4)
    assert list(out.logits) == list(tasks) and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", MS_MODELS)
def test_scenario_changes_the_prediction(name):
    """The scenario id is used: the same row in another scenario gets another score."""
    torch.manual_seed(0)
    schema, batch = toy(16)
    model = mtlbench.create_model(name, schema, embedding_dim=4).eval()
    other = dict(batch)
    other["categorical"] = batch["categorical"].clone()
    other["categorical"][:, 2] = (batch["categorical"][:, 2] + 1) % 3
    other["scenario"] = other["categorical"][:, 2]
    with torch.no_grad():
        a, b = model(batch)["click"], model(other)["click"]
    assert (a - b).abs().min() > 1e-6


# -- missing fields and bad settings -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["star", "pepnet", "sfpnet", "base_dnn"])
def test_model_without_scenario_field_names_it(name):
    schema, _ = toy(8, scenario=False)
    with pytest.raises(ConfigError, match=r"needs a scenario field; dataset 'toy' has none"):
        mtlbench.create_model(name, schema)


def test_sfpnet_without_sequence_names_it():
    schema, _ = toy(8, sequence=False)
    with pytest.raises(ConfigError, match=r"model SFPNet needs a sequence field; dataset 'toy' has none"):
        mtlbench.create_model("sfpnet", schema)
    mtlbench.create_model("star", schema, embedding_dim=4)  # the others don't need one


@pytest.mark.parametrize(
    "name, settings, words",
    [
        ("sfpnet", {"sequence": "clicks"}, "sequence 'clicks' is not a sequence field"),
        ("sfpnet", {"num_blocks": 2, "block_dims": [8]}, "one width per block"),
        ("sfpnet", {"tower_type": "moe"}, "tower_type"),
        ("pepnet", {"prior_fields": ["author"]}, "prior_fields ['author']"),
        ("pepnet", {"epnet_granularity": "dim"}, "epnet_granularity"),
        ("star", {"aux_fields": ["page"]}, "aux_fields ['page']"),
    ],
)
def test_bad_settings_are_one_line_config_errors(name, settings, words):
    schema, _ = toy(8)
    with pytest.raises(ConfigError) as err:
        mtlbench.create_model(name, schema, **settings)
    assert words in str(err.value) and "\n" not in str(err.value)


# -- STAR ----------------------------------------------------------------------------------------------------
def test_star_linear_is_shared_weight_times_scenario_weight_plus_bias_sum():
    layer = StarLinear(2, 2, num_scenarios=2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # W
        layer.bias.copy_(torch.tensor([0.5, -0.5]))  # b
        layer.scenario_weight.copy_(
            torch.tensor(
                [
                    [[1.0, 0.0], [0.0, 1.0]],  # W_0
                    [[2.0, 2.0], [-1.0, 0.5]],
                ]
            )
        )  # W_1
        layer.scenario_bias.copy_(torch.tensor([[0.0, 1.0], [10.0, 20.0]]))  # b_0, b_1
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    p = torch.tensor([0, 1, 1])
    # scenario 0: W ⊙ W_0 = [[1, 0], [0, 4]];  scenario 1: W ⊙ W_1 = [[2, 4], [-3, 2]]
    want = torch.tensor(
        [
            [1 + 0 + 0.5 + 0.0, 0 + 4 - 0.5 + 1.0],
            [2 - 3 + 0.5 + 10.0, 4 + 2 - 0.5 + 20.0],
            [4 + 0.5 + 10.0, 8 - 0.5 + 20.0],
        ]
    )
    assert torch.allclose(layer(x, p), want)
    w, b = layer.effective()
    assert torch.allclose(w[1], torch.tensor([[2.0, 4.0], [-3.0, 2.0]]))
    assert torch.allclose(b[0], torch.tensor([0.5, 0.5]))


def test_partitioned_norm_uses_each_rows_scenario_statistics_and_parameters():
    pn = PartitionedNorm(1, num_scenarios=3, momentum=0.5, eps=0.0)
    with torch.no_grad():
        pn.gamma.fill_(2.0)
        pn.beta.fill_(1.0)
        pn.gamma_p.copy_(torch.tensor([[1.0], [3.0], [5.0]]))
        pn.beta_p.copy_(torch.tensor([[0.0], [10.0], [100.0]]))
    z = torch.tensor([[1.0], [3.0], [10.0], [20.0], [30.0]])
    p = torch.tensor([0, 0, 1, 1, 1])
    out = pn(z, p)
    # scenario 0: mean 2, var 1 -> ±1;  scenario 1: mean 20, var 200/3 -> (z - 20)/sqrt(200/3)
    s1 = math.sqrt(200 / 3)
    want = torch.tensor(
        [
            [2 * 1 * -1 + 1 + 0],
            [2 * 1 * 1 + 1 + 0],
            [2 * 3 * (-10 / s1) + 1 + 10],
            [2 * 3 * 0 + 1 + 10],
            [2 * 3 * (10 / s1) + 1 + 10],
        ]
    )
    assert torch.allclose(out, want, atol=1e-5)
    # moving averages of the scenarios present (unbiased variance), scenario 2 untouched
    assert torch.allclose(pn.running_mean[:, 0], torch.tensor([0.5 * 2, 0.5 * 20, 0.0]))
    assert torch.allclose(pn.running_var[:, 0], torch.tensor([0.5 + 0.5 * 2.0, 0.5 + 0.5 * 100.0, 1.0]))
    pn.eval()
    got = pn(torch.tensor([[4.0], [4.0]]), torch.tensor([1, 2]))
    want_eval = torch.tensor([[2 * 3 * (4 - 10) / math.sqrt(50.5) + 11], [2 * 5 * 4 + 101]])
    assert torch.allclose(got, want_eval, atol=1e-5)


def test_star_logit_is_tower_plus_auxiliary_network():
    torch.manual_seed(0)
    schema, batch = toy(16)
    model = mtlbench.create_model("star", schema, embedding_dim=4, partition_norm=False).eval()
    assert model.aux_fields == ["scenario"]
    p = batch["scenario"]
    h = model.star(model.embedding.flat(batch), p)
    aux_in = model.embedding.table(batch["categorical"][:, 2] + model.embedding.offset_of["scenario"])
    out = model(batch)
    for k, t in enumerate(schema.tasks):
        assert torch.allclose(out[t], model.towers[k](h, p).squeeze(-1) + model.aux(aux_in)[:, k], atol=1e-6)


def test_star_scenario_weights_start_neutral_and_specialise():
    """At initialisation every scenario computes the shared network (W_p = 1, b_p = 0)."""
    layer = StarLinear(3, 2, num_scenarios=3)
    x = torch.randn(6, 3)
    same = layer(x, torch.zeros(6, dtype=torch.long))
    assert torch.allclose(layer(x, torch.tensor([0, 1, 2, 0, 1, 2])), same)
    assert torch.allclose(same, x @ layer.weight + layer.bias)


# -- PEPNet --------------------------------------------------------------------------------------------------
def test_gate_nu_is_two_times_sigmoid():
    gate = GateNU(2, 2, hidden=2)
    with torch.no_grad():
        gate.hidden.weight.copy_(torch.eye(2))
        gate.hidden.bias.zero_()
        gate.out.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        gate.out.bias.zero_()
    x = torch.tensor([[0.0, 0.0], [3.0, -1.0], [50.0, 50.0]])
    # ReLU(x) -> [0,0], [3,0], [50,50]; logits [0,0], [3,0], [50,-50]
    want = 2 * torch.sigmoid(torch.tensor([[0.0, 0.0], [3.0, 0.0], [50.0, -50.0]]))
    assert torch.allclose(gate(x), want)
    assert torch.allclose(gate(x)[0], torch.ones(2)) and gate(x)[2, 0] > 1.99 and gate(x)[2, 1] < 0.01


def test_pepnet_epnet_scales_the_embedding_and_stops_its_gradient():
    torch.manual_seed(0)
    schema, batch = toy(8)
    model = mtlbench.create_model("pepnet", schema, embedding_dim=4, tower=[8])
    o_ep, delta = model.epnet_forward(batch)
    e = model.embedding.flat(batch)
    e_d = model.embedding.table(batch["categorical"][:, 2] + model.embedding.offset_of["scenario"])
    g = model.epnet
    want_delta = 2 * torch.sigmoid(g.out(torch.relu(g.hidden(torch.cat([e_d, e], 1)))))
    assert torch.allclose(delta, want_delta, atol=1e-6) and torch.allclose(o_ep, delta * e, atol=1e-6)
    # ⊘(E): the gate's gradient reaches the scenario rows (F_d) but no other embedding row
    delta.sum().backward()
    grad = model.embedding.table.weight.grad
    scen = model.embedding.offset_of["scenario"] + batch["categorical"][:, 2].unique()
    assert grad[scen].abs().sum() > 0
    others = torch.ones(len(grad), dtype=torch.bool)
    others[scen] = False
    assert grad[others].abs().sum() == 0


def test_pepnet_ppnet_gates_each_task_layer_from_priors_with_stopped_o_ep():
    torch.manual_seed(0)
    schema, batch = toy(8)
    model = mtlbench.create_model("pepnet", schema, embedding_dim=4, tower=[8, 4])
    o_ep, _ = model.epnet_forward(batch)
    gates = model.ppnet_gates(batch, o_ep)
    assert [g.shape for g in gates] == [(8, 2, o_ep.shape[1]), (8, 2, 8), (8, 2, 4)]
    assert all(((g > 0) & (g < 2)).all() for g in gates)
    # the gates' gradient reaches the prior fields' rows (user, item) but not EPNet nor other rows
    sum(g.sum() for g in gates).backward()
    assert all(p.grad is None for p in model.epnet.parameters())
    grad = model.embedding.table.weight.grad
    prior = torch.cat([batch["categorical"][:, 0], 20 + batch["categorical"][:, 1]]).unique()
    assert grad[prior].abs().sum() > 0
    rest = torch.ones(len(grad), dtype=torch.bool)
    rest[prior] = False
    assert grad[rest].abs().sum() == 0
    # each task's tower: H^(l+1) = ReLU((δ_t^(l) ⊗ H^(l)) W + b), logit layer gated too
    with torch.no_grad():
        out = model(batch)
        for k, t in enumerate(schema.tasks):
            lin = model.towers[k]
            h = torch.relu(lin[0](gates[0][:, k] * o_ep))
            h = torch.relu(lin[1](gates[1][:, k] * h))
            assert torch.allclose(out[t], lin[2](gates[2][:, k] * h).squeeze(-1), atol=1e-6)


def test_pepnet_field_granularity_gives_one_gate_per_field():
    torch.manual_seed(0)
    schema, batch = toy(8)
    model = mtlbench.create_model("pepnet", schema, embedding_dim=4, epnet_granularity="field")
    _, delta = model.epnet_forward(batch)
    # fields user, item, scenario, hist (4 values each), then the numeric price (1 value)
    blocks = delta[:, :16].view(8, 4, 4)
    assert torch.allclose(blocks, blocks[:, :, :1].expand_as(blocks)) and delta.shape == (8, 17)


# -- SFPNet --------------------------------------------------------------------------------------------------
def test_distribution_aware_pooling_is_masked_mean_and_std():
    v = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]],  # two real behaviours, one PAD
            [[5.0, -1.0], [7.0, 7.0], [9.0, 9.0]],  # one real behaviour
            [[4.0, 4.0], [4.0, 4.0], [4.0, 4.0]],
        ]
    )  # none
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    out = distribution_pooling(v, mask, eps=1e-6)
    assert out.shape == (3, 2, 2)
    assert torch.allclose(out[0, 0], torch.tensor([2.0, 4.0]))  # mean
    assert torch.allclose(out[0, 1], torch.sqrt(torch.tensor([1.0, 4.0]) + 1e-6))  # sqrt(E[b²] − E[b]²)
    assert torch.allclose(out[1, 0], torch.tensor([5.0, -1.0]))
    assert torch.allclose(out[1, 1], torch.full((2,), 1e-3))
    assert torch.allclose(out[2, 0], torch.zeros(2))
    # Eq. 2 as written: sqrt(mean of squares − square of mean)
    b = v[0, :2]
    assert torch.allclose(out[0, 1], torch.sqrt((b**2).mean(0) - b.mean(0) ** 2 + 1e-6))
    # finite gradients even for zero variance; padded positions get none
    v.requires_grad_(True)
    distribution_pooling(v, mask).sum().backward()
    assert torch.isfinite(v.grad).all() and (v.grad[~mask] == 0).all() and (v.grad[mask] != 0).any()


def test_sam_gate_has_layernorm_and_reweights_features_and_pooled_sequence():
    torch.manual_seed(0)
    sam = ScenarioAdaptiveModule(num_fields=2, dim=3, scenario_dim=3, hidden=5)
    x, v, s = torch.randn(4, 2, 3), torch.randn(4, 5, 3), torch.randn(4, 3)
    mask = torch.rand(4, 5) > 0.3
    out = sam(x, v, mask, s)
    pooled = distribution_pooling(v, mask)
    feats = torch.cat([x, pooled], 1).flatten(1)
    hidden = torch.relu(torch.cat([feats, s], 1) @ sam.w0.weight.T + sam.w0.bias)
    normed = (hidden - hidden.mean(1, keepdim=True)) / torch.sqrt(hidden.var(1, unbiased=False, keepdim=True) + 1e-5)
    a = torch.sigmoid(normed @ sam.w1.weight.T + sam.w1.bias)  # Eq. 3 (LN at its init)
    assert torch.allclose(out.flatten(1), feats * a, atol=1e-5)  # Eq. 4


def test_residual_tailoring_of_features_and_every_behaviour():
    rtm = ResidualTailoringModule(num_fields=1, d_in=2, d_out=2, hidden=3)
    with torch.no_grad():
        for p in rtm.parameters():
            p.zero_()
        rtm.w3.bias.copy_(torch.tensor([1.0, 2.0, 10.0, 20.0, 100.0, 200.0]))  # C = [c_1 | c_B,mean | c_B,std]
        rtm.wx1.copy_(torch.eye(2).unsqueeze(0))  # W_{x,1} = I
        rtm.w4.weight.copy_(torch.eye(2))  # W_4 = I
        rtm.w5.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0]]))
        rtm.w5.bias.copy_(torch.tensor([0.0, 100.0]))  # σ = [0.5, 1]
    x_hat = torch.tensor([[[3.0, -1.0], [0.0, 0.0], [0.0, 0.0]]])  # x̂_1, B slots
    v = torch.tensor([[[1.0, -2.0], [-4.0, 5.0]]])
    x, v_new = rtm(x_hat, x_hat[:, :1], v)
    # Eq. 6: ReLU(I x̂ + 0) + σ(0) ⊗ c_1 = [3, 0] + 0.5 [1, 2]
    assert torch.allclose(x, torch.tensor([[[3.5, 1.0]]]))
    # Eq. 7: ReLU(v) + σ(W_5 v + b_5) ⊗ c_b, c_b = [10, 20] + [100, 200]; each behaviour on its own
    c_b = torch.tensor([110.0, 220.0])
    want = torch.stack([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 5.0])]) + torch.tensor([0.5, 1.0]) * c_b
    assert torch.allclose(v_new, want.unsqueeze(0))


def test_din_attention_ignores_padding():
    torch.manual_seed(0)
    att = TargetAttention(3, [4])
    v, q = torch.randn(2, 4, 3), torch.randn(2, 3)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    w = att.weights(v, mask, q)
    assert (w[~mask] == 0).all()
    unit = att.unit(torch.cat([v, q[:, None].expand_as(v), v - q[:, None], v * q[:, None]], -1)).squeeze(-1)
    assert torch.allclose(att(v, mask, q), ((unit * mask)[..., None] * v).sum(1), atol=1e-6)
    soft = TargetAttention(3, [4], softmax=True).weights(v, mask, q)
    assert torch.allclose(soft.sum(1), torch.ones(2)) and (soft[~mask] == 0).all()


def test_sdnn_layers_are_scenario_gated():
    torch.manual_seed(0)
    net = ScenarioDNN(4, 2, [3], gate_hidden=5)
    h, s = torch.randn(6, 4), torch.randn(6, 2)
    g = net.gates[0]
    a = torch.sigmoid(g[3](g[2](torch.relu(g[0](torch.cat([h, s], 1))))))  # Eq. 10
    h1 = torch.relu(net.layers[0](h * a))  # Eq. 11
    assert torch.allclose(net(h, s), net.out(h1).squeeze(-1), atol=1e-6)
    assert isinstance(g[2], nn.LayerNorm)


def test_sfpnet_padding_does_not_change_the_prediction_but_behaviours_do():
    torch.manual_seed(0)
    schema, batch = toy(16)
    model = mtlbench.create_model("sfpnet", schema, embedding_dim=4).eval()
    longer = dict(batch)
    longer["seq:hist"] = torch.cat([batch["seq:hist"], torch.full((16, 3), -1)], dim=1)  # more PAD
    changed = dict(batch)
    changed["seq:hist"] = batch["seq:hist"].clone()
    real = batch["seq:hist"][:, 0] >= 0
    changed["seq:hist"][:, 0] = torch.where(real, (batch["seq:hist"][:, 0] + 1) % 30, -1)
    with torch.no_grad():
        base, pad, other = (model.encode(b)[0] for b in (batch, longer, changed))  # H^1, before the towers
        assert torch.allclose(base, pad, atol=1e-6, rtol=0)
        moved = (base - other).abs().amax(1)
        assert (moved[real] > 1e-5).all() and (moved[~real] == 0).all() and (~real).any()
        assert torch.allclose(model(batch)["click"], model(longer)["click"], atol=1e-6, rtol=0)


def test_sfpnet_blocks_stack_and_single_task_form_is_one_sdnn():
    torch.manual_seed(0)
    schema, batch = toy(16, tasks=("click",))
    model = mtlbench.create_model("sfpnet", schema, embedding_dim=4, num_blocks=2, block_dims=[6, 5])
    assert len(model.blocks) == 2 and len(model.towers) == 1 and isinstance(model.towers[0], ScenarioDNN)
    x, v, mask, s = model.inputs(batch)
    assert x.shape == (16, 3, 4) and v.shape == (16, 4, 4)  # user, item, price; 4 behaviours
    assert torch.equal(mask, batch["seq:hist"] >= 0)
    for block, width in zip(model.blocks, [6, 5]):
        x, v = block(x, v, mask, s)
        assert x.shape == (16, 3, width) and v.shape == (16, 4, width)
    h = torch.cat([x.flatten(1), model.attention(v, mask, x[:, 1])], 1)  # item is field 1
    assert torch.allclose(model(batch)["click"], model.towers[0](h, s), atol=1e-6)


def test_sfpnet_tailor_input_reading_changes_eq6_input():
    torch.manual_seed(0)
    schema, batch = toy(8)
    a = mtlbench.create_model("sfpnet", schema, embedding_dim=4, num_blocks=1)
    b = mtlbench.create_model("sfpnet", schema, embedding_dim=4, num_blocks=1, tailor_input="previous")
    b.load_state_dict(a.state_dict())
    x, v, mask, s = a.inputs(batch)
    x_hat = a.blocks[0].sam(x, v, mask, s)
    assert torch.allclose(a.blocks[0](x, v, mask, s)[0], a.blocks[0].rtm(x_hat, x_hat[:, :3], v)[0])
    assert torch.allclose(b.blocks[0](x, v, mask, s)[0], b.blocks[0].rtm(x_hat, x, v)[0])


# -- BaseDNN --------------------------------------------------------------------------------------------------
def test_base_dnn_is_one_shared_dnn_with_the_scenario_as_input():
    torch.manual_seed(0)
    schema, batch = toy(16)
    model = mtlbench.create_model("base_dnn", schema, embedding_dim=4, dnn=[8], tower=[4])
    emb = model.embedding
    assert "scenario" in emb.field_names
    flat = emb.flat(batch)
    assert torch.allclose(flat[:, 8:12], emb.table(batch["categorical"][:, 2] + emb.offset_of["scenario"]))
    h = model.dnn(flat)
    out = model(batch)
    for k, t in enumerate(schema.tasks):
        assert torch.allclose(out[t], model.towers.towers[k](h).squeeze(-1), atol=1e-6)
    # nothing scenario-specific: parameters = embeddings + one DNN + towers
    assert sum(p.numel() for p in model.parameters()) == (
        emb.table.weight.numel()
        + sum(p.numel() for p in model.dnn.parameters())
        + sum(p.numel() for p in model.towers.parameters())
    )


# -- data layer: sequences with padding masks ------------------------------------------------------------------
def test_lifecycle_sequence_reaches_the_models_with_its_padding_mask(tmp_path):
    from mtlbench.data.datamodule import MultiTaskDataModule

    dm = MultiTaskDataModule(
        "lifecycle", {"n_rows": 3000, "n_users": 200, "n_items": 100}, batch_size=256, cache_dir=str(tmp_path)
    )
    schema = dm.load()
    batch = next(iter(dm.train_dataloader()))
    ids = batch["seq:hist_items"]
    assert ids.dtype == torch.int64 and ids.shape == (256, schema.feature("hist_items").max_len)
    assert (ids == -1).any() and (ids >= 0).any() and ids.min() >= -1
    emb, mask = FeatureEmbedding(schema, 4).sequence(batch, "hist_items")
    assert torch.equal(mask, ids >= 0) and emb.shape == (*ids.shape, 4)
    model = mtlbench.create_model("sfpnet", schema, embedding_dim=4)
    out = model(batch)
    assert list(out) == schema.tasks and all(torch.isfinite(v).all() for v in out.values())


# -- end to end -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_runs_every_multi_scenario_model_with_per_scenario_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY, f"model={','.join(MS_MODELS)}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {json.loads(p.read_text())["model"]: json.loads(p.read_text()) for p in sweep.rglob("results.json")}
    assert sorted(results) == sorted(MS_MODELS)
    for name, res in results.items():
        for task in ("click", "long_view", "purchase"):
            m = res["metrics"]["test"][task]
            assert {"auc@scenario=0", "auc@scenario=1", "auc@scenario=2", "gauc@scenario=0", "sgauc"} <= set(m)
            assert 0.0 < m["auc"] < 1.0, (name, task)


@pytest.mark.slow
def test_cli_model_missing_field_is_one_line_error(tmp_path):
    """SFPNet on a table without a sequence: the CLI prints one line naming the field, exits non-zero."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    path = tmp_path / "log.parquet"
    pq.write_table(
        pa.table(
            {
                "u": rng.integers(0, 5, 200),
                "s": rng.integers(0, 2, 200),
                "y": rng.integers(0, 2, 200).astype(np.float32),
            }
        ),
        path,
    )
    proc = run_cli(
        [
            "dataset=table",
            f"dataset.path={path}",
            "dataset.tasks=[y]",
            "+dataset.categorical={u: {vocab_size: 5, role: user}, s: {vocab_size: 2}}",
            "dataset.user_field=u",
            "dataset.scenario_field=s",
            "model=sfpnet",
            "trainer.max_epochs=1",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    err = [line for line in proc.stderr.splitlines() if line.startswith("mtlbench: error:")]
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "model SFPNet needs a sequence field; dataset 'log' has none" in err[0]
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow
def test_sfpnet_single_task_ctr_run_end_to_end(tmp_path):
    """The paper's form: SFPNet on a click-only multi-scenario dataset, trained and evaluated in-process."""
    from mtlbench.datasets.lifecycle import LifecycleSimulator
    from mtlbench.registry import DATASETS, register_dataset
    from mtlbench.training.run import train

    if "lifecycle_ctr_test" not in DATASETS:

        @register_dataset("lifecycle_ctr_test")
        class ClickOnly(LifecycleSimulator):
            def build(self):
                schema, cols = super().build()
                for t in schema.tasks[1:]:
                    cols.pop(t)
                schema.tasks = schema.tasks[:1]
                schema.task_roles = {r: t for r, t in schema.task_roles.items() if t in schema.tasks}
                return schema, cols

    cfg = compose_cfg([*TINY, "model=sfpnet", "predictions=false"])
    cfg.dataset.name = "lifecycle_ctr_test"
    res = train(cfg, tmp_path / "run")
    assert list(res["metrics"]["test"]) == ["click"]
    m = res["metrics"]["test"]["click"]
    assert {"auc@scenario=0", "auc@scenario=1", "auc@scenario=2"} <= set(m) and 0.5 < m["auc"] < 1.0
