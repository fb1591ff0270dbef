"""uncertainty, gradnorm, dwa, pcgrad: weights move the way each paper says; PCGrad's surgery is exact."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mtlbench.errors import ConfigError
from mtlbench.factory import create_weighting
from mtlbench.models import ModelOutput
from mtlbench.weighting.base import WeightedLoss, task_means
from mtlbench.weighting.gradient import GradientWeighting
from mtlbench.weighting.pcgrad import project_conflicting

from conftest import TINY, run_cli


def matrix(task_losses):
    """A [1, K] per-sample loss matrix with every label present."""
    losses = torch.stack(list(task_losses)).unsqueeze(0)
    return losses, torch.ones_like(losses, dtype=torch.bool)


class Linear(nn.Module):
    """L_k = a_k + b_k·θ on one shared scalar θ (=1): loss values and gradient norms set independently."""

    def __init__(self, tasks):
        super().__init__()
        self.tasks = tasks
        self.theta = nn.Parameter(torch.ones(()))

    def shared_parameters(self):
        return [self.theta]

    def __call__(self, a, b):
        losses, mask = matrix(torch.as_tensor(ak) + torch.as_tensor(bk) * self.theta for ak, bk in zip(a, b))
        return losses, mask, ModelOutput({t: self.theta.expand(1) for t in self.tasks})


def run(w, model, a, b):
    losses, mask, out = model(a, b)
    return w(losses, mask, {}, out)


class Separate(nn.Module):
    """Like single_task: no parameter feeds two tasks (although shared_parameters() lists them)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.ones(())), nn.Parameter(torch.ones(()))

    def shared_parameters(self):
        return [self.a, self.b]

    def out(self):
        losses, mask = matrix([self.a**2, self.b**2])
        return losses, mask, ModelOutput({"x": self.a.expand(1), "y": self.b.expand(1)})


# -- uncertainty --------------------------------------------------------------------------------------


def test_uncertainty_loss_is_kendall_eq10_with_log_variances():
    w = create_weighting("uncertainty", ["a", "b"])
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -1.0]))
    losses, mask = matrix(torch.tensor([2.0, 0.3]))
    out = w(losses, mask, {}, ModelOutput({}))
    want = math.exp(-0.5) * 2.0 + 0.5 * 0.5 + math.exp(1.0) * 0.3 + 0.5 * -1.0
    assert out.loss.item() == pytest.approx(want)
    assert out.task_weights.tolist() == pytest.approx([math.exp(-0.5), math.exp(1.0)])


@pytest.mark.parametrize("c", [0.5, 1.0])
def test_uncertainty_gives_the_task_with_the_larger_loss_the_smaller_weight(c):
    w = create_weighting("uncertainty", ["noisy", "clean"], regularizer=c)
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    losses, mask = matrix(torch.tensor([2.0, 0.25]))
    for _ in range(500):
        opt.zero_grad()
        w(losses, mask, {}, ModelOutput({})).loss.backward()
        opt.step()
    weights = w(losses, mask, {}, ModelOutput({})).task_weights
    assert weights[0] < 1.0 < weights[1]
    assert weights.tolist() == pytest.approx([c / 2.0, c / 0.25], rel=1e-3)  # optimum: exp(-s) = c / L


# -- GradNorm -----------------------------------------------------------------------------------------


def test_gradnorm_raises_the_weight_of_the_task_whose_gradient_norm_lags():
    model = Linear(["strong", "weak"])
    w = create_weighting("gradnorm", ["strong", "weak"], alpha=1.5)
    w.attach(model)
    opt = torch.optim.SGD(w.parameters(), lr=0.05)
    for _ in range(3):  # equal loss ratios (losses don't change), gradient norms 3 vs 1
        opt.zero_grad()
        losses, mask, out = model([0.0, 0.0], [3.0, 1.0])
        res = w(losses, mask, {}, out)
        # L_grad by hand: G = w·(3, 1), targets = mean(G)·1
        g = res.task_weights * torch.tensor([3.0, 1.0])
        assert res.loss.item() == pytest.approx(
            (res.task_weights * torch.tensor([3.0, 1.0])).sum().item() + (g - g.mean()).abs().sum().item(), rel=1e-5
        )
        res.loss.backward()
        opt.step()
    weights = run(w, model, [0.0, 0.0], [3.0, 1.0]).task_weights
    assert weights[1] > 1.0 > weights[0]
    assert weights.sum().item() == pytest.approx(2.0)  # renormalised to K


