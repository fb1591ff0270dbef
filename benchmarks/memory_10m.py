"""Peak memory of preparing and training on a 10M-row simulated dataset (the cache is memory-mapped).

Runs `mtlbench-style` prepare and one training epoch in child processes and reports each one's peak RSS,
the cache size and the wall times as JSON.

    python benchmarks/memory_10m.py --rows 10000000 --model mmoe
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREPARE = """
from mtlbench.data.cache import load_or_build
from mtlbench.registry import DATASETS
src = DATASETS.get("lifecycle")(n_rows={rows}, n_users={users}, n_items={items})
load_or_build(src, "lifecycle", {cache!r})
"""
# runs a snippet or a module in a child and reports that child's own peak RSS (KiB on Linux) at exit
WRAP = """
import atexit, resource, runpy, sys
atexit.register(lambda: print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))
what, sys.argv = sys.argv[1], sys.argv[1:]
exec(what) if not what.startswith("module:") else runpy.run_module(what[7:], run_name="__main__")
"""


def child(what: str, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a snippet (or ``module:name``) in a child; return (seconds, its peak RSS in GB)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", WRAP, what, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"child failed: {proc.stderr[-2000:]}")
    kb = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")][-1]
    return seconds, kb / 1024**2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--model", default="mmoe")
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MTLBENCH_CACHE=str(Path(tmp) / "cache"))
        code = PREPARE.format(rows=args.rows, users=args.users, items=args.items, cache=env["MTLBENCH_CACHE"])
        prep_s, prep_gb = child(code, [], env)
        cache_gb = sum(f.stat().st_size for f in Path(env["MTLBENCH_CACHE"]).rglob("*") if f.is_file()) / 1024**3
        train = [
            f"model={args.model}",
            f"dataset.n_rows={args.rows}",
            f"dataset.n_users={args.users}",
            f"dataset.n_items={args.items}",
            f"trainer.max_epochs={args.epochs}",
            "trainer.enable_progress_bar=false",
            "logger=none",
            "predictions=false",
            f"hydra.run.dir={Path(tmp) / 'run'}",
        ]
        train_s, train_gb = child("module:mtlbench.cli.train", train, env)
        results = json.loads((Path(tmp) / "run" / "results.json").read_text())
    print(
        json.dumps(
            {
                "rows": args.rows,
                "cache_gb": round(cache_gb, 2),
                "prepare_seconds": round(prep_s, 1),
                "prepare_peak_rss_gb": round(prep_gb, 2),
                "train_seconds": round(train_s, 1),
                "train_peak_rss_gb": round(train_gb, 2),
                "train_samples_per_s": round(results["train"]["samples_per_second"]),
                "test_auc": {t: round(m["auc"], 4) for t, m in results["metrics"]["test"].items()},
            }
        )
    )


if __name__ == "__main__":
    main()
