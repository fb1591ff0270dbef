"""Tests for mtlbench.metrics against independent computations (sklearn, group by group, and by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import ndcg_score, roc_auc_score

from mtlbench.metrics import GAUC, NDCG, LogLoss, build_metrics, gauc, grouped_auc, log_loss, ndcg_at_k

# Each layout takes a different internal sort path: packed int64 key (small ids), the same after
# re-indexing ids that span more than 2**30, and the generic lexsort (float64 scores).
LAYOUTS = {
    "float32-small-ids": (torch.float32, lambda ids: ids + 5),
    "float32-huge-ids": (torch.float32, lambda ids: ids * 7_919_000_003 - 2**40),
    "float64-ids": (torch.float64, lambda ids: ids * 13 - 1000),
    "float16-ids": (torch.float16, lambda ids: ids * 3),
}


def make_data(
    seed: int, n_groups: int = 400, decimals: int | None = 1, layout: str = "float32-small-ids"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random rows over ``n_groups`` groups of sizes 1..40, shuffled, with some single-class groups.

    With ``decimals`` set, scores are rounded (many ties); otherwise they are continuous (no ties).
    Scores lie in [-1, 1] so negative scores are covered too.
    """
    dtype, relabel = LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 41, size=n_groups)
    sizes[:20] = 1  # singleton groups
    ids = np.repeat(rng.permutation(n_groups * 3)[:n_groups], sizes)  # non-contiguous ids
    rate = np.repeat(rng.uniform(0.05, 0.6, size=n_groups), sizes)
    target = (rng.uniform(size=ids.size) < rate).astype(np.float64)
    kind = np.repeat(np.arange(n_groups) % 10, sizes)
    target[kind == 1] = 0.0  # all-negative groups
    target[kind == 2] = 1.0  # all-positive groups
    scores = rng.uniform(-1.0, 1.0, size=ids.size) + 0.5 * target  # informative but imperfect
    if decimals is not None:
        scores = np.round(scores, decimals)
    perm = rng.permutation(ids.size)
    preds = torch.tensor(scores[perm]).to(dtype)
    return preds, torch.tensor(target[perm]), relabel(torch.tensor(ids[perm], dtype=torch.int64))


def sklearn_grouped_auc(preds, target, group) -> dict[int, float | None]:
    """AUC per group id via sklearn, None for groups with a single class."""
    p, y, g = preds.double().numpy(), target.numpy(), group.numpy()
    out: dict[int, float | None] = {}
    for gid in np.unique(g):
        mask = g == gid
        out[int(gid)] = roc_auc_score(y[mask], p[mask]) if len(np.unique(y[mask])) == 2 else None
    return out


def sklearn_ndcg(preds, target, group, k: int) -> float:
    """Mean NDCG@k over groups with a positive; sklearn needs >= 2 items, a single positive item scores 1."""
    p, y, g = preds.double().numpy(), target.numpy(), group.numpy()
    values = []
    for gid in np.unique(g):
        mask = g == gid
        if y[mask].sum() == 0:
            continue
        values.append(1.0 if mask.sum() == 1 else ndcg_score([y[mask]], [p[mask]], k=k))
    return float(np.mean(values))


# --- grouped AUC / GAUC ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("seed", [0, 1])
def test_grouped_auc_and_gauc_match_sklearn(layout: str, seed: int) -> None:
    preds, target, group = make_data(seed, layout=layout)
    auc, impressions, valid = grouped_auc(preds, target, group)
    expected = sklearn_grouped_auc(preds, target, group)
    ids = sorted(expected)
    assert auc.shape == impressions.shape == valid.shape == (len(ids),)
    sizes = [int((group == gid).sum()) for gid in ids]
    assert impressions.tolist() == sizes
    assert valid.tolist() == [expected[gid] is not None for gid in ids]
    assert 0 < int(valid.sum()) < len(ids) - 20  # single-class and singleton groups are present
    assert torch.isnan(auc[~valid]).all()
    want = torch.tensor([expected[gid] for gid in ids if expected[gid] is not None], dtype=torch.float64)
    torch.testing.assert_close(auc[valid].double(), want, rtol=0, atol=1e-6)

    # GAUC: impression-weighted mean over the groups sklearn can score.
    pairs = [(sizes[i], expected[gid]) for i, gid in enumerate(ids) if expected[gid] is not None]
    expected_gauc = sum(n * value for n, value in pairs) / sum(n for n, _ in pairs)
    assert gauc(preds, target, group).item() == pytest.approx(expected_gauc, abs=1e-6)