def test_gradnorm_raises_the_weight_of_the_task_that_trains_slower():
    model = Linear(["fast", "slow"])
    w = create_weighting("gradnorm", ["fast", "slow"], alpha=2.0)
    w.attach(model)
    run(w, model, [0.0, 0.0], [1.0, 1.0])  # L(0) = (1, 1)
    res = run(w, model, [-0.5, 0.0], [1.0, 1.0])  # L = (0.5, 1.0), equal gradient norms 1
    r = torch.tensor([0.5, 1.0]) / 0.75  # relative inverse training rates
    assert res.loss.item() == pytest.approx(1.5 + (1.0 - r**2).abs().sum().item(), rel=1e-5)  # G = 1, α = 2
    res.loss.backward()
    assert w.weights.grad[0] > 0 > w.weights.grad[1]  # descent lowers 'fast' and raises 'slow'
    # the model gets the weighted sum only: ∂/∂θ Σ w_k (a_k + b_k θ) = Σ w_k b_k (L_grad adds nothing)
    assert model.theta.grad.item() == pytest.approx(res.task_weights.sum().item())


def test_gradnorm_renormalises_weights_to_k_at_every_step():
    model = Linear(["a", "b"])
    w = create_weighting("gradnorm", ["a", "b"])
    w.attach(model)
    with torch.no_grad():
        w.weights.copy_(torch.tensor([3.0, 1.0]))
    assert run(w, model, [0.0, 0.0], [1.0, 1.0]).task_weights.tolist() == pytest.approx([1.5, 0.5])


def test_gradient_weightings_refuse_models_without_shared_parameters():
    for name in ("gradnorm", "pcgrad"):
        w = create_weighting(name, ["x", "y"])
        with pytest.raises(ConfigError, match="has none"):
            w.attach(type("NoShare", (nn.Module,), {"shared_parameters": lambda self: []})())
        model = Separate()
        w.attach(model)
        losses, mask, out = model.out()
        with pytest.raises(ConfigError, match=f"weighting '{name}' needs .* shared by") as err:
            w(losses, mask, {}, out)
        assert "Separate" in str(err.value) and "\n" not in str(err.value)


def test_gradnorm_layer_selects_named_shared_parameters():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model.shared_parameters = lambda: list(model.parameters())
    w = create_weighting("gradnorm", ["x", "y"], layer="1.")
    w.attach(model)
    assert w._params == [model[1].weight, model[1].bias]
    with pytest.raises(ConfigError, match="layer='nosuch' matches no shared parameter"):
        create_weighting("gradnorm", ["x", "y"], layer="nosuch").attach(model)


