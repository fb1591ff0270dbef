"""Structured schema of the top-level run config: Hydra checks types and rejects unknown keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    weight_decay: float = 0.0
    fused: bool | None = None  # None: the fused Adam/AdamW kernel (same maths, one kernel for all parameters)
    sparse_embeddings: bool = False  # row-sparse embedding gradients + lazy Adam on the rows a batch touches


@dataclass
class CallbacksConfig:
    early_stopping_patience: int | None = 2
    save_last: bool = True  # last.ckpt after every epoch, so `resume=true` can continue a killed run


@dataclass
class RunConfig:
    dataset: Any = None
    model: Any = None
    weighting: Any = None
    trainer: Any = None
    logger: Any = None
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    derived: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 2048
    eval_batch_size: int = 16384
    # evaluation metrics by registered name (mtlbench.list_metrics()); a bare ``ndcg`` is ndcg@k for each k of ndcg_k
    metrics: list[str] = field(default_factory=lambda: ["auc", "logloss", "gauc", "ndcg", "sgauc", "scenario"])
    ndcg_k: list[int] = field(default_factory=lambda: [1, 5])
    monitor: str = "auc"
    cache_dir: str | None = None
    tasks: list[str] | None = None  # train and evaluate only these tasks of the dataset
    hash_buckets: Any = None  # int, or {field: buckets}: hash large id vocabularies into fixed tables
    threads: int | None = None
    embedding_init_std: float | None = None  # normal init of every embedding table; None = the model's own
    predictions: bool = True
    resume: bool = False
    print_summary: bool = True


def register_configs() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
