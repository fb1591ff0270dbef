"""Side-by-side training throughput of mtlbench, torch-rechub, DeepCTR-Torch and a fused plain-PyTorch loop.

One generated dataset (20 categorical fields, Zipf-distributed ids, vocabularies log-spaced 10..100,000, two
binary tasks whose labels depend on a few fields) is written once; every (library, model) pair then trains in
its own subprocess with the same sizes: embedding 16, 4 experts of [256, 128] (PLE: 1 level, 1 specific
expert per task + 2 shared, 4 experts in all), towers [64], batch 2048, Adam lr 1e-3 without weight decay,
``--threads`` torch threads, ``--epochs`` epoch(s) over the first 90% of the rows; test AUC on the last 9.5%
(the 0.5% between them is mtlbench's validation split, which its checkpoint callback needs; the others skip it).
Configurations run alternately ``--repeats`` times; the table shows the best samples/second and the spread.

    python benchmarks/peers.py                                   # 1M rows, mmoe + ple, every installed library
    python benchmarks/peers.py --rows 200000 --libs mtlbench,fused --models mmoe --repeats 1
    python benchmarks/peers.py --profile --models mmoe           # where mtlbench's time goes, ms per step

Peers are optional extras: ``pip install -r benchmarks/requirements-peers.txt`` after torch (see
benchmarks/README.md); a library that is not installed is listed as skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

FIELDS = 20
TASKS = ("click", "buy")
EMBEDDING, EXPERTS, EXPERT, TOWER = 16, 4, (256, 128), (64,)
PLE_SPECIFIC, PLE_SHARED = 1, 2  # 1 level: K*1 + 2 = 4 experts, the same matmul work as MMoE's 4
LR = 1e-3
SPLIT = (0.9, 0.005, 0.095)  # train, validation (read by mtlbench only), test: in row order
LIBRARIES = {  # name -> module that must be importable
    "mtlbench": "mtlbench",
    "fused": "torch",
    "torch-rechub": "torch_rechub",
    "deepctr-torch": "deepctr_torch",
}
OPTIONAL_LIBRARIES = {"fused-sparse": "torch"}  # the fused loop with row-sparse embedding gradients


# -- data ------------------------------------------------------------------------------------------------
def vocab_sizes(max_vocab: int = 100_000, fields: int = FIELDS) -> list[int]:
    """Vocabularies log-spaced from 10 to ``max_vocab`` (100,000; smaller only for quick checks)."""
    return [int(v) for v in np.rint(np.geomspace(10, max_vocab, fields))]


def zipf_ids(rng: np.random.Generator, vocab: int, n: int, exponent: float = 1.1) -> np.ndarray:
    """``n`` ids in [0, vocab) with P(rank r) ∝ (r+1)^-exponent, ranks scattered over the id range."""
    p = np.arange(1, vocab + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(p / p.sum())
    ranks = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), vocab - 1)
    return rng.permutation(vocab)[ranks].astype(np.int64)


def generate(rows: int, seed: int = 0, max_vocab: int = 100_000) -> dict[str, np.ndarray]:
    """Columns ``f0..f19`` (int64 ids), labels ``click`` and ``buy`` (float32 0/1) and ``ts`` (row order).

    Labels depend on four fields (two small vocabularies, two large ones): click on f1, f4 and f12,
    buy on click's score plus f4 and f15, so the two tasks are related but not identical.
    """
    rng = np.random.default_rng(seed)
    sizes = vocab_sizes(max_vocab)
    cols: dict[str, np.ndarray] = {f"f{i}": zipf_ids(rng, v, rows) for i, v in enumerate(sizes)}

    def effect(field: int, scale: float) -> np.ndarray:
        return rng.normal(0.0, scale, sizes[field])[cols[f"f{field}"]]

    z_click = effect(1, 1.0) + effect(4, 0.8) + effect(12, 0.8) - 1.0
    z_buy = 0.6 * z_click + effect(4, 0.8) + effect(15, 0.8) - 1.5
    for task, z in (("click", z_click), ("buy", z_buy)):
        cols[task] = (rng.random(rows) < 1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    cols["ts"] = np.arange(rows, dtype=np.int64)
    return cols


def write_data(cols: dict[str, np.ndarray], sizes: list[int], folder: Path) -> None:
    """One .npy per column (read by the fused loop and the peers) and a Parquet file (mtlbench's `table`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for name, values in cols.items():
        np.save(folder / f"{name}.npy", values)
    pq.write_table(pa.table(cols), folder / "data.parquet")
    (folder / "meta.json").write_text(json.dumps({"rows": len(cols["ts"]), "vocab": sizes, "tasks": list(TASKS)}))


def vocab_of(folder: Path) -> list[int]:
    return json.loads((folder / "meta.json").read_text())["vocab"]


def split_points(rows: int) -> tuple[int, int]:
    """End of the training rows and start of the test rows: the cut points of mtlbench's ``global_time`` split
    over a time column equal to the row number, computed with the same formula so every library agrees."""
    a, b = (np.cumsum(SPLIT)[:2] * rows).astype(np.int64)
    return int(a), int(b)


def read_split(folder: Path) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(train features, train labels [N, K], test features, test labels) as numpy arrays."""
    meta = json.loads((folder / "meta.json").read_text())
    a, b = split_points(meta["rows"])
    feats = {f"f{i}": np.load(folder / f"f{i}.npy") for i in range(len(meta["vocab"]))}
    labels = np.stack([np.load(folder / f"{t}.npy") for t in meta["tasks"]], axis=1)
    return ({k: v[:a] for k, v in feats.items()}, labels[:a], {k: v[b:] for k, v in feats.items()}, labels[b:])


def aucs(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    return {t: float(roc_auc_score(labels[:, k], scores[:, k])) for k, t in enumerate(TASKS)}


def per_sample_us(sizes: Iterator[int], limit: int = 50) -> float:
    """Microseconds per sample of drawing up to ``limit`` batches from a loader, with no model: data loading."""
    n, start = 0, time.perf_counter()
    for i, size in enumerate(sizes):
        n += size
        if i + 1 >= limit:
            break
    return 1e6 * (time.perf_counter() - start) / max(n, 1)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


# -- the fused plain-PyTorch reference -------------------------------------------------------------------
def fused_model(model: str, sizes: list[int], sparse: bool = False) -> Any:
    """One embedding table with per-field offsets, all experts in one batched matmul per layer, towers batched."""
    import torch
    from torch import nn

    class Fused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            k, e = len(TASKS), EXPERTS
            self.register_buffer("offsets", torch.tensor([0, *np.cumsum(sizes)[:-1].tolist()]))
            self.table = nn.Embedding(sum(sizes), EMBEDDING, sparse=sparse)
            nn.init.normal_(self.table.weight, std=EMBEDDING**-0.5)
            dims = [len(sizes) * EMBEDDING, *EXPERT]
            self.w = nn.ParameterList(self._uniform((e, a, b), a) for a, b in zip(dims[:-1], dims[1:]))
            self.b = nn.ParameterList(self._uniform((e, 1, b), a) for a, b in zip(dims[:-1], dims[1:]))
            if model == "ple":  # task k mixes its own expert k and the shared experts K..K+1
                sel = [[t, *range(k, k + PLE_SHARED)] for t in range(k)]
                self.register_buffer("select", torch.tensor(sel))
            self.per_gate = EXPERTS if model == "mmoe" else PLE_SPECIFIC + PLE_SHARED
            self.gates = nn.Linear(dims[0], k * self.per_gate)
            tdims = [EXPERT[-1], *TOWER, 1]
            self.tw = nn.ParameterList(self._uniform((k, a, b), a) for a, b in zip(tdims[:-1], tdims[1:]))
            self.tb = nn.ParameterList(self._uniform((k, 1, b), a) for a, b in zip(tdims[:-1], tdims[1:]))

        @staticmethod
        def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(fan_in)
            return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [B, F] with offsets added
            x = self.table(ids).flatten(1)
            h = x.unsqueeze(0).expand(EXPERTS, -1, -1)
            for w, b in zip(self.w, self.b):
                h = torch.relu(torch.baddbmm(b, h, w))  # [E, B, H]
            g = torch.softmax(self.gates(x).view(len(x), len(TASKS), self.per_gate), -1)
            if model == "mmoe":
                mixed = torch.einsum("bke,ebh->kbh", g, h)  # [K, B, H]
            else:
                mixed = torch.einsum("bkn,knbh->kbh", g, h[self.select])
            for i, (w, b) in enumerate(zip(self.tw, self.tb)):
                mixed = torch.baddbmm(b, mixed, w)
                if i < len(self.tw) - 1:
                    mixed = torch.relu(mixed)
            return mixed.squeeze(-1).T  # [B, K] logits

    return Fused()


def run_fused(data: Path, model_name: str, args: argparse.Namespace, sparse: bool = False) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    x_tr, y_tr, x_te, y_te = read_split(data)
    sizes = vocab_of(data)
    torch.manual_seed(args.seed)
    model = fused_model(model_name, sizes, sparse)
    ids = torch.from_numpy(np.stack([x_tr[f"f{i}"] for i in range(FIELDS)], 1)) + model.offsets
    labels = torch.from_numpy(y_tr)
    dense = [p for n, p in model.named_parameters() if not (sparse and n == "table.weight")]
    opts = [torch.optim.Adam(dense, lr=LR, fused=True)]
    if sparse:
        opts.append(torch.optim.SparseAdam([model.table.weight], lr=LR))
    g = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    n = 0
    for _ in range(args.epochs):
        for idx in torch.randperm(len(ids), generator=g).split(args.batch):
            logits = model(ids[idx])
            loss = F.binary_cross_entropy_with_logits(logits, labels[idx], reduction="none").mean(0).sum()
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
            n += len(idx)
    seconds = time.perf_counter() - start
    test_ids = torch.from_numpy(np.stack([x_te[f"f{i}"] for i in range(FIELDS)], 1)) + model.offsets
    with torch.no_grad():
        scores = torch.sigmoid(torch.cat([model(b) for b in test_ids.split(16384)])).numpy()

    def probe() -> float:  # whole-batch gathers from the preloaded tensors
        def sizes() -> Iterator[int]:
            for idx in torch.randperm(len(ids)).split(args.batch):
                _, y = ids[idx], labels[idx]
                yield len(y)

        return per_sample_us(sizes())

    return {
        "train_seconds": seconds,
        "train_samples": n,
        "auc": aucs(y_te, scores),
        "params": sum(p.numel() for p in model.parameters()),
        "data_probe": probe,
    }


# -- mtlbench, exactly as `mtlbench` runs it ---------------------------------------------------------------
def mtlbench_config(data: Path, model_name: str, args: argparse.Namespace, workdir: Path) -> Any:
    """The `mtlbench` command's config for the generated Parquet file: dataset=table, the 90/0.5/9.5 split in
    row order (``global_time`` on ``ts``), trainer=cpu defaults (CSV logger, progress bar, checkpoint callback)."""
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    from mtlbench.config import register_configs

    sizes = vocab_of(data)
    model_args = {
        "mmoe": [f"model.num_experts={EXPERTS}"],
        "ple": [
            "model.num_levels=1",
            f"model.num_specific_experts={PLE_SPECIFIC}",
            f"model.num_shared_experts={PLE_SHARED}",
        ],
    }[model_name]
    overrides = [
        f"model={model_name}",
        *model_args,
        f"model.embedding_dim={EMBEDDING}",
        f"model.expert=[{','.join(map(str, EXPERT))}]",
        f"model.tower=[{','.join(map(str, TOWER))}]",
        "dataset=table",
        f"dataset.path={data / 'data.parquet'}",
        f"dataset.tasks=[{','.join(TASKS)}]",
        "dataset.time_field=ts",
        "dataset.split.method=global_time",
        f"dataset.split.ratios=[{','.join(map(str, SPLIT))}]",
        f"batch_size={args.batch}",
        f"trainer.max_epochs={args.epochs}",
        f"threads={args.threads}",
        f"seed={args.seed}",
        f"optimizer.lr={LR}",
        "callbacks.early_stopping_patience=null",
        "predictions=false",
        f"cache_dir={workdir / 'cache'}",
        *args.mtlbench_override,
    ]
    register_configs()
    with initialize_config_module("mtlbench.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.dataset.categorical = {f"f{i}": {"vocab_size": v} for i, v in enumerate(sizes)}
    return cfg


def run_mtlbench(data: Path, model_name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """`mtlbench.training.run.train`, the function behind the `mtlbench` command: Lightning overhead counts.

    Samples/second is its own ``train.samples_per_second`` (train epochs only, validation time excluded).
    """
    from mtlbench.training.run import train

    cfg = mtlbench_config(data, model_name, args, workdir)
    results = train(cfg, workdir / "run")

    def probe() -> float:  # MultiTaskDataModule's training loader over the memory-mapped cache
        from mtlbench.training.run import build_datamodule

        dm = build_datamodule(cfg)
        dm.load()
        return per_sample_us(len(b["labels"]) for b in dm.loader("train", train=True))

    return {
        "train_seconds": results["train"]["seconds"],
        "train_samples": results["train"]["samples"],
        "auc": {t: results["metrics"]["test"][t]["auc"] for t in TASKS},
        "params": results["params"],
        "data_probe": probe,
    }


# -- the peers, each through its own training path -------------------------------------------------------
def run_rechub(data: Path, model_name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """torch-rechub as its examples use it: DataGenerator -> DataLoader -> MTLTrainer (one epoch timed)."""
    import torch
    from torch_rechub.basic.features import SparseFeature
    from torch_rechub.models.multi_task import MMOE, PLE
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    x_tr, y_tr, x_te, y_te = read_split(data)
    torch.manual_seed(args.seed)
    features = [SparseFeature(f"f{i}", vocab_size=v, embed_dim=EMBEDDING) for i, v in enumerate(vocab_of(data))]
    types = ["classification"] * len(TASKS)
    towers = [{"dims": list(TOWER)} for _ in TASKS]
    if model_name == "mmoe":
        model = MMOE(features, types, n_expert=EXPERTS, expert_params={"dims": list(EXPERT)}, tower_params_list=towers)
    else:
        model = PLE(
            features,
            types,
            n_level=1,
            n_expert_specific=PLE_SPECIFIC,
            n_expert_shared=PLE_SHARED,
            expert_params={"dims": list(EXPERT)},
            tower_params_list=towers,
        )
    train_dl, _, test_dl = DataGenerator(x_tr, y_tr).generate_dataloader(
        x_val=x_te, y_val=y_te, x_test=x_te, y_test=y_te, batch_size=args.batch
    )
    trainer = MTLTrainer(
        model,
        types,
        optimizer_params={"lr": LR, "weight_decay": 0.0},
        n_epoch=args.epochs,
        device="cpu",
        model_path=str(workdir),
    )
    start = time.perf_counter()
    for _ in range(args.epochs):
        trainer.train_one_epoch(train_dl)
    seconds = time.perf_counter() - start
    scores = trainer.evaluate(model, test_dl)
    return {
        "train_seconds": seconds,
        "train_samples": args.epochs * len(y_tr),
        "auc": dict(zip(TASKS, map(float, scores))),
        "params": sum(p.numel() for p in model.parameters()),
        "data_probe": lambda: per_sample_us(len(y) for _, y in train_dl),
    }


def run_deepctr(data: Path, model_name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """DeepCTR-Torch through ``compile`` + ``fit`` (fit timed whole); gates without a hidden layer, no L2."""
    import torch
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import MMOE, PLE

    x_tr, y_tr, x_te, y_te = read_split(data)
    torch.manual_seed(args.seed)
    cols = [SparseFeat(f"f{i}", vocabulary_size=v, embedding_dim=EMBEDDING) for i, v in enumerate(vocab_of(data))]
    common = {
        "expert_dnn_hidden_units": EXPERT,
        "gate_dnn_hidden_units": (),
        "tower_dnn_hidden_units": TOWER,
        "l2_reg_linear": 0.0,
        "l2_reg_embedding": 0.0,
        "task_types": ["binary"] * len(TASKS),
        "task_names": list(TASKS),
        "device": "cpu",
        "seed": args.seed,
    }
    if model_name == "mmoe":
        model = MMOE(cols, num_experts=EXPERTS, **common)
    else:
        model = PLE(cols, shared_expert_num=PLE_SHARED, specific_expert_num=PLE_SPECIFIC, num_levels=1, **common)
        # DeepCTR-Torch 0.3.0 builds `specific_expert_num` shared experts instead of `shared_expert_num`
        # (IndexError in forward when they differ): add the missing ones, built as the library builds experts
        from deepctr_torch.layers import DNN

        shared = model.shared_experts[0][0]
        while len(shared) < PLE_SHARED:
            shared.append(DNN(model.input_dim, EXPERT, init_std=0.0001, device="cpu"))
    model.compile(torch.optim.Adam(model.parameters(), lr=LR), loss=["binary_crossentropy"] * len(TASKS))
    start = time.perf_counter()
    model.fit(x_tr, y_tr, batch_size=args.batch, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - start
    scores = model.predict(x_te, batch_size=16384)

    def probe() -> float:  # the loader fit() builds: one float32 matrix of all inputs, per-sample indexing
        from torch.utils.data import DataLoader, TensorDataset

        x = torch.from_numpy(np.stack([x_tr[f"f{i}"] for i in range(len(cols))], 1))
        loader = DataLoader(TensorDataset(x, torch.from_numpy(y_tr)), shuffle=True, batch_size=args.batch)
        return per_sample_us(len(xb.float()) for xb, _ in loader)

    return {
        "train_seconds": seconds,
        "train_samples": args.epochs * len(y_tr),
        "auc": aucs(y_te, scores),
        "params": sum(p.numel() for p in model.parameters()),
        "data_probe": probe,
    }


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "mtlbench": run_mtlbench,
    "fused": lambda data, m, args, workdir: run_fused(data, m, args),
    "fused-sparse": lambda data, m, args, workdir: run_fused(data, m, args, sparse=True),
    "torch-rechub": run_rechub,
    "deepctr-torch": run_deepctr,
}


def worker(args: argparse.Namespace) -> None:
    """Inside the subprocess: train one (library, model), write its figures as JSON to ``--out``."""
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(args.out).parent / f"{args.lib}-{args.model}"
    workdir.mkdir(parents=True, exist_ok=True)
    out = RUNNERS[args.lib](Path(args.data), args.model, args, workdir)
    out.update(
        library=args.lib,
        model=args.model,
        samples_per_second=out["train_samples"] / out["train_seconds"],
        peak_rss_mb=peak_rss_mb(),
        threads=torch.get_num_threads(),
    )
    out["data_us_per_sample"] = out.pop("data_probe")()  # after the peak RSS: the probe loads data again
    Path(args.out).write_text(json.dumps(out))


# -- the machine's matmul limit for these shapes ---------------------------------------------------------
def matmul_shapes(batch: int) -> list[tuple[int, int, int, int]]:
    """(batch count, m, k, n) of every forward matmul of one MMoE step: experts, gates, mixing, towers."""
    d, k = FIELDS * EMBEDDING, len(TASKS)
    dims = [d, *EXPERT]
    shapes = [(EXPERTS, batch, a, b) for a, b in zip(dims[:-1], dims[1:])]
    shapes.append((1, batch, d, k * EXPERTS))  # all gates in one matmul
    shapes.append((batch, k, EXPERTS, EXPERT[-1]))  # gate-weighted sum of experts
    tdims = [EXPERT[-1], *TOWER, 1]
    shapes += [(k, batch, a, b) for a, b in zip(tdims[:-1], tdims[1:])]
    return shapes


def flops_per_sample(batch: int) -> float:
    """Forward + backward (input and weight gradients): 3 matmuls of 2*m*k*n FLOP per forward matmul."""
    return sum(3 * 2 * c * m * k * n for c, m, k, n in matmul_shapes(batch)) / batch


def roofline(batch: int, threads: int, seconds: float = 2.0) -> dict[str, float]:
    """Time the forward and both backward matmuls of one MMoE step alone, on preallocated tensors."""
    import torch

    torch.set_num_threads(threads)
    ops = []
    for c, m, k, n in matmul_shapes(batch):
        a, w, g = torch.randn(c, m, k), torch.randn(c, k, n), torch.randn(c, m, n)
        ops += [(a, w), (g, w.transpose(1, 2)), (a.transpose(1, 2), g)]  # y = a w, dL/da = g w^T, dL/dw = a^T g
    flops = flops_per_sample(batch) * batch
    best = math.inf
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for x, y in ops:
            torch.bmm(x, y)
        best = min(best, time.perf_counter() - start)
    return {
        "gflops": flops / best / 1e9,
        "flops_per_sample": flops / batch,
        "roofline_samples_per_second": batch / best,
        "matmul_ms_per_step": best * 1e3,
    }


# -- where mtlbench's time goes -------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def profile_worker(args: argparse.Namespace) -> None:
    """Per-step breakdown of mtlbench's MMoE step, levers measured on the same module (see ``profile``)."""
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F

    from mtlbench.models.base import as_output
    from mtlbench.training.run import build_components, build_logger

    torch.set_num_threads(args.threads)
    workdir = Path(args.out).parent / f"profile-{args.model}"
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = mtlbench_config(Path(args.data), args.model, args, workdir)
    steps, warm = args.profile_steps, 5
    dm, module = build_components(cfg)
    # Lightning's `deterministic` flag is process-wide once a Trainer set it: set it as the run's Trainer does
    torch.use_deterministic_algorithms(bool(cfg.trainer.get("deterministic", False)))
    table = module.model.embedding.table
    tasks = module.tasks

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield from dm.loader("train", train=True)

    def loss_of(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float, float]:
        out, t_fwd = timed(lambda: as_output(module.model(batch)))

        def combine() -> torch.Tensor:  # MultiTaskModule.training_step's loss, without self.log
            labels = batch["labels"]
            mask = ~torch.isnan(labels)
            logits = torch.stack([out.logits[t] for t in tasks], 1)
            losses = F.binary_cross_entropy_with_logits(logits, labels.nan_to_num(0.0), reduction="none") * mask
            return module.weighting(losses, mask, batch, out).loss

        loss, t_loss = timed(combine)
        return loss, t_fwd, t_loss

    def optimizers(kind: str) -> list[torch.optim.Optimizer]:
        if kind == "default":
            return [module.configure_optimizers()]  # what Lightning gets today
        dense = [p for p in module.parameters() if p is not table.weight or kind != "sparse+fused"]
        base = {"lr": LR, "betas": tuple(cfg.optimizer.betas), "eps": cfg.optimizer.eps}
        flag = {"foreach": {"foreach": True}, "fused": {"fused": True}, "sparse+fused": {"fused": True}}[kind]
        opts: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, **base, **flag)]
        if kind == "sparse+fused":
            opts.append(torch.optim.SparseAdam([table.weight], **base))
        return opts

    def bare(kind: str, deterministic: bool | None = None) -> dict[str, float]:
        """The training step by hand (no Lightning), phase by phase, ms per step."""
        was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(was if deterministic is None else deterministic)
        table.sparse = kind == "sparse+fused"
        opts = optimizers(kind)
        it = batches()
        phases = dict.fromkeys(("data", "forward", "loss", "backward", "optimizer", "zero_grad"), 0.0)
        total = 0.0
        for step in range(warm + steps):
            t0 = time.perf_counter()
            batch = next(it)
            t1 = time.perf_counter()
            loss, t_fwd, t_loss = loss_of(batch)
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
            for o in opts:
                o.step()
            t4 = time.perf_counter()
            for o in opts:
                o.zero_grad(set_to_none=True)
            t5 = time.perf_counter()
            if step >= warm:
                for name, v in (
                    ("data", t1 - t0),
                    ("forward", t_fwd),
                    ("loss", t_loss),
                    ("backward", t3 - t2),
                    ("optimizer", t4 - t3),
                    ("zero_grad", t5 - t4),
                ):
                    phases[name] += v
                total += t5 - t0
        table.sparse = False
        torch.use_deterministic_algorithms(was)
        return {**{k: 1e3 * v / steps for k, v in phases.items()}, "step": 1e3 * total / steps}

    def first_layer() -> dict[str, float]:
        """The experts' first layer on their shared input, forward + backward, ms per step: as ExpertGroup does
        it (input expanded to [E, B, in], one baddbmm) and as one GEMM with the E weight matrices side by side."""
        experts = getattr(module.model, "experts", None)
        if experts is None or not hasattr(experts, "weights"):
            return {}
        w, b = experts.weights[0].detach(), experts.biases[0].detach()
        e, d, h = w.shape
        x = torch.randn(args.batch, d, requires_grad=True)
        w1, b1 = w.clone().requires_grad_(), b.clone().requires_grad_()
        w2 = w.permute(1, 0, 2).reshape(d, e * h).clone().requires_grad_()
        b2 = b.reshape(e * h).clone().requires_grad_()
        out = {}
        for name, fn in (
            ("expand+baddbmm", lambda: torch.baddbmm(b1, x.unsqueeze(0).expand(e, -1, -1), w1)),
            ("one_gemm", lambda: torch.addmm(b2, x, w2).view(-1, e, h)),
        ):
            total = 0.0
            for step in range(warm + steps):
                t0 = time.perf_counter()
                y = fn()
                y.backward(torch.ones_like(y))
                if step >= warm:
                    total += time.perf_counter() - t0
            out[name] = 1e3 * total / steps
        return out

    def embedding_only(sparse: bool) -> dict[str, float]:
        """Forward + backward of the embedding lookup alone (gradient of ones), ms per step."""
        table.sparse = sparse
        it = batches()
        fwd = bwd = 0.0
        for step in range(warm + steps):
            batch = next(it)
            t0 = time.perf_counter()
            x = module.model.embedding.flat(batch)
            t1 = time.perf_counter()
            x.backward(torch.ones_like(x))
            t2 = time.perf_counter()
            table.weight.grad = None
            if step >= warm:
                fwd, bwd = fwd + t1 - t0, bwd + t2 - t1
        table.sparse = False
        return {"forward": 1e3 * fwd / steps, "backward": 1e3 * bwd / steps}

    def lightning(progress_bar: bool, logger: bool) -> float:
        """ms per step of Trainer.fit over ``steps`` batches, built as mtlbench.training.run.train builds it."""
        times: list[float] = []

        class StepTimer(pl.Callback):
            def on_train_batch_start(self, *a: Any) -> None:
                times.append(time.perf_counter())

            def on_train_epoch_end(self, *a: Any) -> None:
                times.append(time.perf_counter())

        trainer_cfg = {
            **dict(cfg.trainer),
            "enable_progress_bar": progress_bar,
            "max_epochs": 1,
            "limit_train_batches": warm + steps,
            "limit_val_batches": 0,
        }
        trainer = pl.Trainer(
            **trainer_cfg,
            logger=build_logger(cfg, workdir) if logger else False,
            callbacks=[StepTimer()],
            enable_checkpointing=False,
            default_root_dir=str(workdir),
            use_distributed_sampler=False,
        )
        module.train_samples, module.train_seconds = 0, 0.0
        trainer.fit(module, datamodule=dm)
        return 1e3 * (times[-1] - times[warm]) / steps  # data + step + hooks + logging, warm-up excluded

    def op_table() -> dict[str, float]:
        """torch.profiler self-CPU time per op group, ms per step, with the default optimizer."""
        from torch.profiler import ProfilerActivity, profile

        opts = optimizers("default")
        it = batches()
        for _ in range(warm):
            loss, *_ = loss_of(next(it))
            loss.backward()
            opts[0].step()
            opts[0].zero_grad(set_to_none=True)
        n = min(steps, 20)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                loss, *_ = loss_of(next(it))
                loss.backward()
                opts[0].step()
                opts[0].zero_grad(set_to_none=True)
        groups = {
            "matmul": ("bmm", "baddbmm", "addmm", "mm", "matmul", "linear"),
            "embedding_forward": ("embedding",),
            "embedding_backward": ("embedding_dense_backward", "embedding_backward"),
            "gather_scatter": ("index", "index_select", "index_add_", "gather", "scatter_add_"),
            "adam": ("_fused_adam_", "_foreach_", "addcdiv_", "addcmul_", "lerp_", "sqrt", "div_", "mul_", "add_"),
        }
        out = dict.fromkeys([*groups, "other"], 0.0)
        top = sorted(prof.key_averages(), key=lambda ev: -ev.self_cpu_time_total)
        for ev in top:
            name = ev.key.removeprefix("aten::")
            group = next((g for g, names in groups.items() if name in names), "other")
            out[group] += ev.self_cpu_time_total / 1e3 / n
        return {"groups": out, "top": [(ev.key, round(ev.self_cpu_time_total / 1e3 / n, 2)) for ev in top[:15]]}

    result: dict[str, Any] = {
        "steps": steps,
        "batch": args.batch,
        "model": args.model,
        "table_rows": table.num_embeddings,
        "table_params": table.weight.numel(),
        "params": sum(p.numel() for p in module.parameters()),
    }
    runs: dict[str, list[Any]] = {}
    plan: list[tuple[str, Callable[[], Any]]] = [
        ("bare:default", lambda: bare("default")),
        ("bare:foreach", lambda: bare("foreach")),
        ("bare:fused", lambda: bare("fused")),
        ("bare:sparse+fused", lambda: bare("sparse+fused")),
        ("bare:fused,deterministic=false", lambda: bare("fused", deterministic=False)),
        ("experts:first_layer", first_layer),
        ("embedding:dense", lambda: embedding_only(False)),
        ("embedding:sparse", lambda: embedding_only(True)),
        ("lightning:as_run", lambda: lightning(True, True)),
        ("lightning:no_bar_no_logger", lambda: lightning(False, False)),
    ]
    for _ in range(args.repeats):  # alternate, keep every run
        for name, fn in plan:
            runs.setdefault(name, []).append(fn())
    result["runs"] = runs
    result["ops_ms_per_step"] = op_table()
    Path(args.out).write_text(json.dumps(result))


