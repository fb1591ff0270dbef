"""Optimizers and embedding init: the lazy row-sparse Adam against torch's SparseAdam + Adam, checkpoints,
their config switches."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from mtlbench.errors import ConfigError
from mtlbench.training.optim import RowSparseAdam, build_optimizer, use_sparse_embeddings
from mtlbench.training.run import build_components, train

from conftest import TINY, compose_cfg


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(50, 4, sparse=True)
        self.head = nn.Linear(8, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.table(ids).flatten(1)).squeeze(1)


def _step(model: nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    nn.functional.binary_cross_entropy_with_logits(model(ids), y).backward()
    opt.step()


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randint(0, 20, (16, 2), generator=g), torch.randint(0, 2, (16,), generator=g).float()) for _ in range(n)
    ]


def test_row_sparse_adam_matches_torch_sparse_adam_and_adam():
    torch.manual_seed(0)
    ours = Tiny()
    ref = copy.deepcopy(ours)
    opt = RowSparseAdam(ours.parameters(), lr=0.01, eps=1e-6, fused=True)
    ref_sparse = torch.optim.SparseAdam([ref.table.weight], lr=0.01, eps=1e-6)
    ref_dense = torch.optim.Adam(ref.head.parameters(), lr=0.01, eps=1e-6)
    untouched = ours.table.weight[20:].clone()
    for ids, y in _batches(6):
        _step(ours, opt, ids, y)
        ref_sparse.zero_grad()
        ref_dense.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(ref(ids), y).backward()
        ref_sparse.step()
        ref_dense.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(ours.table.weight[:20], Tiny().table.weight[:20])
    torch.testing.assert_close(ours.table.weight[20:], untouched, rtol=0, atol=0)  # rows never looked up
    assert torch.count_nonzero(opt.state[ours.table.weight]["exp_avg"][20:]) == 0


def test_row_sparse_adam_resumes_from_its_state_dict():
    torch.manual_seed(0)
    a = Tiny()
    opt_a = RowSparseAdam(a.parameters(), lr=0.01, fused=True)
    batches = _batches(4)
    for ids, y in batches[:2]:
        _step(a, opt_a, ids, y)
    b = copy.deepcopy(a)
    opt_b = RowSparseAdam(b.parameters(), lr=0.01, fused=True)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for ids, y in batches[2:]:
        _step(a, opt_a, ids, y)
        _step(b, opt_b, ids, y)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_build_optimizer_choices():
    model = Tiny()
    assert type(build_optimizer(model.parameters(), {"name": "adam", "sparse_embeddings": True})) is RowSparseAdam
    assert (
        type(build_optimizer(model.parameters(), {"name": "sgd", "lr": 0.1, "sparse_embeddings": True}))
        is torch.optim.SGD
    )
    dense = build_optimizer(model.parameters(), {"name": "adam"})
    assert type(dense) is torch.optim.Adam and dense.defaults["fused"] is True
    with pytest.raises(ConfigError, match="weight_decay must be 0"):
        build_optimizer(model.parameters(), {"name": "adamw", "weight_decay": 0.01, "sparse_embeddings": True})
    with pytest.raises(ConfigError, match="unknown optimizer 'adma'"):
        build_optimizer(model.parameters(), {"name": "adma"})
    m = nn.Sequential(nn.Embedding(3, 2), nn.Embedding(4, 2))
    assert use_sparse_embeddings(m) == 2 and all(e.sparse for e in m)


@pytest.mark.slow  # a training run
def test_sparse_embeddings_train_end_to_end(tmp_path):
    cfg = compose_cfg([*TINY, "model=mmoe", "optimizer.sparse_embeddings=true"])
    _, module = build_components(cfg)
    tables = [m for m in module.model.modules() if isinstance(m, nn.Embedding)]
    assert tables and all(t.sparse for t in tables)
    train(cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    aucs = [saved["metrics"]["test"][t]["auc"] for t in ("click", "long_view", "purchase")]
    assert min(aucs) > 0.55, aucs  # it learns, as the dense run does on this data


def test_sparse_embeddings_refuse_gradient_based_weightings():
    cfg = compose_cfg([*TINY, "model=mmoe", "weighting=pcgrad", "optimizer.sparse_embeddings=true"])
    with pytest.raises(ConfigError, match="needs dense gradients"):
        build_components(cfg)


def test_embedding_init_std_reinitialises_every_table():
    _, default = build_components(compose_cfg([*TINY, "model=ple_stage"]))
    _, small = build_components(compose_cfg([*TINY, "model=ple_stage", "embedding_init_std=0.001"]))
    tables = [m.weight for m in small.model.modules() if isinstance(m, nn.Embedding)]
    assert len(tables) == 2  # the feature table and PLE_stage's stage embedding
    for w in tables:
        assert abs(float(w.detach().std()) - 0.001) < 3e-4
    assert float(default.model.embedding.table.weight.detach().std()) > 0.1  # the model's own 1/sqrt(dim)
    with pytest.raises(ConfigError, match="embedding_init_std must be > 0"):
        build_components(compose_cfg([*TINY, "embedding_init_std=0"]))
