"""Training step speed of registered models relative to MMoE: forward, backward and an Adam step on the same batches.

The models' own cost, without Lightning or the data path: batches of ``--batch`` rows of the lifecycle simulator
(``--rows`` rows, otherwise its defaults) are gathered once; each model takes ``--steps`` steps per round, the
models run one after another round by round (``--rounds``), and each keeps its best round, so a load that comes
and goes hits all of them alike. ``name:key=value,...`` sets constructor arguments (``mmoe:per=scenario``;
values are strings).

    python benchmarks/model_speed.py                                   # every multi-scenario model
    python benchmarks/model_speed.py --models ple stan ple_stage --threads 2

Prints a table and one JSON object: samples/s and the ratio to MMoE per model.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

MULTI_SCENARIO = [
    *("base_dnn", "deepfm", "din", "shared_bottom:per=scenario", "mmoe:per=scenario", "ple:per=scenario", "star"),
    *("pepnet", "epnet", "ppnet", "sfpnet", "aem2tl", "m2m", "adasparse", "sarnet", "hamur", "m3oe", "adaptdhm"),
    *("hinet", "apg", "hmoe", "maria"),
]


def parse(spec: str) -> tuple[str, dict[str, Any]]:
    """``mmoe:per=scenario`` -> (``mmoe``, {"per": "scenario"})."""
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        kwargs[key] = value
    return name, kwargs


def trainer(spec: str, schema: Any) -> Callable[[dict[str, torch.Tensor]], None]:
    """One training step of the model ``spec`` on a batch (BCE per task, plus the model's auxiliary losses)."""
    import mtlbench
    from mtlbench.models import as_output

    name, kwargs = parse(spec)
    torch.manual_seed(0)
    model = mtlbench.create_model(name, schema, **kwargs).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(batch: dict[str, torch.Tensor]) -> None:
        out = as_output(model(batch))
        labels = batch["labels"]
        loss = sum(
            nn.functional.binary_cross_entropy_with_logits(out.logits[t], labels[:, k].nan_to_num(0.0))
            for k, t in enumerate(schema.tasks)
        )
        loss = loss + sum(out.aux_losses.values(), torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=MULTI_SCENARIO, help="model specs (mmoe: the base)")
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from mtlbench.data.datamodule import MultiTaskDataModule

    dm = MultiTaskDataModule("lifecycle", {"n_rows": a.rows}, batch_size=a.batch)
    schema = dm.load()
    batches = [b for _, b in zip(range(a.steps), dm.train_dataloader())]
    specs = ["mmoe", *[s for s in a.models if s != "mmoe"]]
    steps = {s: trainer(s, schema) for s in specs}
    for s in specs:
        steps[s](batches[0])  # warm-up
    best = dict.fromkeys(specs, 0.0)
    rows = sum(len(b["labels"]) for b in batches)
    for _ in range(a.rounds):
        for s in specs:
            start = time.perf_counter()
            for b in batches:
                steps[s](b)
            best[s] = max(best[s], rows / (time.perf_counter() - start))
    for s in specs:
        print(f"{s:24s} {best[s]:10,.0f} samples/s  {best[s] / best['mmoe']:5.2f}x mmoe")
    ratios = {s: {"samples_per_second": round(best[s]), "vs_mmoe": round(best[s] / best["mmoe"], 3)} for s in specs}
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
