"""Preparing a large file: rows/second, peak memory and cache size of ``mtlbench-data prepare``.

Generates an N-row CSV in the Ali-CCP layout of torch-rechub / Scenario-Wise-Rec (33 columns: click,
purchase, 24 categorical fields with heavy-tailed ids and realistic cardinalities, 8 dense D* fields) into a
temporary folder (in a child process), runs ``mtlbench-data prepare ali_ccp`` on it in another child, and
prints one JSON object: rows, CSV size, build time, rows/second, the prepare process's peak RSS (VmHWM), the
peak RSS of the same command on a 10-row file (its fixed cost: interpreter, numpy, pyarrow, hydra), the final
cache size, and whether peak RSS <= 2 x cache size.

    OMP_NUM_THREADS=2 python benchmarks/prepare_scale.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: distinct values per categorical field (user, item and cross fields large, profile fields small)
CARDINALITY = {
    "101": 200_000,
    "121": 98,
    "122": 14,
    "124": 3,
    "125": 8,
    "126": 4,
    "127": 4,
    "128": 3,
    "129": 5,
    "205": 500_000,
    "206": 6_000,
    "207": 150_000,
    "210": 60_000,
    "216": 80_000,
    "508": 200_000,
    "509": 60_000,
    "702": 100_000,
    "853": 120_000,
    "301": 3,
    "109_14": 100_000,
    "110_14": 100_000,
    "127_14": 100_000,
    "150_14": 50_000,
}
DENSE = ("D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853")
#: runs the command in this interpreter and reports the process's own peak RSS (VmHWM, kB) on stderr
PEAK_WRAPPER = """
import atexit, runpy, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("VMHWM_KB " + line.split()[1] + "\\n")
atexit.register(peak)
sys.argv = ["mtlbench-data", *sys.argv[1:]]
runpy.run_module("mtlbench.cli.data", run_name="__main__")
"""


def chunk(rng: np.random.Generator, n: int):
    import pyarrow as pa

    click = (rng.random(n) < 0.04).astype(np.int8)
    purchase = (click & (rng.random(n) < 0.06)).astype(np.int8)
    cols: dict[str, np.ndarray] = {"click": click, "purchase": purchase}
    for name, card in CARDINALITY.items():
        cols[name] = np.minimum(rng.zipf(1.3, n) - 1, card - 1).astype(np.int64)  # heavy-tailed ids
    for name in DENSE:
        cols[name] = np.round(rng.random(n), 4).astype(np.float32)
    return pa.table(cols)


def generate(path: Path, rows: int, seed: int, block: int = 1_000_000) -> None:
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    first = chunk(rng, min(block, rows))
    with pacsv.CSVWriter(str(path), first.schema) as writer:
        writer.write_table(first)
        done = first.num_rows
        while done < rows:
            t = chunk(rng, min(block, rows - done))
            writer.write_table(t)
            done += t.num_rows


def prepare(csv: Path, cache: Path) -> tuple[dict, int, float]:
    """Run ``mtlbench-data prepare`` in a child: (its JSON report, its peak RSS in bytes, wall seconds)."""
    cmd = [
        sys.executable,
        "-c",
        PEAK_WRAPPER,
        "prepare",
        "ali_ccp",
        f"path={csv}",
        f"cache_dir={cache}",
        "--json",
        "--force",
        "--no-progress",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"prepare failed:\n{proc.stderr[-3000:]}")
    peak = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("VMHWM_KB")][-1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), peak * 1024, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where to write the CSV and cache (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the CSV and cache")
    p.add_argument("--generate-only", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.generate_only:
        generate(Path(args.generate_only), args.rows, args.seed)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mtlbench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    csv = work / "ali_ccp_scale.csv"
    try:
        start = time.perf_counter()
        if not csv.exists():
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--rows",
                    str(args.rows),
                    "--seed",
                    str(args.seed),
                    "--generate-only",
                    str(csv),
                ],
                check=True,
            )
        gen_seconds = time.perf_counter() - start
        report, peak, wall = prepare(csv, work / "cache")
        tiny = work / "tiny.csv"
        generate(tiny, 10, args.seed)
        _, baseline, _ = prepare(tiny, work / "tiny_cache")
        cache_bytes = report["bytes"]
        result = {
            "rows": report["rows"],
            "csv_bytes": csv.stat().st_size,
            "generate_seconds": round(gen_seconds, 1),
            "build_seconds": report["build_seconds"],
            "wall_seconds": round(wall, 1),
            "rows_per_second": report["rows_per_second"],
            "peak_rss_bytes": peak,
            "fixed_rss_bytes": baseline,
            "cache_bytes": cache_bytes,
            "peak_over_cache": round(peak / cache_bytes, 3),
            "peak_le_2x_cache": peak <= 2 * cache_bytes,
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
