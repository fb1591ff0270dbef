"""rlw, gls, mgda, graddrop, gradvac, imtl: each method's defining equation on a hand example, its settings'
checks, and one short training run of all six with MMoE and PLE."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.errors import ConfigError
from mtlbench.factory import create_weighting
from mtlbench.models import ModelOutput
from mtlbench.registry import load_plugins
from mtlbench.weighting.graddrop import graddrop
from mtlbench.weighting.gradvac import vaccinate
from mtlbench.weighting.imtl import imtl_g_weights
from mtlbench.weighting.mgda import min_norm_2, min_norm_weights

from conftest import TINY, run_cli

TASKS = ["a", "b", "c"]


def make(name: str, tasks: list[str] = TASKS, **settings):
    load_plugins()
    return create_weighting(name, tasks, **settings)


def matrix(values: list[float], labelled: list[bool] | None = None) -> tuple[Tensor, Tensor]:
    losses = torch.tensor([values], requires_grad=True)
    mask = torch.tensor([labelled if labelled is not None else [True] * len(values)])
    return losses, mask


class Shared(nn.Module):
    """L_k = ½‖θ − c_k‖² on one shared vector θ: ∇L_k = θ − c_k, chosen by hand; Z = ``rep`` (an Identity on θ)."""

    def __init__(self, targets: Tensor, start: float = 0.0) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.full((targets.shape[1],), start))
        self.rep = nn.Identity()
        self.targets = targets
        self.tasks = [f"t{i}" for i in range(len(targets))]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.theta]

    def step(self, w) -> tuple[Tensor, object]:
        w.attach(self)
        self.zero_grad()
        z = self.rep(self.theta.unsqueeze(0))  # [1, P]
        losses = 0.5 * (z - self.targets).pow(2).sum(1).unsqueeze(0)  # [1, K]
        out = ModelOutput({t: z.sum(1) for t in self.tasks})  # every task reaches θ
        result = w(losses, torch.ones_like(losses, dtype=torch.bool), {}, out)
        result.loss.backward()
        assert self.theta.grad is not None
        return self.theta.grad.clone(), result


# -- RLW ------------------------------------------------------------------------------------------------------------


def test_rlw_weights_are_the_softmax_of_a_standard_normal_draw():
    w = make("rlw")
    losses, mask = matrix([0.5, 1.0, 2.0])
    torch.manual_seed(3)
    draw = torch.randn(3)
    torch.manual_seed(3)
    result = w(losses, mask, {}, None)
    assert torch.allclose(result.task_weights, torch.softmax(draw, 0))
    assert math.isclose(float(result.task_weights.sum()), 1.0, rel_tol=1e-6)
    assert torch.allclose(result.loss, (result.task_weights * torch.tensor([0.5, 1.0, 2.0])).sum())
    assert not torch.allclose(w(losses, mask, {}, None).task_weights, result.task_weights)  # a new draw per step


# -- GLS ------------------------------------------------------------------------------------------------------------


def test_gls_loss_is_the_geometric_mean_and_its_weights_the_gradient():
    w = make("gls")
    losses, mask = matrix([0.5, 2.0, 4.0])
    result = w(losses, mask, {}, None)
    assert math.isclose(result.loss.item(), (0.5 * 2.0 * 4.0) ** (1 / 3), rel_tol=1e-6)
    result.loss.backward()
    assert losses.grad is not None
    assert torch.allclose(losses.grad[0], result.task_weights)  # ∂L/∂L_k = L / (K L_k)
    assert torch.allclose(result.task_weights, result.loss.detach() / (3 * torch.tensor([0.5, 2.0, 4.0])))


def test_gls_leaves_out_tasks_without_labels():
    losses, mask = matrix([0.5, 0.0, 2.0], [True, False, True])
    result = make("gls")(losses, mask, {}, None)
    assert math.isclose(result.loss.item(), 1.0, rel_tol=1e-6) and float(result.task_weights[1]) == 0.0
    result.loss.backward()
    assert losses.grad is not None and torch.isfinite(losses.grad).all()


# -- MGDA -----------------------------------------------------------------------------------------------------------


def test_mgda_two_task_min_norm_is_algorithm_1s_closed_form():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-0.5, 2.0])
    gamma = float((g2 - g1) @ g2 / (g1 - g2).pow(2).sum())  # Algorithm 1, interior case
    assert torch.allclose(min_norm_weights(torch.stack([g1, g2])), torch.tensor([gamma, 1 - gamma]))
    grid = torch.linspace(0, 1, 100_001).unsqueeze(1)
    best = float(grid[((grid * g1 + (1 - grid) * g2).pow(2).sum(1)).argmin()])
    assert abs(best - gamma) < 1e-4
    assert min_norm_2(1.0, 1.5, 4.0) == 1.0 and min_norm_2(4.0, 1.5, 1.0) == 0.0  # the boundary cases


def test_mgda_frank_wolfe_finds_the_min_norm_point_of_orthogonal_gradients():
    grads = torch.diag(torch.tensor([1.0, 2.0, 4.0]))
    expected = torch.tensor([1.0, 1 / 4, 1 / 16])  # α_k ∝ 1/‖g_k‖² for orthogonal gradients
    assert torch.allclose(min_norm_weights(grads, max_iter=5000, tol=0.0), expected / expected.sum(), atol=1e-3)


def test_mgda_shared_gradient_is_the_min_norm_point():
    """Shared gradient d = Σ α g with α on the simplex and dᵀg_k ≥ ‖d‖² (equality where α_k > 0): the KKT
    conditions of Eq. 3."""
    model = Shared(torch.tensor([[1.0, 0.0, 0.5], [-1.0, 1.0, 0.0], [0.0, -1.0, 1.0]]))
    d, result = model.step(make("mgda", model.tasks, max_iter=20_000, tol=0.0))
    grads = -model.targets  # θ = 0: ∇L_k = −c_k
    alpha = result.task_weights
    assert torch.allclose(d, alpha @ grads, atol=1e-6) and math.isclose(float(alpha.sum()), 1.0, rel_tol=1e-6)
    proj = grads @ d
    assert (proj >= d @ d - 1e-4).all() and torch.allclose(proj[alpha > 1e-3], d @ d, atol=1e-3)


def test_mgda_ub_uses_the_representation_gradient_and_normalisations():
    model = Shared(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    d, result = model.step(make("mgda", model.tasks, rep_grad=True, representation="rep"))
    assert torch.allclose(result.task_weights, torch.tensor([0.2, 0.8]))  # min ‖γ(−2,0) + (1−γ)(0,−1)‖
    d, result = model.step(make("mgda", model.tasks, normalization="l2"))
    assert torch.allclose(result.task_weights, torch.tensor([0.5, 0.5]))  # unit gradients: the bisector
    assert torch.allclose(d, torch.tensor([-1.0, -0.5]))  # α on the un-normalised gradients


# -- GradDrop -------------------------------------------------------------------------------------------------------


def test_graddrop_sign_purity_and_masks_by_hand():
    z = torch.tensor([[1.0, -1.0], [1.0, 1.0]])  # [B=2, 2]
    grads = torch.tensor([[[1.0, 2.0], [1.0, 0.0]], [[-3.0, 1.0], [-3.0, 0.0]]])  # [K=2, B, 2]
    # G_i = Σ_b sign(z) ∘ ∇: task 0 (2, −2), task 1 (−6, −1); P = ½(1 + ΣG/Σ|G|) = (0.25, 0) per element
    new, keep = graddrop(z, grads, leak=0.0, u=torch.tensor([0.1, 0.5]))
    # element 0: P = 0.25 > u = 0.1 keeps the positive G (task 0); element 1: P = 0 < 0.5 keeps the negative (both)
    assert keep.tolist() == [[True, True], [False, True]]
    assert torch.equal(new, torch.stack([grads[0, :, 0], grads[:, :, 1].sum(0)], 1))
    all_kept, _ = graddrop(z, grads, leak=1.0, u=torch.tensor([0.1, 0.5]))
    assert torch.equal(all_kept, grads.sum(0))


def test_graddrop_keeps_gradients_that_agree_in_sign():
    model = Shared(torch.tensor([[3.0, 2.0], [4.0, 3.0]]), start=1.0)  # Z = θ = 1 > 0, both gradients negative
    d, result = model.step(make("graddrop", model.tasks, representation="rep"))
    assert torch.allclose(d, torch.tensor([-5.0, -3.0])) and torch.allclose(result.task_weights, torch.ones(2))


def test_rep_grad_weightings_refuse_an_unknown_submodule():
    model = Shared(torch.eye(2))
    with pytest.raises(ConfigError, match="representation='nope'"):
        make("graddrop", model.tasks, representation="nope").attach(model)


# -- GradVac --------------------------------------------------------------------------------------------------------


def test_gradvac_moves_the_cosine_to_the_target():
    grads = torch.tensor([[1.0, 0.0], [-0.6, 0.8]])  # cos = −0.6
    targets = torch.full((2, 2), 0.3)
    new, ema, coef = vaccinate(grads, targets, [[1], [0]], beta=0.01)
    cos = F.cosine_similarity(new, grads.flip(0), dim=1)
    assert torch.allclose(cos, torch.tensor([0.3, 0.3]), atol=1e-6)  # g_i' · g_j at the target
    assert torch.allclose(ema[0, 1], torch.tensor(0.99 * 0.3 + 0.01 * -0.6))  # EMA of the observed cosine
    assert torch.allclose(new, grads + coef @ grads)


def test_gradvac_updates_the_targets_of_pairs_it_did_not_adjust():
    grads = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # cos 0.6 ≥ target 0: no adjustment
    new, ema, coef = vaccinate(grads, torch.zeros(2, 2), [[1], [0]], beta=0.5)
    assert torch.equal(new, grads) and torch.allclose(ema, torch.tensor([[0.0, 0.3], [0.3, 0.0]]))
    _, ema_libmtl, _ = vaccinate(grads, torch.zeros(2, 2), [[1], [0]], beta=0.5, update_only_adjusted=True)
    assert torch.equal(ema_libmtl, torch.zeros(2, 2))


def test_gradvac_state_is_a_buffer_and_beta_is_checked():
    w = make("gradvac")
    assert "targets" in w.state_dict()
    with pytest.raises(ConfigError, match="beta"):
        make("gradvac", beta=0.0)


# -- IMTL -----------------------------------------------------------------------------------------------------------


def test_imtl_g_aggregated_gradient_has_equal_projections_on_the_unit_gradients():
    g = torch.tensor([[1.0, 0.2, 0.0], [-0.5, 2.0, 0.3], [0.1, -0.4, 3.0]])
    alpha = imtl_g_weights(g)
    agg = alpha @ g
    proj = g / g.norm(dim=1, keepdim=True) @ agg
    assert math.isclose(float(alpha.sum()), 1.0, rel_tol=1e-6)
    assert torch.allclose(proj, proj[0].expand(3), atol=1e-5)


def test_imtl_g_leaves_out_tasks_with_zero_gradient():
    g = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    alpha = imtl_g_weights(g)
    assert float(alpha[1]) == 0.0 and math.isclose(float(alpha.sum()), 1.0, rel_tol=1e-6)


def test_imtl_l_loss_is_scaled_and_regularised():
    w = make("imtl", mode="loss")
    with torch.no_grad():
        w.loss_scale.copy_(torch.tensor([0.0, 1.0, -1.0]))
    losses, mask = matrix([0.5, 1.0, 2.0])
    result = w(losses, mask, {}, None)
    s = torch.tensor([0.0, 1.0, -1.0])
    assert torch.allclose(result.loss, (s.exp() * torch.tensor([0.5, 1.0, 2.0]) - s).sum())
    assert torch.allclose(result.task_weights, s.exp())


def test_imtl_hybrid_balances_the_projections_of_the_scaled_gradients():
    model = Shared(torch.tensor([[2.0, 0.0], [0.5, 1.0]]))
    w = make("imtl", model.tasks, mode="hybrid")
    with torch.no_grad():
        w.loss_scale.copy_(torch.tensor([0.5, -0.3]))
    d, result = model.step(w)
    scaled = -model.targets * torch.tensor([0.5, -0.3]).exp().unsqueeze(1)  # ∇(e^s L) at θ = 0
    proj = scaled / scaled.norm(dim=1, keepdim=True) @ d
    assert torch.allclose(proj[0], proj[1], atol=1e-5)
    assert w.loss_scale.grad is not None  # s learns from its own loss, e^s L − s


def test_imtl_mode_is_checked():
    with pytest.raises(ConfigError, match="mode='both'"):
        make("imtl", mode="both")


# -- end to end -----------------------------------------------------------------------------------------------------

NEW = ["rlw", "gls", "mgda", "graddrop", "gradvac", "imtl"]


@pytest.mark.slow
def test_cli_the_six_weightings_train_mmoe_and_ple(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *TINY, "model=mmoe,ple", f"weighting={','.join(NEW)}", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert sorted((r["model"], r["weighting"]) for r in results) == sorted((m, w) for m in ("mmoe", "ple") for w in NEW)
    for r in results:
        auc = r["metrics"]["test"]["click"]["auc"]
        assert math.isfinite(auc), (r["model"], r["weighting"], auc)
