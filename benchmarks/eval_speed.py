"""Time GAUC and NDCG@k over many predictions and users (issue target: 10M rows, 1M users, < 10 s).

python benchmarks/eval_speed.py --rows 10000000 --users 1000000
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mtlbench.metrics import gauc, ndcg_at_k


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    user = torch.randint(0, args.users, (args.rows,), generator=g)
    target = (torch.rand(args.rows, generator=g) < 0.3).float()
    preds = (0.3 * target + torch.rand(args.rows, generator=g)).clamp(0, 1)
    out = {"rows": args.rows, "users": args.users, "threads": args.threads}
    for name, fn in (
        ("gauc", lambda: gauc(preds, target, user)),
        (f"ndcg@{args.k}", lambda: ndcg_at_k(preds, target, user, args.k)),
    ):
        start = time.perf_counter()
        value = float(fn())
        out[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
        out[name] = round(value, 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
