"""Optimizers: fused Adam by default; lazy row-sparse Adam for embedding tables too large to update densely.

With ``optimizer.sparse_embeddings=true`` every ``nn.Embedding`` of the model produces a row-sparse
gradient (only the rows a batch looked up), and the Adam step touches only those rows of the table and of
its moments, as ``torch.optim.SparseAdam`` does ("lazy" Adam, the usual choice for CTR embedding tables).
The rest of the parameters keep the fused Adam kernel. A dense table costs a full-table gradient and a
full-table Adam update every step, which dominates once tables reach tens of millions of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from mtlbench.errors import ConfigError

CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
}


class RowSparseAdam(torch.optim.Adam):
    """Adam (fused where available) that applies the lazy SparseAdam update to row-sparse gradients.

    Sparse parameters share Adam's state layout (``step``, ``exp_avg``, ``exp_avg_sq``), so checkpoints
    save and load through the ordinary ``state_dict``. The step count is per parameter, as in SparseAdam.
    """

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None and p.grad.is_sparse:
                        self._lazy_update(p, group)
                        p.grad = None  # done: the dense kernel below skips parameters without a gradient
        super().step()
        return loss

    def _lazy_update(self, p: Tensor, group: dict[str, Any]) -> None:
        assert p.grad is not None  # step() calls this for parameters with a sparse gradient only
        grad = p.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        m = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)  # m ← β1·m + (1-β1)·g
        v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        p.index_add_(0, rows, m.div_(v.sqrt_().add_(group["eps"])), alpha=-step_size)


def use_sparse_embeddings(model: nn.Module) -> int:
    """Switch every ``nn.Embedding`` of ``model`` to row-sparse gradients; returns how many were switched."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    for m in tables:
        m.sparse = True
    return len(tables)


def build_optimizer(params: Iterable[nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg`` (``optimizer.*`` of the run config) over ``params``."""
    cfg = dict(cfg)
    name = cfg.pop("name", "adam")
    sparse = bool(cfg.pop("sparse_embeddings", False))
    if name not in CLASSES:
        raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(CLASSES)}")
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    if cfg.get("fused") is None:
        cfg.pop("fused", None)
        if name in ("adam", "adamw"):  # one fused kernel: ~4 ms instead of 23-39 ms per step (benchmarks/peers.py)
            cfg["fused"] = True
    if not sparse or name in ("sgd", "adagrad"):  # SGD and Adagrad accept row-sparse gradients as they are
        return CLASSES[name](params, **cfg)
    if cfg.get("weight_decay"):
        raise ConfigError(
            f"optimizer.sparse_embeddings=true with {name}: weight_decay must be 0 (a lazy update "
            "cannot decay the rows a batch does not touch)"
        )
    return RowSparseAdam(params, **cfg)