def test_grouped_auc_hand_examples() -> None:
    # group 7: positive above both negatives -> 1; group 3: tie between the positive and one negative
    # -> (1 + 0.5) / 2; group 9: one class only; -0.0 and +0.0 are tied in group 4.
    preds = torch.tensor([0.9, 0.1, 0.2, 0.5, 0.5, 0.2, 0.3, 0.4, -0.0, 0.0, -0.5])
    target = torch.tensor([1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0])
    group = torch.tensor([7, 7, 7, 3, 3, 3, 9, 9, 4, 4, 4])
    auc, impressions, valid = grouped_auc(preds, target, group)
    assert impressions.tolist() == [3, 3, 3, 2]  # ids 3, 4, 7, 9
    assert valid.tolist() == [True, True, True, False]
    torch.testing.assert_close(auc[:3], torch.tensor([0.75, 0.75, 1.0]))
    assert gauc(preds, target, group).item() == pytest.approx((3 * 0.75 + 3 * 0.75 + 3 * 1.0) / 9)


def test_float64_scores_keep_full_precision() -> None:
    # These scores are equal once rounded to float32; in float64 the positive is strictly above.
    preds = torch.tensor([0.5, 0.5 + 1e-12, 0.5], dtype=torch.float64)
    target, group = torch.tensor([0.0, 1.0, 0.0]), torch.zeros(3, dtype=torch.long)
    assert gauc(preds, target, group).item() == 1.0
    assert ndcg_at_k(preds, target, group, 1).item() == 1.0
    assert gauc(preds.float(), target, group).item() == 0.5


def test_gauc_is_nan_without_valid_group() -> None:
    preds, group = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1, 1, 2])
    assert torch.isnan(gauc(preds, torch.tensor([1.0, 1.0, 0.0]), group))
    assert torch.isnan(gauc(preds[:0], preds[:0], group[:0]))


# --- NDCG -------------------------------------------------------------------------------------------


def test_ndcg_hand_examples() -> None:
    log2 = math.log2
    preds = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4, 0.9, 0.5, 0.5, 0.5, 0.3])
    target = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    group = torch.tensor([1, 1, 1, 2, 2, 3, 4, 4, 4, 5])
    # group 1: ranks neg, pos, pos; group 2: no positive (skipped); group 3: a single positive item;
    # group 4: all tied, the positive is ranked last (pessimistic); group 5: single positive item.
    at1 = (0.0 + 1.0 + 0.0 + 1.0) / 4
    g1_at5 = (1 / log2(3) + 1 / log2(4)) / (1 + 1 / log2(3))
    at5 = (g1_at5 + 1.0 + 1 / log2(4) + 1.0) / 4
    assert ndcg_at_k(preds, target, group, 1).item() == pytest.approx(at1)
    assert ndcg_at_k(preds, target, group, 5).item() == pytest.approx(at5)
    assert ndcg_at_k(preds[:3], target[:3], group[:3], 1).item() == 0.0
    assert ndcg_at_k(preds[:3], target[:3], group[:3], 5).item() == pytest.approx(g1_at5)
    assert ndcg_at_k(preds[:3], target[:3], group[:3], 2).item() == pytest.approx((1 / log2(3)) / (1 + 1 / log2(3)))


def test_ndcg_ties_are_pessimistic() -> None:
    # Order within the tie is negative first, whatever the row order.
    preds = torch.tensor([0.5, 0.5, 0.9])
    target = torch.tensor([1.0, 0.0, 0.0])
    group = torch.zeros(3, dtype=torch.long)
    assert ndcg_at_k(preds, target, group, 2).item() == 0.0
    assert ndcg_at_k(preds, target, group, 3).item() == pytest.approx(0.5)
    assert ndcg_at_k(preds.flip(0), target.flip(0), group, 3).item() == pytest.approx(0.5)
    # -0.0 ties with +0.0 too.
    assert ndcg_at_k(torch.tensor([0.0, -0.0]), torch.tensor([1.0, 0.0]), group[:2], 1).item() == 0.0


def test_ndcg_without_positive_is_nan_and_k_is_checked() -> None:
    assert torch.isnan(ndcg_at_k(torch.rand(4), torch.zeros(4), torch.arange(4), 3))
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k(torch.rand(4), torch.ones(4), torch.arange(4), 0)


