"""Every registered model honours the contract; shared layers compute what they claim."""

import pytest
import torch
from torch import nn

import mtlbench
from mtlbench.errors import ConfigError
from mtlbench.models.backbones import MMoEBackbone, PLEBackbone, SlotModel
from mtlbench.models.layers import MLP, ExpertGroup, FeatureEmbedding
from mtlbench.testing import check_deterministic, check_forward_backward, check_sparse_embeddings
from mtlbench.testing import toy_data as toy


@pytest.mark.parametrize("name", mtlbench.list_models())
def test_model_contract_forward_backward(name):
    """Every registered model, built-in or plugin: logits per task in order, gradients everywhere."""
    net, out = check_forward_backward(name, embedding_dim=4)
    assert list(out.logits) == ["click", "buy"] and all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", mtlbench.list_models())
def test_model_trains_with_sparse_embeddings(name):
    """optimizer.sparse_embeddings: every model's tables get row-sparse gradients and the lazy Adam step
    changes looked-up rows of the feature table only."""
    net = check_sparse_embeddings(name, embedding_dim=4)
    assert all(m.sparse for m in net.modules() if isinstance(m, nn.Embedding))


@pytest.mark.parametrize("name", mtlbench.list_models())
def test_model_is_deterministic_given_the_seed(name):
    """Same seed, same parameters and logits (train-mode sampling included): the README's CPU promise."""
    check_deterministic(name, embedding_dim=4)


def test_unknown_model_setting_is_a_config_error():
    schema, _ = toy()
    with pytest.raises(ConfigError, match=r"model 'mmoe' has no setting\(s\) \['num_expert'\]"):
        mtlbench.create_model("mmoe", schema, num_expert=3)


def test_feature_embedding_uses_per_field_offsets_and_masks_padding():
    schema, batch = toy(8)
    emb = FeatureEmbedding(schema, 3)
    table = emb.table.weight
    f = emb.fields(batch)
    assert f.shape == (8, 4, 3)  # user, item, scenario, hist
    assert torch.allclose(f[:, 0], table[batch["categorical"][:, 0]])
    assert torch.allclose(f[:, 1], table[20 + batch["categorical"][:, 1]])
    assert torch.allclose(f[:, 2], table[50 + batch["categorical"][:, 2]])
    hist = batch["seq:hist"]
    for i in range(8):  # sequence shares the item table and averages real positions only
        ids = hist[i][hist[i] >= 0]
        want = table[20 + ids].mean(0) if len(ids) else torch.zeros(3)
        assert torch.allclose(f[i, 3], want, atol=1e-6)
    assert emb.flat(batch).shape == (8, 4 * 3 + 1)


def test_expert_group_equals_separate_mlps():
    torch.manual_seed(0)
    group = ExpertGroup(3, 5, [7, 4])
    x = torch.randn(10, 5)
    out = group(x)
    assert out.shape == (10, 3, 4)
    for e in range(3):
        mlp = MLP(5, [7, 4])
        with torch.no_grad():
            for layer, w, b in zip([mlp[0], mlp[2]], group.weights, group.biases):
                layer.weight.copy_(w[e].T)
                layer.bias.copy_(b[e, 0])
        assert torch.allclose(out[:, e], mlp(x), atol=1e-6)


def test_mmoe_gates_are_a_convex_mix_of_experts():
    schema, batch = toy(16)
    model = mtlbench.create_model("mmoe", schema, embedding_dim=4, num_experts=3, tower=[])
    x = model.embedding.flat(batch)
    experts = model.backbone.experts(x)
    gates = torch.softmax(model.backbone.gates(x).view(16, 2, 3), -1)
    assert torch.allclose(gates.sum(-1), torch.ones(16, 2))
    expected = torch.einsum("bke,beh->bkh", gates, experts)
    logits = model(batch)
    for k, t in enumerate(schema.tasks):
        assert torch.allclose(logits[t], model.towers.towers[k](expected[:, k]).squeeze(-1), atol=1e-6)


# -- backbones.py -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,settings,parts",
    [
        ("mmoe", {}, ["embedding", "backbone.experts", "backbone.gates", "towers"]),
        ("mmoe", {"per": "task_scenario"}, ["embedding", "backbone.experts", "backbone.gates", "towers"]),
        ("shared_bottom", {}, ["embedding", "bottom", "towers"]),
        ("ple", {"per": "scenario"}, ["embedding", "backbone.levels", "towers"]),
        ("ple_stage", {}, ["embedding", "stage_embedding", "backbone.levels", "towers"]),
        (
            "stan",
            {"backbone": "mmoe"},
            [
                "embedding",
                "backbone.experts",
                "backbone.gates",
                "towers",
                "extractor",
                "task_attention",
                "preference_heads",
            ],
        ),
        ("aem2tl", {}, ["embedding", "scenario_cgc", "task_cgc", "towers"]),
    ],
)
def test_models_on_shared_backbones_name_their_parts(name, settings, parts):
    """The parts of each model's checkpoint, in creation order (a shared backbone is ``backbone.*``)."""
    schema, _ = toy()
    keys = mtlbench.create_model(name, schema, embedding_dim=4, **settings).state_dict()
    prefixes = list(dict.fromkeys(".".join(k.split(".")[: 2 if k.startswith("backbone.") else 1]) for k in keys))
    assert prefixes == parts


def test_mmoe_model_runs_the_shared_mmoe_backbone():
    schema, batch = toy(16)
    torch.manual_seed(0)
    model = mtlbench.create_model("mmoe", schema, embedding_dim=4, num_experts=3)
    assert isinstance(model, SlotModel) and isinstance(model.backbone, MMoEBackbone)
    x = model.embedding.flat(batch)
    reps = model.backbone(x)
    assert len(reps) == 2 and all(r.shape == (16, model.backbone.out_dim) for r in reps)
    logits = model(batch)
    for k, t in enumerate(schema.tasks):
        assert torch.equal(logits[t], model.towers.towers[k](reps[k]).squeeze(-1))


def test_ple_backbone_slots_are_the_cgc_gated_mixtures_of_their_level():
    torch.manual_seed(0)
    backbone = PLEBackbone(num_tasks=2, in_dim=5, num_levels=1, num_specific=1, num_shared=2, expert=[4])
    x = torch.randn(7, 5)
    reps = backbone(x)
    level = backbone.levels[0]
    shared = level.shared(x)
    for k in range(2):  # CGC Eq. 1-3 by hand
        h = torch.cat([level.specific[k](x), shared], dim=1)
        w = torch.softmax(level.task_gates[k](x), dim=-1)
        torch.testing.assert_close(reps[k], torch.einsum("be,beh->bh", w, h))
