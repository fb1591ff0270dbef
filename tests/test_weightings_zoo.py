"""cagrad, nash_mtl, aligned_mtl, db_mtl, famo, metabalance: each paper's defining equation on a hand example."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mtlbench.errors import ConfigError
from mtlbench.factory import create_weighting
from mtlbench.models import ModelOutput
from mtlbench.testing import check_config
from mtlbench.weighting.aligned_mtl import alignment
from mtlbench.weighting.cagrad import cagrad_direction
from mtlbench.weighting.famo import FAMO
from mtlbench.weighting.nash_mtl import nash_residual

from conftest import TINY, compose_cfg, run_cli

ZOO = ["cagrad", "nash_mtl", "aligned_mtl", "db_mtl", "famo", "metabalance"]


def matrix(task_losses):
    """A [1, K] per-sample loss matrix with every label present."""
    losses = torch.stack(list(task_losses)).unsqueeze(0)
    return losses, torch.ones_like(losses, dtype=torch.bool)


class Affine(nn.Module):
    """L_k = a_k + g_k·θ + c_k·u: θ shared (the methods' θ), u listed as shared but only a bias of the losses.

    u is reached by every task's loss but by no task's logit, so it is not in θ: it gets the plain rule.
    """

    def __init__(self, g, a=None, c=None):
        super().__init__()
        self.g = torch.as_tensor(np.asarray(g), dtype=torch.float64)
        k = self.g.shape[0]
        self.a = torch.as_tensor(np.ones(k) if a is None else np.asarray(a), dtype=torch.float64)
        self.c = torch.as_tensor(np.zeros(k) if c is None else np.asarray(c), dtype=torch.float64)
        self.theta = nn.Parameter(torch.zeros(self.g.shape[1], dtype=torch.float64))
        self.u = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def shared_parameters(self):
        return [self.theta, self.u]

    def out(self):
        per_task = self.a + self.g @ self.theta + self.c * self.u
        losses, mask = matrix(per_task)
        logits = {str(k): (self.g[k] @ self.theta).expand(1) for k in range(len(self.a))}
        return losses, mask, ModelOutput(logits)


def step(w, model):
    """One forward + backward of ``w`` on ``model``; returns the result and θ's gradient."""
    model.zero_grad()
    losses, mask, out = model.out()
    res = w(losses, mask, {}, out)
    res.loss.backward()
    return res, model.theta.grad.clone()


def make(name, model, **settings):
    w = create_weighting(name, [str(k) for k in range(len(model.a))], **settings)
    w.attach(model)
    return w


G3 = np.array([[1.0, 0.0, 0.5, 0.0, 0.2], [-0.8, 1.0, 0.0, 0.3, 0.0], [0.1, -0.6, -1.0, 0.0, 0.9]])


# -- registry and configs -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_weighting_is_registered_and_its_config_composes(name):
    settings = check_config("weighting", name)  # composes, names a registered weighting, its settings build it
    assert settings == {k: v for k, v in compose_cfg([f"weighting={name}"]).weighting.items() if k != "name"}


@pytest.mark.parametrize(
    "name, settings, word",
    [
        ("cagrad", {"c": -0.1}, "c must"),
        ("cagrad", {"rescale": 3}, "rescale"),
        ("nash_mtl", {"update_weights_every": 0}, "update_weights_every"),
        ("nash_mtl", {"max_norm": -1.0}, "max_norm"),
        ("aligned_mtl", {"scale": "max"}, "scale"),
        ("db_mtl", {"beta": 1.0}, "beta"),
        ("db_mtl", {"beta_sigma": -1.0}, "beta_sigma"),
        ("famo", {"lr": 0.0}, "lr"),
        ("famo", {"xi_update": "rmsprop"}, "xi_update"),
        ("metabalance", {"relax_factor": 1.5}, "relax_factor"),
        ("metabalance", {"target": "nosuch"}, "target"),
    ],
)
def test_bad_settings_raise_one_line_config_errors(name, settings, word):
    with pytest.raises(ConfigError, match=word) as err:
        create_weighting(name, ["a", "b"], **settings)
    assert f"'{name}'" in str(err.value) and "\n" not in str(err.value)


# -- CAGrad -------------------------------------------------------------------------------------------


def test_cagrad_direction_solves_the_max_min_problem_inside_the_ball():
    g = torch.tensor(G3)
    g0 = g.mean(0)
    c = 0.5
    d, w = cagrad_direction(g, c, rescale=0)
    assert w.sum().item() == pytest.approx(1.0) and (w >= 0).all()
    assert (d - g0).norm().item() == pytest.approx(c * g0.norm().item(), rel=1e-6)  # on the ball's boundary
    best = (g @ d).min().item()
    # no feasible direction does better on the worst task (random points of the ball ‖d − g0‖ ≤ c‖g0‖)
    rng = np.random.default_rng(0)
    u = rng.normal(size=(20000, 5))
    u = u / np.linalg.norm(u, axis=1, keepdims=True) * (rng.uniform(size=(20000, 1)) ** 0.2)
    cands = g0.numpy() + c * g0.norm().item() * u
    assert (cands @ G3.T).min(1).max() <= best + 1e-6
    assert best > (g @ g0).min().item()  # the worst task does better than under the mean gradient


def test_cagrad_puts_d_on_the_shared_parameters_and_reduces_to_the_mean_gradient_at_c0():
    model = Affine(G3, c=[1.0, 2.0, -0.5])
    _, grad0 = step(make("cagrad", model, c=0.0), model)
    assert torch.allclose(grad0, torch.tensor(G3).mean(0), atol=1e-6)
    assert model.u.grad.item() == pytest.approx(2.5)  # not in θ: the plain Σ_k ∂L_k/∂u
    res, grad = step(make("cagrad", model, c=0.4, rescale=0), model)
    d, w = cagrad_direction(torch.tensor(G3), 0.4, rescale=0)
    assert torch.allclose(grad, d, atol=1e-6) and torch.allclose(res.task_weights.double(), w, atol=1e-6)
    assert res.loss.item() == pytest.approx(3.0)  # value Σ_k L_k (θ = 0, a = 1)
    _, grad1 = step(make("cagrad", model, c=0.4, rescale=1), model)
    assert torch.allclose(grad1, d / 1.16, atol=1e-6)


# -- Nash-MTL -----------------------------------------------------------------------------------------


def test_nash_mtl_weights_solve_the_bargaining_equation():
    g = G3 * np.array([[3.0], [1.0], [0.2]])  # very different gradient norms
    model = Affine(g)
    w = make("nash_mtl", model, max_norm=0.0)
    res, grad = step(w, model)
    alpha = res.task_weights.double().numpy()
    gram = g @ g.T
    assert np.allclose(gram @ alpha, 1.0 / alpha, rtol=1e-3)  # Gᵀ G α = 1/α
    assert nash_residual(gram, alpha) < 1e-3 * np.linalg.norm(1 / alpha)
    assert alpha[2] > alpha[1] > alpha[0]  # the small gradient gets the large weight
    assert torch.allclose(grad, torch.tensor(alpha) @ torch.tensor(g), atol=1e-6)  # θ gets G α
    assert torch.allclose(w.state_dict()["alpha"], torch.tensor(alpha))  # checkpointed


def test_nash_mtl_clips_the_shared_gradient_and_reuses_weights_between_updates():
    model = Affine(G3)
    w = make("nash_mtl", model, max_norm=0.1, update_weights_every=2)
    res1, grad = step(w, model)
    assert grad.norm().item() == pytest.approx(0.1, rel=1e-4)  # clip_grad_norm_ on θ
    model.g = model.g * 2.0  # gradients change: step 2 reuses α, step 3 recomputes it
    res2, _ = step(w, model)
    assert torch.equal(res2.task_weights, res1.task_weights)
    res3, _ = step(w, model)
    assert torch.allclose(res3.task_weights, res1.task_weights / 2, rtol=1e-3)  # α scales as 1/‖G‖


# -- Aligned-MTL --------------------------------------------------------------------------------------


def test_aligned_mtl_aligned_gradients_have_a_condition_number_of_one():
    g = torch.tensor(G3) * torch.tensor([[5.0], [1.0], [0.3]])
    b = alignment(g @ g.T)
    aligned = b.T @ g  # rows: the aligned task gradients ĝ_k (Ĝ = G B)
    eig = torch.linalg.eigvalsh(aligned @ aligned.T)
    assert (eig.max() / eig.min()).item() == pytest.approx(1.0, abs=1e-8)
    sigma_min = torch.linalg.svdvals(g).min()
    assert eig.max().sqrt().item() == pytest.approx(sigma_min.item(), rel=1e-8)  # scaled by σ_min
    model = Affine(g.numpy(), c=[1.0, 1.0, 1.0])
    res, grad = step(make("aligned_mtl", model), model)
    assert torch.allclose(grad, aligned.sum(0), atol=1e-8)  # θ gets Ĝ 1
    assert torch.allclose(res.task_weights.double(), b.sum(1), atol=1e-8)
    assert model.u.grad.item() == pytest.approx(3.0)


def test_aligned_mtl_handles_a_rank_deficient_gram_matrix():
    g = torch.tensor(np.stack([G3[0], G3[1], G3[0] + G3[1]]))
    aligned = alignment(g @ g.T).T @ g
    eig = torch.linalg.eigvalsh(aligned @ aligned.T)
    assert torch.isfinite(aligned).all()
    nonzero = eig[eig > 1e-9]
    assert len(nonzero) == 2 and (nonzero.max() / nonzero.min()).item() == pytest.approx(1.0, abs=1e-8)


def test_aligned_mtl_drops_directions_below_float32_precision_as_the_authors_code():
    """Two gradients at a relative angle of 1e-5: λ_min/λ_max ≈ 2.5e-11 is below K·eps(float32), so the Gram
    matrix has numerical rank 1 (authors' ProcrustesSolver) and the update is not shrunk to √λ_min."""
    g1, other = torch.tensor(G3[0]), torch.tensor(G3[1])
    ortho = other - (other @ g1) / (g1 @ g1) * g1  # a unit direction orthogonal to g1
    g = torch.stack([g1, g1 + 1e-5 * g1.norm() * ortho / ortho.norm()])
    lam = torch.linalg.eigvalsh(g @ g.T)
    assert lam.min() / lam.max() < 2 * torch.finfo(torch.float32).eps  # below the float32 rank tolerance
    assert lam.min() / lam.max() > 1e3 * torch.finfo(torch.float64).eps  # ... and well above float64's
    b = alignment(g @ g.T)
    aligned = b.T @ g
    # rank 1: both aligned gradients are the projection on the top eigenvector, scaled to σ = √λ_max
    u = torch.linalg.eigh(g @ g.T).eigenvectors[:, -1]
    assert torch.allclose(b, u.outer(u), atol=1e-10)
    assert aligned.sum(0).norm().item() == pytest.approx((g.T @ u).norm().item() * abs(u.sum().item()), rel=1e-6)


# -- DB-MTL -------------------------------------------------------------------------------------------


def test_db_mtl_balances_ema_log_gradients_to_the_largest_norm():
    a = np.array([4.0, 0.5, 1.0])  # loss values: ∇ log L_k = g_k / a_k at θ = 0
    model = Affine(G3, a=a, c=[1.0, 1.0, 1.0])
    w = make("db_mtl", model, beta=0.9, beta_sigma=0.5)
    logg = torch.tensor(G3 / a[:, None])
    res, grad = step(w, model)
    ema = 0.1 * logg  # β_1 = 0.9 / 1^0.5: ĝ_1 = (1 − β_1) g_1
    norms = ema.norm(dim=1)
    want = (norms.max() / norms) @ ema
    assert torch.allclose(grad, want, atol=1e-6)
    contributions = (norms.max() / norms)[:, None] * ema
    assert torch.allclose(contributions.norm(dim=1), norms.max().expand(3))  # every task at the largest norm
    assert model.u.grad.item() == pytest.approx((1 / a).sum())  # task-specific: Σ_k ∇ log L_k
    assert res.loss.item() == pytest.approx(a.sum())
    model.g = model.g * 3.0
    _, grad2 = step(w, model)
    beta2 = 0.9 / math.sqrt(2)  # β-decay: β_k = β / k^σ
    ema2 = beta2 * ema + (1 - beta2) * 3.0 * logg
    n2 = ema2.norm(dim=1)
    assert torch.allclose(grad2, (n2.max() / n2) @ ema2, atol=1e-6)
    fresh = create_weighting("db_mtl", ["0", "1", "2"])
    fresh.load_state_dict(w.state_dict())  # the EMA (sized at the first step) is checkpointed
    assert torch.allclose(fresh.grad_ema, ema2, atol=1e-6) and int(fresh.step) == 2


# -- FAMO ---------------------------------------------------------------------------------------------


def famo_step(w, values):
    losses, mask = matrix(torch.tensor(values, dtype=torch.float64, requires_grad=True))
    return w(losses, mask, {}, ModelOutput({}))


def softmax_jacobian_t(xi, delta):
    """∇_ξ softmax(ξ)ᵀ δ by autograd (independent of the module's closed form)."""
    xi = xi.clone().requires_grad_(True)
    (torch.softmax(xi, 0) * delta).sum().backward()
    return xi.grad


def test_famo_xi_follows_the_papers_update_after_two_steps(monkeypatch):
    lr, gamma = 0.5, 0.1
    w = create_weighting("famo", ["a", "b", "c"], lr=lr, gamma=gamma, xi_update="sgd")

    def no_grad_call(*args, **kwargs):
        raise AssertionError("FAMO must not take extra gradients")

    monkeypatch.setattr(torch.autograd, "grad", no_grad_call)
    l1, l2, l3 = [1.0, 2.0, 0.5], [0.5, 1.9, 0.45], [0.4, 1.0, 0.44]
    res1 = famo_step(w, l1)
    assert res1.task_weights.tolist() == pytest.approx(list(1 / 3 / np.array(l1) / (1 / 3 / np.array(l1)).sum()))
    famo_step(w, l2)
    monkeypatch.undo()
    delta1 = torch.log(torch.tensor(l1, dtype=torch.float64)) - torch.log(torch.tensor(l2, dtype=torch.float64))
    xi2 = torch.zeros(3, dtype=torch.float64) - lr * (softmax_jacobian_t(torch.zeros(3, dtype=torch.float64), delta1))
    assert torch.allclose(w.xi, xi2, atol=1e-10)  # ξ_2 = ξ_1 − β(J ᵀδ + γ ξ_1), ξ_1 = 0
    res3 = famo_step(w, l3)
    delta2 = torch.log(torch.tensor(l2, dtype=torch.float64)) - torch.log(torch.tensor(l3, dtype=torch.float64))
    xi3 = xi2 - lr * (softmax_jacobian_t(xi2, delta2) + gamma * xi2)
    assert torch.allclose(w.xi, xi3, atol=1e-10)
    assert w.xi[0] < w.xi[2]  # the task whose loss fell fastest (a) loses weight to the one that stalled (c)
    z = torch.softmax(xi3, 0)
    want = z / torch.tensor(l3, dtype=torch.float64)
    assert torch.allclose(res3.task_weights, want / want.sum(), atol=1e-7)  # c z_i / ℓ_i


def test_famo_adam_update_matches_torch_adam_and_the_gradient_is_one_backward():
    w = create_weighting("famo", ["a", "b"])  # Algorithm 2: Adam, lr 0.025, γ 0.001
    ref = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([ref], lr=0.025, weight_decay=0.001)
    seq = [[1.0, 2.0], [0.8, 1.9], [0.7, 1.5], [0.69, 1.2]]
    famo_step(w, seq[0])
    for prev, now in zip(seq, seq[1:]):
        delta = torch.log(torch.tensor(prev, dtype=torch.float64)) - torch.log(torch.tensor(now, dtype=torch.float64))
        opt.zero_grad()
        ref.grad = softmax_jacobian_t(ref.detach(), delta)
        opt.step()
        famo_step(w, now)
        assert torch.allclose(w.xi, ref.detach(), atol=1e-8)
    # the model's gradient: Σ_i c z_i/ℓ_i ∇ℓ_i, from one backward of the returned loss
    theta = torch.ones((), dtype=torch.float64, requires_grad=True)
    losses, mask = matrix([0.5 * theta, 2.0 * theta])
    res = w(losses, mask, {}, ModelOutput({}))
    res.loss.backward()
    assert theta.grad.item() == pytest.approx((res.task_weights * torch.tensor([0.5, 2.0])).sum().item())


def test_famo_state_survives_a_checkpoint_round_trip():
    w = create_weighting("famo", ["a", "b"])
    for values in ([1.0, 2.0], [0.8, 1.9], [0.7, 1.5]):
        famo_step(w, values)
    state = {k: v.clone() for k, v in w.state_dict().items()}
    assert {"xi", "prev_loss", "adam_m", "adam_v", "xi_steps"} <= set(state)
    assert not isinstance(w.xi, nn.Parameter)  # the model's optimiser never touches ξ
    fresh = create_weighting("famo", ["a", "b"])
    fresh.load_state_dict(state)
    a, b = famo_step(w, [0.6, 1.0]), famo_step(fresh, [0.6, 1.0])
    assert torch.equal(a.task_weights, b.task_weights) and torch.equal(w.xi, fresh.xi)
    assert isinstance(fresh, FAMO) and list(fresh.parameters()) == []


def test_famo_ignores_a_task_without_labels_in_the_batch():
    w = create_weighting("famo", ["a", "b"])
    famo_step(w, [1.0, 2.0])
    losses = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False]])
    res = w(losses, mask, {}, ModelOutput({}))
    assert res.task_weights.tolist() == pytest.approx([1.0, 0.0])  # c z_a/ℓ_a = 1: b sits out
    assert torch.isfinite(w.xi).all()