@pytest.mark.parametrize("layout", ["float32-small-ids", "float32-huge-ids", "float64-ids"])
@pytest.mark.parametrize("k", [1, 5])
def test_ndcg_matches_sklearn_without_ties(layout: str, k: int) -> None:
    preds, target, group = make_data(4, decimals=None, layout=layout)
    assert torch.unique(preds).numel() == preds.numel()
    expected = sklearn_ndcg(preds, target, group, k)
    assert ndcg_at_k(preds, target, group, k).item() == pytest.approx(expected, abs=1e-6)


# --- invariances and NaN targets --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["float32-small-ids", "float64-ids"])
def test_row_order_and_group_labels_do_not_matter(layout: str) -> None:
    preds, target, group = make_data(5, layout=layout)
    auc, impressions, valid = grouped_auc(preds, target, group)
    base = torch.stack([gauc(preds, target, group), ndcg_at_k(preds, target, group, 3)])

    perm = torch.randperm(preds.numel(), generator=torch.Generator().manual_seed(0))
    permuted = preds[perm], target[perm], group[perm]
    assert torch.equal(torch.stack([gauc(*permuted), ndcg_at_k(*permuted, 3)]), base)
    p_auc, p_imp, p_valid = grouped_auc(*permuted)
    torch.testing.assert_close(p_auc, auc, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(p_imp, impressions) and torch.equal(p_valid, valid)

    # Relabel ids with a non-monotone injective map: per-group values follow their group.
    ids = torch.unique(group)
    new_ids = torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(1)) * 1_000_003 - 77
    relabelled = new_ids[torch.searchsorted(ids, group)]
    assert torch.equal(torch.stack([gauc(preds, target, relabelled), ndcg_at_k(preds, target, relabelled, 3)]), base)
    r_auc, r_imp, r_valid = grouped_auc(preds, target, relabelled)
    back = torch.argsort(torch.argsort(new_ids))  # position of each original group in the new id order
    torch.testing.assert_close(r_auc[back], auc, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(r_imp[back], impressions) and torch.equal(r_valid[back], valid)


def test_nan_targets_are_ignored() -> None:
    preds, target, group = make_data(6)
    probs = torch.sigmoid(preds)
    masked = target.clone()
    drop = torch.rand(target.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    masked[drop] = float("nan")
    keep = ~drop
    assert gauc(preds, masked, group) == gauc(preds[keep], target[keep], group[keep])
    assert ndcg_at_k(preds, masked, group, 5) == ndcg_at_k(preds[keep], target[keep], group[keep], 5)
    assert log_loss(probs, masked) == log_loss(probs[keep], target[keep])
    auc, impressions, _ = grouped_auc(preds, masked, group)
    assert int(impressions.sum()) == int(keep.sum())
    assert not torch.isnan(gauc(preds, masked, group))


# --- log loss ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_loss_matches_sklearn(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(7)
    p = rng.uniform(0.01, 0.99, size=5000)
    y = (rng.uniform(size=5000) < p).astype(np.float64)
    value = log_loss(torch.tensor(p, dtype=dtype), torch.tensor(y))
    assert value.dtype == dtype
    assert value.item() == pytest.approx(sk_log_loss(y, p, labels=[0, 1]), rel=1e-6)


def test_log_loss_clips_probabilities() -> None:
    value = log_loss(torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.0, 1.0]), eps=1e-4)
    assert value.item() == pytest.approx((2 * -math.log(1e-4) - math.log(1 - 1e-4)) / 3)
    assert math.isfinite(log_loss(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])).item())


# --- torchmetrics classes ---------------------------------------------------------------------------


def _chunks(*tensors: torch.Tensor, n: int = 4):
    size = math.ceil(tensors[0].numel() / n)
    for start in range(0, tensors[0].numel(), size):
        yield tuple(t[start : start + size] for t in tensors)


def test_grouped_metric_classes_match_functional_and_reset() -> None:
    preds, target, group = make_data(8)
    target[::17] = float("nan")
    metrics = {"gauc": GAUC(), "ndcg": NDCG(k=5)}
    expected = {"gauc": gauc(preds, target, group), "ndcg": ndcg_at_k(preds, target, group, 5)}
    for name, metric in metrics.items():
        with pytest.warns(UserWarning, match="before the ``update``"):
            assert torch.isnan(metric.compute())  # nothing seen yet
        for p, t, g in _chunks(preds, target, group):  # groups are split across chunks
            metric.update(p, t, {"user": g})
        torch.testing.assert_close(metric.compute(), expected[name], rtol=0, atol=1e-7)
        metric.reset()
        other = make_data(9)
        metric.update(*other[:2], {"user": other[2]})
        want = gauc(*other) if name == "gauc" else ndcg_at_k(*other, 5)
        torch.testing.assert_close(metric.compute(), want, rtol=0, atol=1e-7)


