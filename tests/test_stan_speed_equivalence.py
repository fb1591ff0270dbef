"""STAN and PLE_stage compute their equations exactly, whatever the implementation does for speed.

Each model runs in float64 next to a plain re-implementation of its equations kept here (loops over tasks and
fields, written from the paper, reading the model's own parameters): outputs, the model's loss terms and every
parameter's gradient must agree to float64 rounding. STAN's stage weighting must draw bit for bit the gamma of
Algorithm 1 as printed (a per-sample loop) followed by ``torch.distributions.Beta`` under the same seed, and a
few training steps must repeat bit for bit: same config + seed = same numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlbench.data.rows import build_tensors
from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.models.base import ModelOutput
from mtlbench.models.ple_stage import PLEStage
from mtlbench.models.stan import PSEUDO_LABEL, STAN
from mtlbench.weighting.stan_stage import StanStage

TIGHT = {"rtol": 1e-10, "atol": 1e-12}  # float64: only the order of the additions may differ
N, D = 24, 4


def schema_and_batch() -> tuple[DatasetSchema, dict[str, torch.Tensor]]:
    """User fields that are not adjacent among the embedded fields (user, age, and a history after them)."""
    schema = DatasetSchema(
        "eq",
        [
            Feature("user", vocab_size=5, role="user"),
            Feature("item", vocab_size=6, role="item"),
            Feature("age", vocab_size=3, role="user"),
            Feature("price", "numeric", role="item"),
            Feature("hist", "sequence", role="user", max_len=3, embedding="item"),
        ],
        tasks=["a", "b", "c"],
        user_field="user",
        item_field="item",
    )
    rng = np.random.default_rng(0)
    hist = rng.integers(0, 6, (N, 3))
    hist[rng.random((N, 3)) < 0.4] = -1  # padding, some rows without any history
    labels = rng.integers(0, 2, (N, 3)).astype(np.float32)
    labels[rng.random((N, 3)) < 0.2] = np.nan
    cols = {
        "user": rng.integers(0, 5, N),
        "item": rng.integers(0, 6, N),
        "age": rng.integers(0, 3, N),
        "price": rng.normal(size=N).astype(np.float32),
        "hist": hist,
        **{t: labels[:, k] for k, t in enumerate("abc")},
    }
    batch = build_tensors(schema, cols)
    pseudo = rng.random((N, 3))
    pseudo[rng.random((N, 3)) < 0.2] = np.nan  # undefined pseudo-labels (prior=None) leave Eq. 11
    batch[PSEUDO_LABEL] = torch.from_numpy(pseudo)
    batch["numeric"] = batch["numeric"].double()
    return schema, batch


def field_embeddings(model: torch.nn.Module, schema: DatasetSchema, batch: dict[str, torch.Tensor]) -> dict:
    """Each embedded field's vectors [N, D] by name, straight from the shared table (offsets by hand)."""
    table = model.embedding.table.weight
    cats = schema.categorical
    out, offset = {}, 0
    for j, f in enumerate(cats):
        out[f.name] = table[offset + batch["categorical"][:, j]]
        offset += f.vocab_size
    item_offset = sum(f.vocab_size for f in cats[: [f.name for f in cats].index("item")])
    ids = batch["seq:hist"]
    rows = []
    for i in range(len(ids)):  # mean over the real (non-padding) history items; zero without any
        real = [table[item_offset + int(v)] for v in ids[i] if v >= 0]
        rows.append(torch.stack(real).mean(0) if real else table.new_zeros(D))
    out["hist"] = torch.stack(rows)
    return out