class ThreeWay(nn.Module):
    """L_0 = a + b, L_1 = 2a + 3b, L_2 = 5a + c: a reaches every task, b two of them, c one."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (nn.Parameter(torch.ones(())) for _ in range(3))

    def shared_parameters(self):
        return [self.a, self.b, self.c]

    def out(self):
        per_task = [self.a + self.b, 2 * self.a + 3 * self.b, 5 * self.a + self.c]
        losses, mask = matrix(per_task)
        return losses, mask, ModelOutput({t: per_task[k].expand(1) for k, t in enumerate("xyz")})


class GradientSum(GradientWeighting):
    """A weighting that is its formula only (here the plain sum); it records θ and the per-task gradients."""

    name = "gradient_sum"

    def forward(self, losses, mask, batch, output):
        task_loss = task_means(losses, mask)
        params, grads = self.shared_gradients(task_loss, output)
        self.seen = (params, grads)
        return WeightedLoss(task_loss.sum())


def test_gradient_weighting_base_owns_the_shared_set_and_the_per_task_gradients():
    model = ThreeWay()
    w = GradientSum(list("xyz"))
    assert w.gradient_based
    w.attach(model)
    losses, mask, out = model.out()
    w(losses, mask, {}, out)
    params, grads = w.seen
    assert [id(p) for p in params] == [id(model.a), id(model.b)]  # reached by two or more tasks; c by one only
    # ∇_(a, b) L_k; L_z's gradient on b is an exact zero (the task losses come from one stacked matrix)
    assert [[float(g) for g in gk] for gk in grads] == [[1.0, 1.0], [2.0, 3.0], [5.0, 0.0]]
    for name, want in (("pcgrad", [model.a, model.b]), ("gradnorm", [model.a])):  # GradNorm: every task
        strategy = create_weighting(name, list("xyz"))
        strategy.attach(model)
        assert isinstance(strategy, GradientWeighting)
        assert [id(p) for p in strategy.shared_of(out)] == [id(p) for p in want]


# -- DWA ----------------------------------------------------------------------------------------------


def test_dwa_weights_follow_the_ratio_of_the_last_two_epoch_losses():
    w = create_weighting("dwa", ["fast", "slow"], temperature=2.0)

    def step(l1, l2):
        losses, mask = matrix(torch.tensor([l1, l2]))
        return w(losses, mask, {}, ModelOutput({}))

    assert step(1.0, 2.0).task_weights.tolist() == [1.0, 1.0]  # epoch 0
    assert step(3.0, 2.0).task_weights.tolist() == [1.0, 1.0]  # epoch 0 average: (2, 2)
    w.on_train_epoch_end(0)
    assert step(1.0, 2.0).task_weights.tolist() == [1.0, 1.0]  # epoch 1 average: (1, 2)
    w.on_train_epoch_end(1)
    res = step(0.5, 1.0)  # epoch 2: r = (1/2, 2/2), w = 2·softmax(r / 2)
    e1, e2 = math.exp(0.25), math.exp(0.5)
    want = [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)]
    assert res.task_weights.tolist() == pytest.approx(want)
    assert res.loss.item() == pytest.approx(want[0] * 0.5 + want[1] * 1.0)
    assert res.task_weights[1] > res.task_weights[0]  # the task whose loss fell less gets more weight
    state = {k: v.clone() for k, v in w.state_dict().items()}  # the history is checkpointed
    fresh = create_weighting("dwa", ["fast", "slow"])
    fresh.load_state_dict(state)
    assert fresh.weights().tolist() == pytest.approx(want)


# -- PCGrad -------------------------------------------------------------------------------------------


class Bilinear(nn.Module):
    """L_k = g_k·θ + c_k·u: θ shared (gets surgery), u not listed as shared (gets the plain sum)."""

    def __init__(self, g, c):
        super().__init__()
        self.g, self.c = torch.tensor(g), torch.tensor(c)
        self.theta = nn.Parameter(torch.zeros(self.g.shape[1]))
        self.u = nn.Parameter(torch.zeros(()))

    def shared_parameters(self):
        return [self.theta]

    def out(self):
        per_task = self.g @ self.theta + self.c * self.u
        losses, mask = matrix(per_task)
        return losses, mask, ModelOutput({str(k): per_task[k].expand(1) for k in range(len(self.c))})


def pcgrad_grads(model, seed=0):
    w = create_weighting("pcgrad", [str(k) for k in range(len(model.c))])
    w.attach(model)
    losses, mask, out = model.out()
    torch.manual_seed(seed)
    res = w(losses, mask, {}, out)
    res.loss.backward()
    return res, model.theta.grad, model.u.grad


def test_pcgrad_projects_conflicting_gradients_on_the_shared_parameters_by_hand():
    # g1 = (1, 0), g2 = (-1, 1): g1·g2 = -1 < 0
    # g1' = g1 - (-1/2) g2 = (0.5, 0.5); g2' = g2 - (-1/1) g1 = (0, 1); sum = (0.5, 1.5)
    model = Bilinear([[1.0, 0.0], [-1.0, 1.0]], [1.0, -2.0])
    res, theta_grad, u_grad = pcgrad_grads(model)
    assert theta_grad.tolist() == pytest.approx([0.5, 1.5])
    assert u_grad.item() == pytest.approx(-1.0)  # not shared: the usual Σ_k ∂L_k/∂u
    assert res.loss.item() == pytest.approx(0.0)  # reported loss is Σ_k L_k (θ = u = 0)
    assert res.task_weights.tolist() == [1.0, 1.0]


def test_pcgrad_leaves_non_conflicting_gradients_alone():
    model = Bilinear([[1.0, 0.0], [1.0, 1.0]], [0.0, 0.0])
    assert pcgrad_grads(model)[1].tolist() == pytest.approx([2.0, 1.0])


def test_pcgrad_matches_an_independent_projection_with_the_same_random_order():
    rng = np.random.default_rng(3)
    g = rng.normal(size=(4, 5))
    model = Bilinear(g.astype(np.float32).tolist(), [0.0] * 4)
    _, theta_grad, _ = pcgrad_grads(model, seed=11)
    torch.manual_seed(11)  # the strategy draws one torch.randperm(K) per task, tasks in order
    orders = [torch.randperm(4).tolist() for _ in range(4)]
    pc = g.copy()
    for i in range(4):  # Algorithm 1, written independently in numpy
        for j in orders[i]:
            if j != i and pc[i] @ g[j] < 0:
                pc[i] = pc[i] - (pc[i] @ g[j]) / (g[j] @ g[j]) * g[j]
    assert np.allclose(theta_grad.numpy(), pc.sum(0), atol=1e-5)
    assert not np.allclose(pc.sum(0), g.sum(0))  # the example has conflicts
    assert torch.allclose(project_conflicting(torch.tensor(g), orders), torch.tensor(pc), atol=1e-10)


# -- end to end ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["uncertainty", "gradnorm", "dwa", "pcgrad"])
def test_cli_mmoe_with_each_weighting_logs_task_weights(tmp_path, name):
    out = tmp_path / "run"
    proc = run_cli(
        [*TINY, "model=mmoe", f"weighting={name}", "logger=csv", "trainer.log_every_n_steps=1", f"hydra.run.dir={out}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["weighting"] == name and 0.0 < res["metrics"]["test"]["purchase"]["auc"] < 1.0
    rows = [r for r in csv.DictReader((out / "logs" / "metrics.csv").open()) if r.get("train/weight_click")]
    weights = np.array([[float(r[f"train/weight_{t}"]) for t in ("click", "long_view", "purchase")] for r in rows])
    assert len(weights) > 5
    if name in ("uncertainty", "gradnorm"):  # learned weights move within the first epoch
        assert not np.allclose(weights[-1], 1.0)
    if name == "gradnorm":
        assert np.allclose(weights.sum(1), 3.0, atol=1e-4)
    if name in ("dwa", "pcgrad"):  # DWA: ones in the first two epochs; PCGrad: always ones
        assert np.allclose(weights, 1.0)


@pytest.mark.slow
def test_cli_gradnorm_with_a_model_that_shares_nothing_fails_in_one_line(tmp_path):
    out = tmp_path / "bad"
    proc = run_cli([*TINY, "model=single_task", "weighting=gradnorm", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode != 0
    err = [line for line in proc.stderr.splitlines() if line.startswith("mtlbench: error:")]
    assert len(err) == 1 and "gradnorm" in err[0] and "SingleTask" in err[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (out / "results.json").exists()