# -- MetaBalance --------------------------------------------------------------------------------------


class TwoTensors(nn.Module):
    """L_k = a_k + g_k·θ1 + h_k·θ2: two shared tensors (MetaBalance balances each one separately)."""

    def __init__(self, g, h):
        super().__init__()
        self.g, self.h = torch.tensor(g, dtype=torch.float64), torch.tensor(h, dtype=torch.float64)
        self.a = torch.ones(len(g), dtype=torch.float64)
        self.t1 = nn.Parameter(torch.zeros(self.g.shape[1], dtype=torch.float64))
        self.t2 = nn.Parameter(torch.zeros(self.h.shape[1], dtype=torch.float64))

    def shared_parameters(self):
        return [self.t1, self.t2]

    def out(self):
        per_task = self.a + self.g @ self.t1 + self.h @ self.t2
        losses, mask = matrix(per_task)
        return losses, mask, ModelOutput({str(k): per_task[k].expand(1) for k in range(len(self.a))})


def mb_step(w, model):
    model.zero_grad()
    losses, mask, out = model.out()
    res = w(losses, mask, {}, out)
    res.loss.backward()
    return res


def test_metabalance_moves_auxiliary_gradient_norms_to_the_targets_with_r1():
    g = [[1.0, 0.0], [0.0, 6.0], [0.3, 0.4]]  # target ‖·‖ = 1; auxiliaries 6 and 0.5 on θ1
    h = [[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 8.0]]  # target 2; auxiliaries 1 and 8 on θ2
    model = TwoTensors(g, h)
    w = create_weighting("metabalance", ["0", "1", "2"], relax_factor=1.0, beta=0.9)
    w.attach(model)
    mb_step(w, model)  # constant gradients: the EMAs keep the norms' ratio from the first step
    gt = torch.tensor(g, dtype=torch.float64)
    ht = torch.tensor(h, dtype=torch.float64)
    want1 = gt[0] + gt[1] / 6.0 + gt[2] / 0.5  # every auxiliary at the target's norm, per tensor
    want2 = ht[0] + ht[1] * 2.0 + ht[2] * 2.0 / 8.0
    assert torch.allclose(model.t1.grad, want1) and torch.allclose(model.t2.grad, want2)
    # the gradients change: the moving averages lag, so the norms move toward the target's, per the EMA
    model.g = model.g * torch.tensor([[1.0], [0.5], [1.0]], dtype=torch.float64)  # auxiliary 1: norm 6 -> 3
    mb_step(w, model)
    m_tar, m_aux = 0.19 * 1.0, 0.9 * 0.1 * 6.0 + 0.1 * 3.0
    scaled = model.t1.grad - gt[0] - gt[2] / 0.5
    assert scaled.norm().item() == pytest.approx(3.0 * m_tar / m_aux)
    assert abs(scaled.norm().item() - 1.0) < abs(3.0 - 1.0)  # closer to the target's norm than unscaled


