"""Training speed on one device with the device-resident data path, against the device's matmul rate.

For each model (MMoE, PLE, STAN), batch size (2k-64k) and precision (fp32, bf16-mixed): samples/second of
mtlbench's own training step (Lightning's Trainer, the run's module and data module with ``resident_data=true``:
the whole dataset on the device, batches gathered there), timed over ``--steps`` steps after ``--warmup``; the
matmuls one training step of that model runs (recorded from the step itself: every mm / addmm / bmm / baddbmm of
forward and backward, with their shapes and dtypes), replayed alone on preallocated tensors, which gives the
device's measured matmul rate for these shapes and the samples/second it would allow; and each model's share of
it (the CPU figure to compare: MMoE reaches 73% of the 2-thread CPU's limit, benchmarks/README.md).

With CUDA present it runs on ``cuda:0``; without, the same code paths run on the CPU device at small sizes (a
check that the script works, not a GPU figure).

    python benchmarks/gpu.py                                  # CUDA: 2k-64k, fp32 and bf16, lifecycle 2M rows
    python benchmarks/gpu.py --batches 2048 --rows 20000 --steps 5 --precisions 32-true   # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

MATMULS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
}


def compose(model: str, rows: int, batch: int, precision: str, accelerator: str) -> Any:
    from hydra import compose as hcompose
    from hydra import initialize_config_module

    from mtlbench.config import register_configs

    register_configs()
    with initialize_config_module("mtlbench.configs", version_base="1.3"):
        return hcompose(
            "train",
            overrides=[
                f"model={model}",
                f"dataset.n_rows={rows}",
                f"dataset.n_users={max(100, rows // 60)}",
                f"batch_size={batch}",
                "logger=none",
                "resident_data=true",
                f"trainer.accelerator={accelerator}",
                f"trainer.precision={precision}",
                "trainer.deterministic=false",
                "trainer.enable_progress_bar=false",
                "analysis=none",
            ],
        )


class MatmulRecorder(TorchDispatchMode):
    """Records (op, shapes, dtype) of every matmul run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, list[tuple[int, ...]], torch.dtype]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in MATMULS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            self.calls.append((func, [tuple(t.shape) for t in tensors], tensors[-1].dtype))
        return func(*args, **(kwargs or {}))


class StepTimer(pl.Callback):
    """Wall time of training steps ``warmup`` .. ``warmup + steps`` (the device synchronised at both ends), then
    the matmuls of one more step (forward, backward and optimizer step, under the run's precision)."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.start = self.seconds = 0.0
        self.samples = 0
        self.recorder = MatmulRecorder()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, i: int) -> None:
        if i == self.warmup:
            self._sync()
            self.start = time.perf_counter()
        if i == self.warmup + self.steps:
            self.recorder.__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, i: int) -> None:
        if self.warmup <= i < self.warmup + self.steps:
            self.samples += len(batch["labels"])
        if i == self.warmup + self.steps - 1:
            self._sync()
            self.seconds = time.perf_counter() - self.start
        if i == self.warmup + self.steps:
            self.recorder.__exit__(None, None, None)


def train_step(cfg: Any, warmup: int, steps: int, device: torch.device) -> StepTimer:
    """Time the run's training step (module, data module and Trainer built as a run builds them) and record the
    matmuls of one step; the data must stay on the device."""
    from mtlbench.training.run import build_components

    dm, module = build_components(cfg)
    timer = StepTimer(warmup, steps, device)
    trainer = pl.Trainer(
        **{k: v for k, v in cfg.trainer.items() if k != "max_epochs"},
        max_epochs=1,
        limit_train_batches=warmup + steps + 1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        callbacks=[timer],
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=dm)
    assert dm.inputs is not None and dm.inputs.device.type == device.type, "the data did not stay on the device"
    assert timer.seconds > 0 and timer.recorder.calls, f"fewer than {warmup + steps + 1} training batches"
    return timer


def flops(func: Any, shapes: list[tuple[int, ...]]) -> float:
    a, b = shapes[-2], shapes[-1]  # (addmm / baddbmm: the bias first)
    batch = a[0] if len(a) == 3 else 1
    return 2.0 * batch * a[-2] * a[-1] * b[-1]


def matmul_rate(calls: list[tuple[Any, list[tuple[int, ...]], torch.dtype]], device: torch.device, seconds: float):
    """(FLOP/s, seconds per step) of the step's matmuls replayed alone on preallocated tensors."""
    ops = [(func, [torch.randn(s, device=device, dtype=dtype) for s in shapes]) for func, shapes, dtype in calls]
    total = sum(flops(func, shapes) for func, shapes, _ in calls)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for func, tensors in ops:
            func(*tensors)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return total / best, best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mmoe,ple,stan")
    p.add_argument("--batches", default="2048,8192,32768,65536")
    p.add_argument("--precisions", default="32-true,bf16-mixed")
    p.add_argument("--rows", type=int, help="lifecycle rows (default: 2M on CUDA, 20k on the CPU)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--matmul-seconds", type=float, default=2.0)
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda:0" if cuda else "cpu")
    accelerator = "gpu" if cuda else "cpu"
    rows = args.rows or (2_000_000 if cuda else 20_000)
    out = []
    for precision in args.precisions.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for model in args.models.split(","):
                cfg = compose(model, rows, batch, precision, accelerator)
                timer = train_step(cfg, args.warmup, args.steps, device)
                rate, calls = timer.samples / timer.seconds, timer.recorder.calls
                flop_s, step_s = matmul_rate(calls, device, args.matmul_seconds)
                row = {
                    "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                    "model": model,
                    "batch": batch,
                    "precision": precision,
                    "samples_per_second": round(rate),
                    "matmul_tflops": round(flop_s / 1e12, 3),
                    "matmul_flop_per_sample": round(sum(flops(f, s) for f, s, _ in calls) / batch),
                    "matmul_limit_samples_per_second": round(batch / step_s),
                    "share_of_limit": round(rate * step_s / batch, 3),
                }
                out.append(row)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