def _ddp_compute(make_metric, shards: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """Simulate DDP: one metric per rank, each synced by a fake all-gather over all ranks' states."""
    world: list[dict[str, torch.Tensor]] = []
    ranks = []
    for shard in shards:
        calls: list[str] = []

        def gather(tensor: torch.Tensor, group=None, _calls=calls) -> list[torch.Tensor]:
            name = list(world[0])[len(_calls)]  # states are gathered one by one, in declaration order
            _calls.append(name)
            return [state[name] for state in world]

        metric = make_metric(dist_sync_fn=gather, distributed_available_fn=lambda: True)
        metric.update(*shard[:2], {"user": shard[2]} if len(shard) > 2 else None)
        ranks.append((metric, calls))
        world.append({k: torch.cat(v) if isinstance(v, list) else v for k, v in metric.metric_state.items()})
    results = []
    for metric, calls in ranks:
        results.append(metric.compute())
        assert calls == list(world[0])  # every state was synced
    return results


def test_distributed_sync_gathers_then_computes() -> None:
    # Groups are split across ranks, so averaging per-rank values would give a different number.
    preds, target, group = make_data(10)
    target[::13] = float("nan")
    cuts = [0, preds.numel() // 3, preds.numel() // 2, preds.numel()]
    shards = [(preds[a:b], target[a:b], group[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    expected = {
        GAUC: gauc(preds, target, group),
        NDCG: ndcg_at_k(preds, target, group, 3),
        LogLoss: log_loss(torch.sigmoid(preds), target),
    }
    for cls, want in expected.items():
        if cls is LogLoss:
            results = _ddp_compute(cls, [(torch.sigmoid(p), t) for p, t, _ in shards])
        else:
            results = _ddp_compute((lambda **kw: NDCG(3, **kw)) if cls is NDCG else cls, shards)
        for value in results:
            torch.testing.assert_close(value, want, rtol=1e-6, atol=1e-7)


def test_log_loss_class_chunks_nan_and_reset() -> None:
    rng = np.random.default_rng(11)
    p = torch.tensor(rng.uniform(0.01, 0.99, size=3001), dtype=torch.float32)
    y = torch.tensor((rng.uniform(size=3001) < 0.4).astype(np.float32))
    y[::10] = float("nan")
    metric = LogLoss()
    for chunk in _chunks(p, y, n=7):
        metric.update(*chunk)
    keep = ~torch.isnan(y)
    want = sk_log_loss(y[keep].numpy(), p[keep].double().numpy(), labels=[0, 1])
    assert metric.compute().item() == pytest.approx(want, rel=1e-6)
    other = LogLoss()
    other.update(p[:5], y[:5])
    metric.reset()
    metric.update(p[:5], y[:5])
    assert metric.compute() == other.compute()
    assert metric.sum_loss.dtype == torch.float64


def test_ndcg_class_checks_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        NDCG(k=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    preds, target, group = make_data(12)
    cuda = [t.cuda() for t in (preds, target, group)]
    torch.testing.assert_close(gauc(*cuda).cpu(), gauc(preds, target, group))
    torch.testing.assert_close(ndcg_at_k(*cuda, 5).cpu(), ndcg_at_k(preds, target, group, 5))
    torch.testing.assert_close(log_loss(torch.sigmoid(cuda[0]), cuda[1]).cpu(), log_loss(torch.sigmoid(preds), target))


def test_per_scenario_auc_and_gauc_match_sklearn_on_each_scenario():
    from mtlbench.metrics.scenario import ScenarioMetrics

    rng = np.random.default_rng(3)
    n = 3000
    scen = rng.integers(0, 3, n)
    user = rng.integers(0, 60, n)
    y = rng.integers(0, 2, n).astype(np.float32)
    p = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1).round(2).astype(np.float32)
    m = ScenarioMetrics()
    for chunk in np.array_split(np.arange(n), 4):
        ps, ys, ss, us = (torch.from_numpy(a[chunk]) for a in (p, y, scen, user))
        m.update(ps, ys, {"scenario": ss, "user": us})
    got = m.compute()
    for s in range(3):
        rows = scen == s
        assert got[f"auc@scenario={s}"] == pytest.approx(roc_auc_score(y[rows], p[rows]), abs=1e-6)
        num = den = 0.0
        for u in np.unique(user[rows]):
            r = rows & (user == u)
            if 0 < y[r].sum() < r.sum():
                num += r.sum() * roc_auc_score(y[r], p[r])
                den += r.sum()
        assert got[f"gauc@scenario={s}"] == pytest.approx(num / den, abs=1e-6)


# --- metrics as plug-ins: the registry, the update contract, directions ---------------------------------------
import itertools  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from torchmetrics import Metric  # noqa: E402

import mtlbench  # noqa: E402
from mtlbench.errors import ConfigError, UnknownNameError  # noqa: E402
from mtlbench.metrics import (  # noqa: E402
    GROUP_KEYS,
    RecMetric,
    available_groups,
    batch_groups,
    create_metric,
    higher_is_better,
    metric_class,
)
from mtlbench.registry import METRICS, register_metric  # noqa: E402


class Brier(RecMetric):
    """A lower-is-better metric as a third party would write it: mean squared error of the probabilities."""

    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds, target, groups=None) -> None:
        self.total += ((preds.double() - target.double()) ** 2).sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


@pytest.fixture
def scratch_metrics(monkeypatch):
    """Registrations made by a test are undone after it."""
    mtlbench.list_metrics()  # built-ins and installed plugins first
    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))


def test_builtin_metrics_are_registered_and_listed():
    names = mtlbench.list_metrics()
    assert {"auc", "logloss", "gauc", "sgauc", "ndcg", "scenario"} <= set(names)
    assert mtlbench.list_metrics("*gauc") == [n for n in names if n.endswith("gauc")]
    ndcg = create_metric("ndcg@5")
    assert type(ndcg) is metric_class("ndcg") and ndcg.k == 5
    assert metric_class("sgauc").groups == ("session",) and metric_class("gauc").groups == ("user",)


def test_register_metric_adds_a_name_and_checks_the_class(scratch_metrics):
    assert register_metric("brier")(Brier) is Brier
    assert "brier" in mtlbench.list_metrics() and isinstance(create_metric("brier"), Brier)
    with pytest.raises(ValueError, match="already registered"):
        register_metric("brier")(LogLoss)

    class Undirected(RecMetric):  # higher_is_better left at torchmetrics' None
        pass

    with pytest.raises(TypeError, match="higher_is_better"):
        register_metric("undirected")(Undirected)
    with pytest.raises(ValueError, match="bare name"):
        register_metric("brier@3")(Brier)


@pytest.mark.parametrize(
    "name, words",
    [
        ("aucc", ["unknown metric 'aucc'", "did you mean 'auc'"]),
        ("ndgc@5", ["'ndgc@5'", "did you mean 'ndcg'"]),
        ("ndcg", ["'ndcg'", "needs its parameter k"]),
        ("ndcg@x", ["'ndcg@x'", "must be an integer"]),
        ("ndcg@0", ["'ndcg@0'", "k must be >= 1"]),
        ("auc@3", ["'auc@3'", "takes no '@' parameter"]),
    ],
)
def test_a_bad_metric_name_is_a_one_line_config_error(name, words):
    with pytest.raises(ConfigError) as e:
        create_metric(name)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def _config_name(name: str) -> str:
    """A usable config name of a registered metric: parametrised ones with ``@3``."""
    return f"{name}@3" if getattr(metric_class(name), "param", None) else name


def _same(a, b) -> None:
    if isinstance(a, dict):
        assert list(a) == list(b)
        np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=1e-6)
    else:
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize("name", mtlbench.list_metrics())
def test_every_registered_metric_keeps_the_update_contract(name):
    """update(preds, target, groups) with every group the batch may offer, in chunks, equals one update; the
    declared groups are enough; reset forgets; compute gives one value or {results key: value}."""
    cls = metric_class(name)
    assert issubclass(cls, Metric) and isinstance(cls.higher_is_better, bool)
    assert set(cls.groups) <= set(GROUP_KEYS)
    rng = np.random.default_rng(5)
    n = 3000
    target = torch.tensor((rng.uniform(size=n) < 0.3).astype(np.float32))
    preds = torch.tensor(np.clip(0.3 * target.numpy() + 0.7 * rng.uniform(size=n), 0, 1), dtype=torch.float32)
    groups = {
        g: torch.tensor(rng.integers(0, size, n), dtype=torch.int64)
        for g, size in zip(GROUP_KEYS, (60, 300, 3, 4, 4), strict=True)
    }

    whole = create_metric(_config_name(name))
    whole.update(preds, target, groups)
    value = whole.compute()
    chunked = create_metric(_config_name(name))
    for rows in np.array_split(np.arange(n), 5):
        chunked.update(preds[rows], target[rows], {g: ids[rows] for g, ids in groups.items()})
    _same(chunked.compute(), value)

    declared = create_metric(_config_name(name))
    declared.update(preds, target, {g: groups[g] for g in cls.groups})
    own = declared.compute()
    if getattr(cls, "dict_output", False):
        assert isinstance(value, dict) and value and own.items() <= value.items()  # optional groups add keys
        for key in value:  # every key names the registered metric that gives its direction
            assert isinstance(higher_is_better(key), bool)
    else:
        _same(own, value)
        assert value.numel() == 1 and torch.isfinite(value)

    whole.reset()
    whole.update(preds[:500], target[:500], {g: ids[:500] for g, ids in groups.items()})
    fresh = create_metric(_config_name(name))
    fresh.update(preds[:500], target[:500], {g: ids[:500] for g, ids in groups.items()})
    _same(whole.compute(), fresh.compute())


def test_higher_is_better_comes_from_the_metric_class(scratch_metrics):
    from mtlbench.report import stats

    cases = {
        "auc": True,
        "logloss": False,
        "gauc": True,
        "sgauc": True,
        "ndcg@5": True,
        "auc@scenario=2": True,
        "gauc@scenario=1": True,
    }
    for key, higher in cases.items():
        assert higher_is_better(key) is higher and stats.higher_is_better(key) is higher, key
    register_metric("brier")(Brier)
    assert higher_is_better("brier") is False and stats.higher_is_better("brier") is False
    with pytest.raises(UnknownNameError, match="did you mean 'brier'"):
        higher_is_better("brierr")
    # a results key no installed metric claims (e.g. written by a plugin that is not installed): higher, no crash
    assert stats.higher_is_better("precision_from_elsewhere@10") is True


def test_report_bolds_and_tests_in_the_direction_of_a_plugin_metric(scratch_metrics, tmp_path):
    from test_report import make_run

    from mtlbench.report.tables import ReportSettings, build

    register_metric("brier")(Brier)
    brier = {"mmoe": [0.20, 0.21, 0.19], "ple": [0.25, 0.26, 0.24], "single_task": [0.30, 0.31, 0.29]}
    for model, values in brier.items():
        for seed, v in enumerate(values):  # "mystery": a key of a metric that is not installed
            make_run(tmp_path, model, seed, {"click": {"auc": 0.7, "brier": v, "mystery": v}})
    board = build([tmp_path], ReportSettings(metrics=["brier", "mystery"], scenario_metrics=[], base=None))
    table = board.sections[0].tables[0]
    rank = {(row.label, col.metric): cell.rank for row in table.rows for col, cell in zip(table.columns, row.cells)}
    assert [rank[(m, "brier")] for m in ("mmoe", "ple", "single_task")] == [1, 2, 3]  # lower is better
    assert [rank[(m, "mystery")] for m in ("mmoe", "ple", "single_task")] == [3, 2, 1]  # unknown: higher
    best = {c.column.metric: (c.best, c.baseline) for c in table.comparisons}
    assert best == {"brier": ("mmoe", "ple"), "mystery": ("single_task", "ple")}


@pytest.mark.parametrize("monitor, mode", [("auc", "max"), ("ndcg@5", "max"), ("logloss", "min"), ("brier", "min")])
def test_checkpoint_and_early_stopping_direction_follow_the_metric_class(scratch_metrics, tmp_path, monitor, mode):
    from mtlbench.training.run import build_callbacks

    from conftest import compose_cfg

    register_metric("brier")(Brier)
    overrides = [f"monitor={monitor}", "callbacks.early_stopping_patience=3", "callbacks.checkpoint_every_n_steps=null"]
    # best.ckpt's, last.ckpt's (no monitor) and early stopping's (no step saves)
    callbacks = [c for c in build_callbacks(compose_cfg(overrides), tmp_path) if c.monitor is not None]
    assert {type(c).__name__: c.mode for c in callbacks} == {"ModelCheckpoint": mode, "EarlyStopping": mode}
    assert all(c.monitor == f"valid/{monitor}_mean" for c in callbacks)


def test_a_lower_is_better_monitor_keeps_the_epoch_with_the_minimum(scratch_metrics, tmp_path):
    """Lightning, with the callbacks of a run monitoring a lower-is-better plugin metric, keeps the minimum."""
    import pytorch_lightning as pl

    from mtlbench.training.run import build_callbacks

    from conftest import compose_cfg

    class Logs(pl.LightningModule):  # logs a fixed validation value per epoch
        def __init__(self, values: list[float]) -> None:
            super().__init__()
            self.values = values
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w - 1.0).pow(2).sum()

        def validation_step(self, batch, batch_idx) -> None:
            pass

        def on_validation_epoch_end(self) -> None:
            self.log("valid/brier_mean", self.values[self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    register_metric("brier")(Brier)
    cfg = compose_cfg(["monitor=brier", "callbacks.early_stopping_patience=5"])
    trainer = pl.Trainer(
        max_epochs=4,
        callbacks=build_callbacks(cfg, tmp_path),
        logger=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(1)))
    trainer.fit(Logs([0.30, 0.10, 0.20, 0.40]), train_dataloaders=data, val_dataloaders=data)
    assert float(trainer.checkpoint_callback.best_model_score) == pytest.approx(0.10)
    assert torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)["epoch"] == 1