# -- the parent: data once, one subprocess per run, a table -------------------------------------------------
def spawn(
    args: argparse.Namespace, data: Path, lib: str, model: str, out: Path, profile: bool = False
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--lib",
        lib,
        "--model",
        model,
        "--data",
        str(data),
        "--out",
        str(out),
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--repeats",
        str(args.repeats),
        "--profile-steps",
        str(args.profile_steps),
        "--clock",
        args.clock,
        *(["--profile"] if profile else []),
        *[f"--mtlbench-override={o}" for o in args.mtlbench_override],
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        PYTHONWARNINGS="ignore",
        WANDB_MODE="disabled",
    )
    log = out.with_suffix(".log")
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{lib}/{model} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return json.loads(out.read_text())


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best samples/second per (library, model), the spread over repeats, mean AUC, max peak RSS."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["library"], r["model"]), []).append(r)
    fused = {m: max(r["samples_per_second"] for r in rs) for (lib, m), rs in groups.items() if lib == "fused"}
    rows = []
    for (lib, model), rs in groups.items():
        sps = [r["samples_per_second"] for r in rs]
        best = max(sps)
        rows.append(
            {
                "library": lib,
                "model": model,
                "samples_per_second": round(best),
                "samples_per_second_runs": [round(s) for s in sps],
                "spread": round((best - min(sps)) / best, 3),
                "vs_fused": round(best / fused[model], 3) if model in fused else None,
                "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rs)),
                "peak_rss_mb_runs": [round(r["peak_rss_mb"]) for r in rs],
                "auc": {t: round(float(np.mean([r["auc"][t] for r in rs])), 4) for t in TASKS},
                "data_us_per_sample": round(min(r["data_us_per_sample"] for r in rs), 2),
                "params": rs[0]["params"],
                "train_samples": rs[0]["train_samples"],
            }
        )
    return rows