def test_metabalance_relax_factor_interpolates_and_target_is_configurable():
    g = [[1.0, 0.0], [0.0, 4.0]]
    h = [[2.0], [1.0]]
    model = TwoTensors(g, h)
    w0 = create_weighting("metabalance", ["0", "1"], relax_factor=0.0)
    w0.attach(model)
    mb_step(w0, model)
    assert model.t1.grad.tolist() == pytest.approx([1.0, 4.0])  # r = 0: the plain sum
    w = create_weighting("metabalance", ["0", "1"], relax_factor=0.5, target="1")
    w.attach(model)
    res = mb_step(w, model)
    # task 1 is the target: task 0's gradient scales toward its norm, r·m_tar/m_0 + (1 − r), on each tensor
    s1, s2 = 0.5 * 4.0 / 1.0 + 0.5, 0.5 * 1.0 / 2.0 + 0.5
    assert model.t1.grad.tolist() == pytest.approx([s1 * 1.0, 4.0])
    assert model.t2.grad.tolist() == pytest.approx([s2 * 2.0 + 1.0])
    assert res.task_weights.tolist() == pytest.approx([(s1 + s2) / 2, 1.0])
    fresh = create_weighting("metabalance", ["0", "1"], target="1")
    fresh.load_state_dict(w.state_dict())
    assert torch.equal(fresh.norm_ema, w.norm_ema)


# -- end to end ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_trains_every_zoo_weighting_with_mmoe_and_ple(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *TINY, "model=mmoe,ple", f"weighting={','.join(ZOO)}", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(sweep.rglob("results.json"))
    seen = set()
    for path in results:
        res = json.loads(path.read_text())
        for task, m in res["metrics"]["test"].items():
            assert math.isfinite(m["auc"]) and 0.0 < m["auc"] < 1.0, (path, task)
        seen.add((res["model"], res["weighting"]))
        if res["weighting"] == "famo":  # FAMO's state is in the checkpoint, so a resume continues it
            ckpt = torch.load(path.parent / "checkpoints" / "last.ckpt", weights_only=True)
            xi = ckpt["state_dict"]["weighting.xi"]
            assert {"weighting.prev_loss", "weighting.adam_m", "weighting.xi_steps"} <= set(ckpt["state_dict"])
            assert torch.isfinite(xi).all() and xi.abs().sum() > 0 and int(ckpt["state_dict"]["weighting.xi_steps"]) > 0
    assert seen == {(m, w) for m in ("mmoe", "ple") for w in ZOO}