@pytest.mark.parametrize("user, session, scenario", list(itertools.product([None, "u"], [None, "s"], [None, "c"])))
def test_the_default_metric_list_is_the_former_fixed_set(user, session, scenario):
    from mtlbench.training.module import task_metrics

    schema = SimpleNamespace(user_field=user, session_field=session, scenario_field=scenario)
    names = [name for name, _ in task_metrics(schema, (1, 5)).items()]
    expected = (
        ["auc", "logloss"]
        + (["gauc", "ndcg@1", "ndcg@5"] if user else [])
        + (["sgauc"] if session else [])
        + (["scenario"] if scenario else [])
    )
    assert names == expected
    assert [name for name, _ in task_metrics(schema, (3,), ["ndcg", "auc", "ndcg@3", "ndcg@10"]).items()] == (
        ["ndcg@3", "auc", "ndcg@10"] if user else ["auc"]
    )  # bare ndcg: one per ndcg_k; repeats dropped


def test_groups_offered_by_a_dataset_and_a_batch():
    schema = SimpleNamespace(user_field="u", session_field=None, scenario_field="c")
    assert available_groups(schema) == ("user", "scenario")
    assert available_groups(schema, ("rule_stage",)) == ("user", "scenario", "stage")
    batch = {"user": torch.arange(3), "scenario": torch.zeros(3), "rule_stage": torch.ones(3), "labels": None}
    assert set(batch_groups(batch)) == {"user", "scenario", "stage"}