def table(rows: list[dict[str, Any]], machine: dict[str, float] | None) -> str:
    head = [
        "library",
        "model",
        "samples/s (best)",
        "spread",
        "vs fused",
        "peak RSS MB",
        *[f"AUC {t}" for t in TASKS],
        "data µs/sample",
        "params",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["library"],
            r["model"],
            f"{r['samples_per_second']:,}",
            f"{100 * r['spread']:.0f}%",
            "" if r["vs_fused"] is None else f"{r['vs_fused']:.2f}x",
            f"{r['peak_rss_mb']:,}",
            *[f"{r['auc'][t]:.4f}" for t in TASKS],
            f"{r['data_us_per_sample']:.2f}",
            f"{r['params']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if machine:
        lines.append(
            f"\nmatmul limit (MMoE shapes, batch {machine['batch']}): {machine['gflops']:.0f} GFLOP/s, "
            f"{machine['flops_per_sample'] / 1e6:.2f} MFLOP/sample forward+backward -> "
            f"{machine['roofline_samples_per_second']:,.0f} samples/s"
        )
        for r in rows:
            if r["model"] == "mmoe":
                share = r["samples_per_second"] / machine["roofline_samples_per_second"]
                lines.append(f"  {r['library']} mmoe: {100 * share:.0f}% of the matmul limit")
    return "\n".join(lines)


def profile_report(p: dict[str, Any]) -> str:
    def best(name: str) -> Any:
        runs = p["runs"][name]
        if isinstance(runs[0], dict):
            return min(runs, key=lambda r: r.get("step", r.get("backward", 0.0)))
        return min(runs)

    def spread(name: str) -> str:
        vals = [r["step"] if isinstance(r, dict) and "step" in r else r for r in p["runs"][name]]
        vals = [v for v in vals if not isinstance(v, dict)]
        return f"{min(vals):.1f}..{max(vals):.1f}" if vals else ""

    lines = [
        f"mtlbench {p['model']}, batch {p['batch']}, {p['steps']} steps per measurement, best of "
        f"{len(p['runs']['bare:default'])} (min..max); table {p['table_rows']:,} rows x "
        f"{p['table_params'] // p['table_rows']} = {p['table_params']:,} of {p['params']:,} parameters",
        "",
        "| ms per step | data | forward | loss | backward | optimizer | zero_grad | step | range |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("bare:default", "bare:foreach", "bare:fused", "bare:sparse+fused", "bare:fused,deterministic=false"):
        b = best(name)
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{b[k]:.1f}" for k in ("data", "forward", "loss", "backward", "optimizer", "zero_grad", "step")
            )
            + f" | {spread(name)} |"
        )
    for name in ("lightning:as_run", "lightning:no_bar_no_logger"):
        lines.append(f"| {name} | | | | | | | {best(name):.1f} | {spread(name)} |")
    for name in ("embedding:dense", "embedding:sparse"):
        b = best(name)
        lines.append(f"\n{name}: lookup forward {b['forward']:.1f} ms, backward {b['backward']:.1f} ms")
    layer = {k: min(r[k] for r in p["runs"]["experts:first_layer"]) for k in p["runs"]["experts:first_layer"][0]}
    if layer:
        lines.append(
            "\nexperts' first layer, forward + backward: " + ", ".join(f"{k} {v:.1f} ms" for k, v in layer.items())
        )
    ops = p["ops_ms_per_step"]
    lines.append(
        "\ntorch.profiler self CPU, ms per step (default optimizer): "
        + ", ".join(f"{k} {v:.1f}" for k, v in ops["groups"].items())
    )
    lines.append("top ops: " + ", ".join(f"{k} {v:.1f}" for k, v in ops["top"]))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--models", default="mmoe,ple")
    p.add_argument(
        "--libs",
        default=",".join(LIBRARIES),
        help=f"comma-separated, from {', '.join([*LIBRARIES, *OPTIONAL_LIBRARIES])}",
    )
    p.add_argument("--repeats", type=int, default=2, help="runs per configuration, alternated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-vocab", type=int, default=100_000, help="largest vocabulary (smaller: quick checks)")
    p.add_argument("--json", help="write the results here as JSON")
    p.add_argument("--workdir", help="keep data, logs and run folders here (default: a temporary folder)")
    p.add_argument("--profile", action="store_true", help="also break mtlbench's step down (ms per step)")
    p.add_argument("--profile-only", action="store_true", help="only the breakdown, no library runs")
    p.add_argument("--profile-steps", type=int, default=60)
    p.add_argument("--no-roofline", action="store_true")
    p.add_argument("--roofline-seconds", type=float, default=2.0, help="time spent timing the matmuls, twice")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: every timer (the libraries' own included) reads this process's CPU time instead "
        "of wall time; with --threads 1 this measures the work done, robust to a busy machine",
    )
    p.add_argument("--mtlbench-override", action="append", default=[], help="extra Hydra override for mtlbench")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lib", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.clock == "cpu":  # in this process only (each worker sets it again): timers see CPU seconds
        time.perf_counter = time.process_time
    if args.worker:
        (profile_worker if args.profile else worker)(args)
        return

    known = {**LIBRARIES, **OPTIONAL_LIBRARIES}
    libs, models = args.libs.split(","), args.models.split(",")
    bad = [x for x in libs if x not in known] + [m for m in models if m not in ("mmoe", "ple")]
    if bad:
        p.error(f"unknown library/model {bad}; libraries: {', '.join(known)}; models: mmoe, ple")
    skipped = {x: f"{known[x]} is not installed" for x in libs if importlib.util.find_spec(known[x]) is None}
    libs = [x for x in libs if x not in skipped]
    for lib, why in skipped.items():
        print(f"[peers] skipping {lib}: {why}", flush=True)

    tmp = tempfile.TemporaryDirectory(prefix="mtlbench-peers-") if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    data = work / "data"
    start = time.perf_counter()
    sizes = vocab_sizes(args.max_vocab)
    write_data(generate(args.rows, args.seed, args.max_vocab), sizes, data)
    print(f"[peers] generated {args.rows:,} rows in {time.perf_counter() - start:.1f}s -> {data}", flush=True)

    machine = None
    if not args.no_roofline:
        machine = {**roofline(args.batch, args.threads, args.roofline_seconds), "batch": args.batch}
    runs: list[dict[str, Any]] = []
    if not args.profile_only:
        for rep in range(args.repeats):
            for model in models:
                for lib in libs:
                    out = work / f"{lib}-{model}-{rep}.json"
                    r = spawn(args, data, lib, model, out)
                    runs.append(r)
                    print(
                        f"[peers] {lib:>13} {model} run {rep + 1}: {r['samples_per_second']:,.0f} samples/s, "
                        f"peak RSS {r['peak_rss_mb']:,.0f} MB, AUC "
                        + " ".join(f"{t} {r['auc'][t]:.4f}" for t in TASKS),
                        flush=True,
                    )
    if machine and not args.no_roofline:  # again after the runs: keep the better of the two measurements
        again = roofline(args.batch, args.threads, args.roofline_seconds)
        if again["gflops"] > machine["gflops"]:
            machine.update(again)
    profile = None
    if args.profile or args.profile_only:
        profile = spawn(args, data, "mtlbench", models[0], work / f"profile-{models[0]}.json", profile=True)
    rows = summarise(runs)
    report = {
        "rows": args.rows,
        "train_rows": split_points(args.rows)[0],
        "test_rows": args.rows - split_points(args.rows)[1],
        "threads": args.threads,
        "clock": args.clock,
        "batch": args.batch,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "seed": args.seed,
        "vocab_sizes": sizes,
        "skipped": skipped,
        "machine": machine,
        "results": rows,
        "runs": runs,
        "profile": profile,
    }
    print()
    if args.clock == "cpu":
        print("clock=cpu: every figure below is per CPU-second / CPU-ms of the process, not wall time")
    if rows:
        print(table(rows, machine))
    if profile:
        print()
        print(profile_report(profile))
    print()
    print(json.dumps({k: report[k] for k in ("rows", "threads", "clock", "batch", "machine", "results", "skipped")}))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