def reference_stan(model: STAN, schema: DatasetSchema, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Section 3 of the paper with loops: Eq. 1-4 on x = [vec(U), vec(V)], Eq. 6-9 per task, Eq. 11."""
    emb = field_embeddings(model, schema, batch)
    order = [f.name for f in schema.categorical] + [f.name for f in schema.sequences]
    x = torch.cat([emb[n] for n in order] + [batch["numeric"]], 1)
    logits = model.towers(model.backbone(x))  # Eq. 1-4 (PLE, tested in test_models.py)
    u = torch.stack([emb[n] for n in model.user_fields], 1)  # U_i: d1 user fields x d2
    b, d1, d2 = u.shape
    if model.user_extractor == "dnn":  # Eq. 6 with section 4.1.3's DNN: vec(U) -> hidden -> vec(U')
        h = u.reshape(b, d1 * d2)
        layers = [m for m in model.extractor.mlp if isinstance(m, torch.nn.Linear)]
        for i, lin in enumerate(layers):
            h = h @ lin.weight.T + lin.bias
            if i < len(layers) - 1:
                h = torch.relu(h)
        u_prime = h.reshape(b, d1, d2)
    else:  # Eq. 7, sample by sample
        ex = model.extractor
        u_prime = torch.stack(
            [
                torch.softmax((ex.w_q @ u[i]) @ (ex.w_k @ u[i]).T / math.sqrt(d1), dim=1) @ (ex.w_v @ u[i])
                for i in range(b)
            ]
        )
    s, pref_logits = [], []
    for k in range(len(schema.tasks)):
        w = model.task_attention.weight[k]  # W^k, d2 x d2
        scores = u_prime @ w.T  # row f: W^k u'_f
        s_k = u_prime * torch.softmax(scores, dim=1)  # Eq. 8, softmax over the d1 features
        s.append(s_k)
        vec = s_k.reshape(b, d1 * d2)  # footnote 2: row-major vec
        pref_logits.append(vec @ model.preference_heads.weight[k] + model.preference_heads.bias[k])  # Eq. 9
    pref = torch.sigmoid(torch.stack(pref_logits, 1))
    pseudo = batch[PSEUDO_LABEL]
    terms = []
    for k in range(len(schema.tasks)):  # Eq. 11: per task, the mean over rows with a pseudo-label
        ok = ~torch.isnan(pseudo[:, k])
        terms.append(((pseudo[ok, k] - pref[ok, k]) ** 2).sum() / max(int(ok.sum()), 1))
    return {
        "logits": torch.stack([logits[t] for t in schema.tasks], 1),
        "preference": pref,
        "user_representation": torch.cat([s_k.reshape(b, -1) for s_k in s], 1),  # s^1 .. s^K concatenated
        "aux": torch.stack(terms).sum(),
    }


def model_terms(model: STAN, schema: DatasetSchema, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = model(batch)
    return {
        "logits": torch.stack([out.logits[t] for t in schema.tasks], 1),
        "preference": out.extras["preference"],
        "user_representation": out.extras["user_representation"].reshape(len(batch["labels"]), -1),
        "aux": out.aux_losses["preference"],
    }


def grads(model: torch.nn.Module, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gradients of a fixed random combination of every output (so each output's gradient path counts)."""
    g = torch.Generator().manual_seed(1)
    total = sum((v * torch.randn(v.shape, generator=g, dtype=v.dtype)).sum() for v in terms.values())
    names, params = zip(*model.named_parameters())
    return dict(zip(names, torch.autograd.grad(total, params, allow_unused=True)))


@pytest.mark.parametrize("settings", [{}, {"user_extractor": "attention"}, {"backbone": "mmoe"}])
def test_stan_forward_loss_and_gradients_equal_the_equations(settings):
    schema, batch = schema_and_batch()
    torch.manual_seed(0)
    model = STAN(schema, embedding_dim=D, expert=(8,), tower=(4,), extractor_hidden=(8,), **settings).double()
    model.train()
    assert model.user_fields == ["user", "age", "hist"]  # fields 0, 2 and 3 of the embedding
    got, want = model_terms(model, schema, batch), reference_stan(model, schema, batch)
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TIGHT, msg=name)
    g_got, g_want = grads(model, got), grads(model, want)
    for name, g in g_want.items():
        assert g is not None and g_got[name] is not None, name
        torch.testing.assert_close(g_got[name], g, **TIGHT, msg=name)


def test_ple_stage_is_ple_on_the_features_then_the_embedded_stage():
    schema, batch = schema_and_batch()
    batch["rule_stage"] = torch.arange(N) % 5
    torch.manual_seed(0)
    model = PLEStage(schema, embedding_dim=D, expert=(8,), tower=(4,)).double()
    emb = field_embeddings(model, schema, batch)
    stage = model.stage_embedding.weight[batch["rule_stage"]]
    x = torch.cat([emb["user"], emb["item"], emb["age"], emb["hist"], batch["numeric"], stage], 1)
    want = model.towers(model.backbone(x))
    got = model(batch)
    for t in schema.tasks:
        torch.testing.assert_close(got[t], want[t], **TIGHT)
    g_got = grads(model, {t: got[t] for t in schema.tasks})
    g_want = grads(model, {t: want[t] for t in schema.tasks})
    for name, g in g_want.items():
        torch.testing.assert_close(g_got[name], g, **TIGHT, msg=name)