SMALL = [
    "dataset.n_rows=1500",
    "dataset.n_users=200",
    "dataset.n_items=100",
    "trainer.max_epochs=1",
    "batch_size=512",
    "logger=none",
]


def test_the_eval_step_feeds_every_metric_the_labelled_rows_and_their_groups():
    from mtlbench.metrics.scenario import per_scenario_gauc
    from mtlbench.training.run import build_components

    from conftest import compose_cfg

    overrides = [
        *SMALL,
        "dataset.n_rows=6000",
        "dataset.n_users=60",
        "eval_batch_size=100000",
        "metrics=[auc,gauc,ndcg@3,sgauc,scenario,logloss]",
    ]
    dm, module = build_components(compose_cfg(overrides))
    dm.setup()
    batch = next(iter(dm.loader("valid")))
    batch["labels"][::3, 0] = float("nan")  # the eval step must keep only the labelled rows
    with torch.no_grad():
        module._eval_step(batch, "valid")
        probs = torch.sigmoid(module.task_logits(module(batch)).float())
    keep = ~torch.isnan(batch["labels"][:, 0])
    p, y = probs[keep, 0], batch["labels"][keep, 0]
    user, session, scenario = (batch[k][keep] for k in ("user", "session", "scenario"))
    metric_set = module.metrics["valid"][0]
    assert [name for name, _ in metric_set.items()] == ["auc", "gauc", "ndcg@3", "sgauc", "scenario", "logloss"]
    values = metric_set.compute()  # the run's path: one shared row buffer for the row metrics
    got = {k: values[k] for k in ("auc", "gauc", "ndcg@3", "sgauc", "logloss")}
    got["scenario"] = {k: v for k, v in values.items() if "@scenario=" in k}
    assert float(got["auc"]) == pytest.approx(roc_auc_score(y.numpy(), p.numpy()), abs=1e-6)
    assert float(got["gauc"]) == pytest.approx(float(gauc(p, y, user)), abs=1e-7)
    assert float(got["ndcg@3"]) == pytest.approx(float(ndcg_at_k(p, y, user, 3)), abs=1e-7)
    assert float(got["sgauc"]) == pytest.approx(float(gauc(p, y, session)), abs=1e-7)
    assert float(got["logloss"]) == pytest.approx(float(log_loss(p, y)), rel=1e-6)
    ids, per_scenario = per_scenario_gauc(p, y, user, scenario)
    assert len(ids) == 3 and torch.isfinite(per_scenario).all()
    assert {k: v for k, v in got["scenario"].items() if k.startswith("gauc")} == pytest.approx(
        {f"gauc@scenario={s}": v for s, v in zip(ids.tolist(), per_scenario.tolist())}
    )


