"""Training throughput of mtlbench (Lightning module + data module) against a plain PyTorch loop.

Same model class, data, batch size, optimizer and thread count, in one process; the two are run
alternately ``--repeats`` times and the best epoch of each is kept, so background load hurts both alike.

    python benchmarks/throughput.py --model mmoe --rows 300000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from mtlbench.config import register_configs
from mtlbench.training.run import build_components


def compose(model: str, rows: int, batch: int, overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_module

    register_configs()
    with initialize_config_module("mtlbench.configs", version_base="1.3"):
        return hcompose(
            "train",
            overrides=[f"model={model}", f"dataset.n_rows={rows}", f"batch_size={batch}", "logger=none", *overrides],
        )


def plain_epoch(cfg) -> tuple[float, int]:
    """A hand-written loop: gather batch, forward, per-task BCE, backward, Adam step."""
    dm, module = build_components(cfg)
    model, tasks = module.model, module.tasks
    opt = torch.optim.Adam(
        model.parameters(), lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps
    )
    loader = dm.loader("train", train=True)
    n = 0
    start = time.perf_counter()
    for batch in loader:
        out = model(batch)
        logits = torch.stack([out[t] for t in tasks], 1)
        labels = batch["labels"]
        mask = ~torch.isnan(labels)
        losses = F.binary_cross_entropy_with_logits(logits, labels.nan_to_num(0.0), reduction="none") * mask
        loss = (losses.sum(0) / mask.sum(0).clamp_min(1)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(labels)
    return time.perf_counter() - start, n


def mtlbench_epoch(cfg) -> tuple[float, int]:
    """One epoch through Lightning's Trainer with mtlbench's module and data module (no validation)."""
    dm, module = build_components(cfg)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=50,
    )
    trainer.fit(module, datamodule=dm)
    return module.train_seconds, module.train_samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mmoe")
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose(args.model, args.rows, args.batch, args.overrides)
    best = {"plain": 0.0, "mtlbench": 0.0}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain_epoch), ("mtlbench", mtlbench_epoch)):
            seconds, samples = fn(cfg)
            best[name] = max(best[name], samples / seconds)
    print(
        json.dumps(
            {
                "model": args.model,
                "rows": args.rows,
                "batch_size": args.batch,
                "threads": args.threads,
                "plain_samples_per_s": round(best["plain"]),
                "mtlbench_samples_per_s": round(best["mtlbench"]),
                "ratio": round(best["mtlbench"] / best["plain"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
