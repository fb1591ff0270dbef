"""Per-step cost of every registered loss weighting on MMoE and on PLE, relative to the plain sum (``equal``).

One training step is what the Trainer runs for the LightningModule: ``zero_grad``, ``MultiTaskModule.training_step``
(the model's forward, the per-task BCE and the weighting, with its own backward passes for per-task gradients),
``backward`` of the returned loss and the optimizer's step (``configure_optimizers``: the run's fused Adam). The
module is mtlbench's own, with a stand-in for the Trainer it would read (world size 1, no logging), so the cost is
the weighting's and the model's, without Lightning's loop or the data path.

Batches of ``--batch`` rows (2048) of the lifecycle simulator (``--rows`` rows) are gathered once. Each (method,
model) pair takes ``--steps`` steps per round; the pairs run one after another round by round (``--rounds``), and
each keeps its best round, so a load that comes and goes hits all of them alike. 1 thread by default.

Skipped: ``stan_stage`` and ``stan_wo_beta``, STAN's own stage weightings, which need a STAN model's user
preferences (``ModelOutput.extras["preference"]``) and cannot weight MMoE or PLE.

    python benchmarks/weighting_cost.py                                   # every registered weighting
    python benchmarks/weighting_cost.py --methods equal famo cagrad --threads 2

Prints a Markdown table (ms per step and the ratio to ``equal`` on each model) and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from model_speed import parse

#: weightings that need a STAN model (they read its user preferences): not measured on MMoE / PLE
NEEDS_STAN = ("stan_stage", "stan_wo_beta")
MODELS = {"mmoe": "MMoE", "ple": "PLE"}  # registered name -> table heading
BASE = "equal"


class _StandInTrainer:
    """What ``MultiTaskModule.training_step`` reads from its Trainer: one process, step 0, no step logging."""

    world_size = 1
    global_step = 0
    log_every_n_steps = 1 << 30  # (global_step + 1) % n != 0: the logging branch stays off, as between log steps


def trainer_step(method: str, model_name: str, schema: Any) -> Callable[[dict[str, torch.Tensor]], None]:
    """One training step of ``model_name`` (its config defaults) with weighting ``method`` (``name:key=value``)."""
    import mtlbench
    from mtlbench.training.module import MultiTaskModule

    name, kwargs = parse(method)
    torch.manual_seed(0)
    model = mtlbench.create_model(model_name, schema)
    weighting = mtlbench.create_weighting(name, list(schema.tasks), **kwargs)
    module = MultiTaskModule(model, weighting, schema, metrics=["auc"])
    module._trainer = _StandInTrainer()  # read by training_step only (as tests/test_stan.py does)
    module.log = lambda *a, **k: None  # no logger: Lightning's log is a no-op
    module.train()
    opt = module.configure_optimizers()

    def step(batch: dict[str, torch.Tensor]) -> None:
        opt.zero_grad()  # Lightning's automatic optimisation: zero_grad, training_step, backward, step
        loss = module.training_step(batch, 0)
        module.backward(loss)
        opt.step()

    return step


def table(methods: list[str], ms: dict[tuple[str, str], float]) -> str:
    """Markdown: method, ms/step and × equal on each model."""
    head = "| method | " + " | ".join(f"{title} ms/step | × {BASE}" for title in MODELS.values()) + " |"
    rule = "|---|" + "---:|---:|" * len(MODELS)
    rows = [
        f"| {s} | " + " | ".join(f"{ms[s, m]:.1f} | {ms[s, m] / ms[BASE, m]:.2f}" for m in MODELS) + " |"
        for s in methods
    ]
    return "\n".join([head, rule, *rows])


def main() -> None:
    import mtlbench

    default = [w for w in mtlbench.list_weightings() if w not in NEEDS_STAN]
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--methods", nargs="*", default=default, help=f"weighting specs ({BASE}: the base, always run)")
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)  # as the run's Trainer sets it (trainer.deterministic: true)
    skipped = [s for s in a.methods if parse(s)[0] in NEEDS_STAN]
    if skipped:
        print(f"skipped {skipped}: they need model=stan (they read its user preferences)")
    methods = [BASE, *[s for s in a.methods if s != BASE and s not in skipped]]

    from mtlbench.data.datamodule import MultiTaskDataModule

    dm = MultiTaskDataModule("lifecycle", {"n_rows": a.rows}, batch_size=a.batch)
    schema = dm.load()
    batches = [b for _, b in zip(range(a.steps), dm.train_dataloader())]
    pairs = [(s, m) for s in methods for m in MODELS]
    steps = {pair: trainer_step(*pair, schema) for pair in pairs}
    for pair in pairs:
        steps[pair](batches[0])  # warm-up (and the lazy state some methods build at their first step)
    best = dict.fromkeys(pairs, float("inf"))
    for _ in range(a.rounds):
        for pair in pairs:
            start = time.perf_counter()
            for b in batches:
                steps[pair](b)
            best[pair] = min(best[pair], (time.perf_counter() - start) / len(batches) * 1e3)
    print(table(methods, best))
    result = {
        s: {
            m: {"ms_per_step": round(best[s, m], 3), f"vs_{BASE}": round(best[s, m] / best[BASE, m], 3)} for m in MODELS
        }
        for s in methods
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
