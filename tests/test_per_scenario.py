"""shared_bottom / mmoe / ple with ``per: task | scenario | task_scenario``: per=task is the original model
bit for bit; per-scenario slots are picked by the row's scenario and isolated from other scenarios."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import mtlbench
from mtlbench.data.rows import build_tensors
from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.errors import ConfigError
from mtlbench.factory import create_weighting
from mtlbench.models import as_output
from mtlbench.models.backbones import PLEBackbone
from mtlbench.models.layers import MLP, ExpertGroup, FeatureEmbedding, ScenarioTowers, Towers

from conftest import FAST, run_cli

MODELS = ["shared_bottom", "mmoe", "ple"]
SMALL = {
    "shared_bottom": {"bottom": (8, 6), "tower": (5,)},
    "mmoe": {"num_experts": 3, "expert": (8, 6), "tower": (5,)},
    "ple": {"num_levels": 2, "num_specific_experts": 2, "num_shared_experts": 2, "expert": (8, 6), "tower": (5,)},
}
S = 3


def toy(n=48, tasks=("click", "buy"), scenario=True, seed=0):
    rng = np.random.default_rng(seed)
    feats = [
        Feature("user", "categorical", 20, "user"),
        Feature("item", "categorical", 30, "item"),
        Feature("price", "numeric"),
    ]
    cols = {"user": rng.integers(0, 20, n), "item": rng.integers(0, 30, n), "price": rng.random(n).astype(np.float32)}
    if scenario:
        feats.append(Feature("scenario", "categorical", S))
        cols["scenario"] = np.arange(n) % S
    for t in tasks:
        cols[t] = rng.integers(0, 2, n).astype(np.float32)
    schema = DatasetSchema(
        "toy",
        feats,
        tasks=list(tasks),
        user_field="user",
        item_field="item",
        scenario_field="scenario" if scenario else None,
    )
    schema.validate(cols)
    return schema, build_tensors(schema, cols)


def build(name, schema, seed=0, **kw):
    torch.manual_seed(seed)
    model = mtlbench.create_model(name, schema, embedding_dim=4, **SMALL[name], **kw)
    return model.eval()


def rows(batch, keep):
    return {k: v[keep] for k, v in batch.items()}


def loss_of(out, batch, schema, tasks=None):
    return sum(
        nn.functional.binary_cross_entropy_with_logits(out[t], batch["labels"][:, k])
        for k, t in enumerate(schema.tasks)
        if tasks is None or t in tasks
    )


def grads(model, batch, schema, tasks=None):
    model.zero_grad()
    loss_of(model(batch), batch, schema, tasks).backward()
    return {n: (torch.zeros_like(p) if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


# -- per=task: the original model -------------------------------------------------------------------------------
def reference(name, schema, **kw):
    """The original models rebuilt by hand from their parts, in their creation order (same seed -> same init)."""
    c = {**SMALL[name], **kw}
    torch.manual_seed(0)
    emb = FeatureEmbedding(schema, 4)
    d, k = emb.output_dim, len(schema.tasks)
    if name == "shared_bottom":
        bottom = MLP(d, list(c["bottom"]))
        return {"embedding": emb, "bottom": bottom, "towers": Towers(schema.tasks, bottom.out_dim, list(c["tower"]))}
    if name == "mmoe":
        experts = ExpertGroup(c["num_experts"], d, list(c["expert"]))
        return {
            "embedding": emb,
            "backbone.experts": experts,
            "backbone.gates": nn.Linear(d, c["num_experts"] * k),
            "towers": Towers(schema.tasks, experts.out_dim, list(c["tower"])),
        }
    backbone = PLEBackbone(k, d, c["num_levels"], c["num_specific_experts"], c["num_shared_experts"], list(c["expert"]))
    return {"embedding": emb, "backbone": backbone, "towers": Towers(schema.tasks, backbone.out_dim, list(c["tower"]))}


def reference_forward(name, parts, batch, k):
    x = parts["embedding"].flat(batch)
    if name == "shared_bottom":
        return parts["towers"]([parts["bottom"](x)] * k)
    if name == "mmoe":
        e = parts["backbone.experts"](x)
        g = torch.softmax(parts["backbone.gates"](x).view(len(x), k, -1), dim=-1)
        return parts["towers"]([torch.einsum("be,beh->bh", g[:, i], e) for i in range(k)])
    return parts["towers"](parts["backbone"](x))


@pytest.mark.parametrize("name", MODELS)
def test_per_task_is_the_original_model_with_the_same_init_and_outputs(name):
    schema, batch = toy()
    model = build(name, schema, per="task")
    default = build(name, schema)
    parts = reference(name, schema)
    want = {f"{m}.{n}": v for m, part in parts.items() for n, v in part.state_dict().items()}
    got = model.state_dict()
    assert list(got) == list(want) == list(default.state_dict())
    assert all(torch.equal(got[n], want[n]) for n in want), "same seed, same init, same parameter order"
    out, ref, base = model(batch), reference_forward(name, parts, batch, len(schema.tasks)), default(batch)
    for t in schema.tasks:
        assert torch.equal(out[t], base[t])
        torch.testing.assert_close(out[t], ref[t])
    assert model.required_fields == () and type(model).required_fields == ()


@pytest.mark.parametrize("name", MODELS)
def test_per_task_needs_no_scenario_field(name):
    schema, batch = toy(scenario=False)
    out = build(name, schema)(batch)
    assert list(out) == schema.tasks


# -- per=scenario / task_scenario -------------------------------------------------------------------------------
def slots(name, model):
    """{slot: [(parameter name, index into that parameter)]} of every slot-specific parameter."""
    n = model.towers.n
    out = {j: [("towers.weight", j), ("towers.bias", j)] for j in range(n)}
    for j in range(n):
        out[j] += [
            (f"towers.hidden.{w}.{i}", j)
            for w in ("weights", "biases")
            for i in range(len(model.towers.hidden.weights))
        ]
    if name == "mmoe":
        e = model.num_experts
        for j in range(n):
            rows = slice(j * e, (j + 1) * e)
            out[j] += [("backbone.gates.weight", rows), ("backbone.gates.bias", rows)]
    if name == "ple":
        levels = model.backbone.levels
        for j in range(n):
            for li in range(len(levels)):
                out[j] += [(f"backbone.levels.{li}.task_gates.{j}.{p}", slice(None)) for p in ("weight", "bias")]
            # the last level's specific experts (earlier ones also feed the shared gate, hence every slot)
            last = len(levels) - 1
            out[j] += [
                (n_, slice(None))
                for n_, _ in model.named_parameters()
                if n_.startswith(f"backbone.levels.{last}.specific.{j}.")
            ]
    return out


def slot_grad_norm(g, entries):
    return sum(float(g[n][i].abs().sum()) for n, i in entries)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("per", ["scenario", "task_scenario"])
def test_slot_counts(name, per):
    schema, _ = toy()
    model = build(name, schema, per=per)
    k = len(schema.tasks)
    n = S if per == "scenario" else k * S
    assert isinstance(model.towers, ScenarioTowers) and model.towers.n == n
    assert model.towers.weight.shape[-1] == (k if per == "scenario" else 1)
    if name == "mmoe":
        assert model.backbone.gates.out_features == model.num_experts * n
    if name == "ple":
        assert all(len(level.specific) == len(level.task_gates) == n for level in model.backbone.levels)
    assert model.required_fields == ("scenario",) and type(model).required_fields == ()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("per", ["scenario", "task_scenario"])
def test_a_rows_scenario_id_picks_its_slot(name, per):
    schema, batch = toy()
    model = build(name, schema, per=per)
    with torch.no_grad():
        before = model(batch)
        moved = dict(batch, scenario=batch["scenario"].clone())
        moved["scenario"][0] = (moved["scenario"][0] + 1) % S  # only the slot id; the scenario embedding stays
        after = model(moved)
    for t in schema.tasks:
        assert not torch.isclose(before[t][0], after[t][0]), t
        assert torch.equal(before[t][1:], after[t][1:])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("per", ["scenario", "task_scenario"])
def test_rows_of_one_scenario_do_not_train_other_scenarios_slots(name, per):
    schema, batch = toy()
    model = build(name, schema, per=per)
    table = slots(name, model)
    k = len(schema.tasks)
    for s in range(S):
        g = grads(model, rows(batch, batch["scenario"] == s), schema)
        for j, entries in table.items():
            scenario = j if per == "scenario" else j % S
            norm = slot_grad_norm(g, entries)
            assert (norm > 0) if scenario == s else (norm == 0.0), (s, j)
    if per == "task_scenario":  # task k's loss on scenario s rows trains slot (k, s) only
        for ti, t in enumerate(schema.tasks):
            g = grads(model, rows(batch, batch["scenario"] == 1), schema, tasks=[t])
            for j in range(k * S):
                norm = slot_grad_norm(g, table[j])
                assert (norm > 0) if j == ti * S + 1 else (norm == 0.0), (t, j)


def tower(model, j, x):
    """Slot j's tower by hand: the ExpertGroup's hidden layers, then the output layer."""
    h = model.towers.hidden
    for w, b in zip(h.weights, h.biases):
        x = torch.relu(x @ w[j] + b[j][0])
    return x @ model.towers.weight[j] + model.towers.bias[j][0]


@pytest.mark.parametrize("per", ["scenario", "task_scenario"])
def test_shared_bottom_slots_by_hand(per):
    schema, batch = toy(tasks=("click", "buy", "fav"))
    model = build("shared_bottom", schema, per=per)
    k = len(schema.tasks)
    with torch.no_grad():
        out = model(batch)
        h = model.bottom(model.embedding.flat(batch))
        for r in (0, 1, 2, 7):
            s = int(batch["scenario"][r])
            want = (
                tower(model, s, h[r])
                if per == "scenario"
                else torch.cat([tower(model, ti * S + s, h[r]) for ti in range(k)])
            )
            torch.testing.assert_close(torch.stack([out[t][r] for t in schema.tasks]), want)


@pytest.mark.parametrize("per", ["scenario", "task_scenario"])
def test_mmoe_slots_by_hand(per):
    schema, batch = toy(tasks=("click", "buy", "fav"))
    model = build("mmoe", schema, per=per)
    k, e = len(schema.tasks), model.num_experts
    with torch.no_grad():
        out = model(batch)
        x = model.embedding.flat(batch)
        experts = model.backbone.experts(x)
        w, b = model.backbone.gates.weight, model.backbone.gates.bias
        for r in (0, 1, 2, 7):
            s = int(batch["scenario"][r])
            got = torch.stack([out[t][r] for t in schema.tasks])
            if per == "scenario":
                gate = torch.softmax(x[r] @ w[s * e : (s + 1) * e].T + b[s * e : (s + 1) * e], dim=-1)
                torch.testing.assert_close(got, tower(model, s, gate @ experts[r]))
            else:
                for ti in range(k):
                    j = ti * S + s
                    gate = torch.softmax(x[r] @ w[j * e : (j + 1) * e].T + b[j * e : (j + 1) * e], dim=-1)
                    torch.testing.assert_close(got[ti], tower(model, j, gate @ experts[r])[0])


@pytest.mark.parametrize("per", ["scenario", "task_scenario"])
def test_ple_slots_by_hand(per):
    schema, batch = toy(tasks=("click", "buy", "fav"))
    model = build("ple", schema, per=per)
    k = len(schema.tasks)
    with torch.no_grad():
        out = model(batch)
        reps = model.backbone(model.embedding.flat(batch))
        for r in (0, 1, 2, 7):
            s = int(batch["scenario"][r])
            got = torch.stack([out[t][r] for t in schema.tasks])
            want = (
                tower(model, s, reps[s][r])
                if per == "scenario"
                else torch.cat([tower(model, ti * S + s, reps[ti * S + s][r]) for ti in range(k)])
            )
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("per", ["scenario", "task_scenario"])
def test_per_scenario_without_a_scenario_field_is_a_one_line_error(name, per):
    schema, _ = toy(scenario=False)
    with pytest.raises(ConfigError) as err:
        build(name, schema, per=per)
    msg = str(err.value)
    assert "\n" not in msg and "scenario field" in msg and per in msg and "'toy'" in msg


@pytest.mark.parametrize("name", MODELS)
def test_unknown_per_is_a_config_error(name):
    schema, _ = toy()
    with pytest.raises(ConfigError, match="task_scenario"):
        build(name, schema, per="scenarios")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("per", ["scenario", "task_scenario"])
def test_scenario_id_falls_back_to_the_categorical_column(name, per):
    schema, batch = toy()
    model = build(name, schema, per=per)
    with torch.no_grad():
        a = model(batch)
        b = model({k: v for k, v in batch.items() if k != "scenario"})
    assert all(torch.equal(a[t], b[t]) for t in schema.tasks)


# -- gradient weightings ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("per", ["scenario", "task_scenario"])
@pytest.mark.parametrize("weighting", ["gradnorm", "pcgrad"])
def test_gradient_weightings_run_on_per_scenario_models(name, per, weighting):
    schema, batch = toy()
    model = build(name, schema, per=per).train()
    shared = {id(p) for p in model.shared_parameters()}
    names = [n for n, p in model.named_parameters() if id(p) in shared]
    assert names and not any(n.startswith("towers.") for n in names)
    assert any(n.startswith("embedding.") for n in names)
    w = create_weighting(weighting, schema.tasks)
    w.attach(model)
    out = as_output(model(batch))
    logits = torch.stack([out.logits[t] for t in schema.tasks], 1)
    losses = nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none")
    res = w(losses, torch.ones_like(losses, dtype=torch.bool), batch, out)
    res.loss.backward()
    assert torch.isfinite(res.loss)
    assert all(p.grad is not None for p in model.parameters())


def test_parameter_counts_grow_with_the_slots():
    schema, _ = toy()
    count = {
        per: {n: sum(p.numel() for p in build(n, schema, per=per).parameters()) for n in MODELS}
        for per in ("task", "scenario", "task_scenario")
    }
    for n in MODELS:
        assert count["task"][n] < count["scenario"][n] < count["task_scenario"][n], n


# -- end to end ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_mmoe_per_scenario_trains_and_reports_per_scenario_auc(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        [
            "model=mmoe",
            "model.per=scenario",
            "dataset.n_rows=3000",
            "dataset.n_users=300",
            "dataset.n_items=200",
            *FAST,
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["model"]["per"] == "scenario"
    for task in ("click", "long_view", "purchase"):
        m = res["metrics"]["test"][task]
        assert {"auc@scenario=0", "auc@scenario=1", "auc@scenario=2"} <= set(m)
        assert 0.0 < m["auc"] < 1.0