def literal_algorithm1(users, pref, num_users, k):
    """Algorithm 1, lines 3-8, sample by sample in time order (the order of ``users``)."""
    alpha, beta = torch.ones(num_users, k, dtype=torch.float64), torch.ones(num_users, k, dtype=torch.float64)
    c = [0] * num_users
    for u, p in zip(users.tolist(), pref.double()):
        c[u] += 1
        alpha[u] += p * c[u]
        beta[u] += (1 - p) * c[u]
    return alpha, beta


def test_stan_stage_draws_the_gamma_of_algorithm1_bit_for_bit():
    """Two batches of one pass in time order: state = the literal loop, gamma = Beta(alpha_u, beta_u) draws
    under the same seed, and the loss Eq. 13's gamma-weighted per-task means."""
    g = torch.Generator().manual_seed(0)
    users = torch.randint(0, 6, (40,), generator=g)
    position = torch.zeros(40, dtype=torch.int64)
    for u in range(6):
        position[users == u] = torch.arange(1, int((users == u).sum()) + 1)
    pref = torch.rand(40, 3, generator=g)
    losses, mask = torch.rand(40, 3, generator=g), torch.rand(40, 3, generator=g) > 0.3
    losses = losses * mask
    w = StanStage(["a", "b", "c"], num_users=6)
    w.train()
    for part in (slice(0, 25), slice(25, 40)):
        batch = {"user": users[part], "stan_position": position[part]}
        torch.manual_seed(7)
        out = w(losses[part], mask[part], batch, ModelOutput({}, extras={"preference": pref[part]}))
        alpha, beta = literal_algorithm1(users[: part.stop], pref[: part.stop], 6, 3)
        torch.testing.assert_close(w.alpha, alpha, **TIGHT)
        torch.testing.assert_close(w.beta, beta, **TIGHT)
        torch.manual_seed(7)
        u = users[part]
        gamma = torch.distributions.Beta(alpha[u], beta[u]).sample().float()
        assert torch.equal(out.task_weights, gamma)  # the same random numbers, not just the same law
        m, lo = mask[part], losses[part]
        want = sum((gamma[m[:, k], k] * lo[m[:, k], k]).sum() / m[:, k].sum() for k in range(3))
        torch.testing.assert_close(out.loss, want, rtol=1e-6, atol=1e-7)


def train_steps(name: str, steps: int = 3) -> dict[str, torch.Tensor]:
    """A few steps of the whole objective (BCE weighted by the model's weighting + aux losses), float32."""
    from mtlbench.factory import create_weighting
    from mtlbench.models.base import as_output
    from mtlbench.weighting.base import WeightingStrategy

    schema, batch = schema_and_batch()
    batch["numeric"] = batch["numeric"].float()
    batch[PSEUDO_LABEL] = batch[PSEUDO_LABEL].float()
    batch["stan_position"] = torch.arange(N) // 5 + 1
    batch["rule_stage"] = torch.arange(N) % 5
    torch.manual_seed(0)
    model = (STAN if name == "stan" else PLEStage)(schema, embedding_dim=D, expert=(8,), tower=(4,))
    weighting: WeightingStrategy = create_weighting("stan_stage" if name == "stan" else "equal", schema.tasks)
    weighting.attach(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        out = as_output(model(batch))
        labels = batch["labels"]
        mask = ~torch.isnan(labels)
        logits = torch.stack([out.logits[t] for t in schema.tasks], 1)
        losses = F.binary_cross_entropy_with_logits(logits, labels.nan_to_num(0.0), reduction="none") * mask
        loss = weighting(losses, mask, batch, out).loss + sum(out.aux_losses.values(), torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {n: p.detach().clone() for n, p in model.state_dict().items()} | {"loss": loss.detach()}


@pytest.mark.parametrize("name", ["stan", "ple_stage"])
def test_same_seed_same_numbers(name):
    first, again = train_steps(name), train_steps(name)
    assert first.keys() == again.keys()
    for k in first:
        assert torch.equal(first[k], again[k]), k