def test_metrics_and_monitor_are_checked_against_the_config_and_the_data():
    from mtlbench.training.run import build_components

    from conftest import compose_cfg

    _, module = build_components(compose_cfg([*SMALL, "metrics=[auc]"]))
    assert all([name for name, _ in s.items()] == ["auc"] for split in module.metrics.values() for s in split)
    with pytest.raises(ConfigError, match=r"monitor='gauc' is not computed .* choose one of \['auc'\]"):
        build_components(compose_cfg([*SMALL, "metrics=[auc]", "monitor=gauc"]))
    with pytest.raises(ConfigError, match="monitor='scenario' is not computed"):  # many keys: not a monitor
        build_components(compose_cfg([*SMALL, "monitor=scenario"]))
    with pytest.raises(ConfigError, match="did you mean 'logloss'"):
        build_components(compose_cfg([*SMALL, "metrics=[auc,loglos]"]))
    _, stage_module = build_components(compose_cfg([*SMALL, "model=ple_stage"]))
    assert "stage" in stage_module.metric_groups  # the rule-based stage of PLE_stage's inputs is a group


@pytest.mark.slow
def test_a_run_with_metrics_auc_writes_only_auc(tmp_path):
    import json

    from conftest import TINY, run_cli

    out = tmp_path / "run"
    proc = run_cli([*TINY, "model=shared_bottom", "metrics=[auc]", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    for split in ("valid", "test"):
        assert {task: list(m) for task, m in res["metrics"][split].items()} == {
            "click": ["auc"],
            "long_view": ["auc"],
            "purchase": ["auc"],
        }
    assert res["config"]["metrics"] == ["auc"]


def test_shared_row_buffer_gives_each_metric_its_standalone_value_in_less_memory():
    """A task's row metrics computed from the MetricSet's one compact buffer equal each metric updated alone."""
    from mtlbench.training.module import MetricSet

    rng = np.random.default_rng(3)
    n = 5000
    p = torch.from_numpy(rng.random(n).astype(np.float32))
    y = torch.from_numpy((rng.random(n) < 0.3).astype(np.float32))
    y[::7] = float("nan")
    groups = {
        "user": torch.from_numpy(rng.integers(0, 300, n)),
        "session": torch.from_numpy(rng.integers(0, 900, n)),
        "scenario": torch.from_numpy(rng.integers(0, 3, n)),
    }
    names = ["auc", "gauc", "ndcg@3", "sgauc", "scenario", "logloss"]
    standalone = build_metrics(names, tuple(groups))
    shared = MetricSet(build_metrics(names, tuple(groups)), tuple(groups))
    for s in range(0, n, 1000):  # several updates, as batches
        part = slice(s, s + 1000)
        g = {k: v[part] for k, v in groups.items()}
        shared.update(p[part], y[part], g)
        for m in standalone.values():
            m.update(p[part], y[part], g)
    expected: dict[str, float] = {}
    for name, m in standalone.items():
        value = m.compute()
        expected.update(value if isinstance(value, dict) else {name: float(value)})
    got = shared.compute()
    assert got == pytest.approx(expected, rel=1e-6, nan_ok=True) and set(got) == set(expected)
    assert "auc@scenario=2" in got and "gauc@scenario=0" in got
    rows = shared.rows
    assert [g for g in rows.groups] == ["user", "session", "scenario"]
    assert not rows.preds  # compute resets the buffer
    shared.update(p, y, groups)
    kept = int((~torch.isnan(y)).sum())
    nbytes = sum(t.numel() * t.element_size() for name in rows._defaults for t in getattr(rows, name))
    assert nbytes == kept * (4 + 1 + 3 * 4)  # float32 score, uint8 label, int32 ids: 17 bytes a row
    assert shared.compute()["auc"] == pytest.approx(expected["auc"], rel=1e-6)
