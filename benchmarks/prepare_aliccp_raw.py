"""Preparing raw Ali-CCP (Tianchi's layout): lines/second, peak memory and cache size of the raw reader.

Generates ``--lines`` skeleton lines (half train, half test, like Tianchi's split) in the raw layout into a
temporary folder, chunk by chunk (the generator holds one chunk, never the whole data): requests of users
shared across requests, one common-features line per request (~150 entries: the user fields 101 / 121-129
and the four behaviour fields with 10-60 entries each, log-count values) and ~20 impressions per request
(~27 entries each: item fields 205 / 206 / 207 / 216, 5-25 entries of 210, the crosses 508 / 509 / 702 and
1-6 entries of 853, the scenario 301), heavy-tailed ids, CTR ~4%, CVR ~6% of clicks, and about one line in
100,000 a conversion without click (dropped by the reader). Then it runs ``mtlbench-data prepare ali_ccp
path=<folder>`` (the dataset's default settings, so ``max_len`` 20) in a child process, the cache build and
nothing else, and prints one JSON object: lines, seconds (``prepare``'s whole time: building, validating
and writing the entry), lines_per_second, build_seconds (until the columns are validated: what this script
reported before December 2026, without the writing), peak_rss_gb (the child's peak RSS, ``ru_maxrss``:
interpreter and imports included), cache_gb (mostly the four behaviour sequences: ids and weights, 640 bytes
a row), raw_gb, the generation time, the 1-minute load average before and after the build, and the reader's
counts. GB are 10^9 bytes.

    OMP_NUM_THREADS=2 python benchmarks/prepare_aliccp_raw.py                 # 10,000,000 lines
    python benchmarks/prepare_aliccp_raw.py --lines 20000 --keep /tmp/aliccp   # a quick check, keep the files
    python benchmarks/prepare_aliccp_raw.py --keep /tmp/aliccp --reuse          # again, on the files kept there

10,000,000 lines (6.5 GB) on 2 vCPUs, load 1.1 at the start, December 2026: 128,064 lines/s (78 s; 42,870
lines/s before the numpy block parser) and 9.08 GB peak (9.26 before). Timed inside the build: parsing 46 s
(219,000 lines/s on both cores), mapping in the 7.3 GB of output columns 33 s (fresh memory comes in at
~0.2 GB/s on this virtual machine), vocabularies, filling and checking the columns 6 s. The output columns are
the peak: they scale with the rows until the cache can take them in chunks.

Columns written once (2026-12-02): the figures, alternated with the code before, are in benchmarks/README.md,
"Preparing flat".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from peak_memory import run_child

USER_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129")
USER_CARD = (None, 98, 14, 3, 8, 4, 4, 3, 5)  # 101 = the user id itself
SEQUENCES = {"109_14": 100_000, "110_14": 100_000, "127_14": 100_000, "150_14": 50_000}
ITEM_CARD = {"205": 500_000, "206": 6_000, "207": 150_000, "216": 80_000}
CROSS_CARD = {"508": 200_000, "509": 60_000, "702": 100_000}
SCENARIOS = (9351665, 9351666, 9351667)  # three field-301 ids (the reader discovers them)
FIELDS = USER_FIELDS + tuple(SEQUENCES) + tuple(ITEM_CARD) + ("210",) + tuple(CROSS_CARD) + ("853", "301")
BASE = {f: 10_000_000 * (i + 1) for i, f in enumerate(FIELDS)}  # feature ids unique across fields
IMPRESSIONS_PER_REQUEST = 20
REQUESTS_PER_CHUNK = 5_000
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def zipf_ids(rng: np.random.Generator, n: int, card: int) -> np.ndarray:
    """Heavy-tailed ids in [0, card): rank r with probability ~ (r + 1)^-1.1, ranks scattered over the range."""
    rank = np.minimum(rng.zipf(1.1, n) - 1, card - 1)
    return (rank * 2_654_435_761) % card


def hex_keys(keys: np.ndarray) -> pa.StringArray:
    """uint64 keys as 16-character lowercase hex strings (Tianchi's common_feature_index look)."""
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    digits = HEX[((keys[:, None] >> shifts) & np.uint64(15)).astype(np.intp)]
    offsets = np.arange(0, 16 * len(keys) + 1, 16, dtype=np.int32)
    return pa.StringArray.from_buffers(len(keys), pa.py_buffer(offsets), pa.py_buffer(digits.tobytes()))


def feature_lists(
    row_of: np.ndarray, field: np.ndarray, fid: np.ndarray, value: np.ndarray, n: int
) -> tuple[pa.Array, np.ndarray]:
    """Per row the entries ``field \\x02 fid \\x03 value`` joined by ``\\x01``, and the entry counts."""
    names = pa.array(list(FIELDS)).take(pa.array(field))
    values = pc.cast(pa.array(np.round(value, 5)), pa.string())
    entries = pc.binary_join_element_wise(
        names, pc.binary_join_element_wise(pc.cast(pa.array(fid), pa.string()), values, "\x03"), "\x02"
    )
    offsets = np.searchsorted(row_of, np.arange(n + 1)).astype(np.int32)
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), entries), "\x01"), np.diff(offsets)


def write_lines(f, columns: list[pa.Array]) -> int:
    lines = pc.binary_join_element_wise(*columns, ",")
    text = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines), "\n")
    data = text[0].as_buffer()
    f.write(data)
    f.write(b"\n")
    return len(lines)


def common_chunk(rng: np.random.Generator, keys: np.ndarray, users: np.ndarray) -> list[pa.Array]:
    """One chunk of common-features lines (one per request)."""
    n = len(keys)
    fields, fids, values, rows = [], [], [], []
    for i, (f, card) in enumerate(zip(USER_FIELDS, USER_CARD)):
        fields.append(np.full(n, FIELDS.index(f)))
        fids.append(BASE[f] + (users if card is None else (users * 2_654_435_761 + i) % card))
        values.append(np.ones(n))
        rows.append(np.arange(n))
    for f, card in SEQUENCES.items():
        length = rng.integers(10, 61, n)
        total = int(length.sum())
        fields.append(np.full(total, FIELDS.index(f)))
        fids.append(BASE[f] + zipf_ids(rng, total, card))
        values.append(np.log1p(rng.integers(1, 30, total)))
        rows.append(np.repeat(np.arange(n), length))
    row_of = np.concatenate(rows)
    order = np.argsort(row_of, kind="stable")
    lists, counts = feature_lists(
        row_of[order], np.concatenate(fields)[order], np.concatenate(fids)[order], np.concatenate(values)[order], n
    )
    return [hex_keys(keys), pc.cast(pa.array(counts), pa.string()), lists]


def skeleton_chunk(rng: np.random.Generator, keys: np.ndarray, first_id: int, lines: int) -> list[pa.Array]:
    """One chunk of skeleton lines: ~IMPRESSIONS_PER_REQUEST impressions of each request, in request order."""
    per = rng.integers(1, 2 * IMPRESSIONS_PER_REQUEST, len(keys))
    per[-1] += max(0, lines - int(per.sum()))
    request = np.repeat(np.arange(len(keys)), per)[:lines]
    n = len(request)
    fields, fids, values, rows = [], [], [], []

    def add(f: str, ids: np.ndarray, at: np.ndarray, value: np.ndarray | None = None, base: bool = True) -> None:
        fields.append(np.full(len(ids), FIELDS.index(f)))
        fids.append(BASE[f] + ids if base else ids)
        values.append(np.ones(len(ids)) if value is None else value)
        rows.append(at)

    item = zipf_ids(rng, n, ITEM_CARD["205"])
    everyone = np.arange(n)
    add("205", item, everyone)
    for f in ("206", "207", "216"):
        add(f, (item * 40_503 + len(f)) % ITEM_CARD[f], everyone)
    for f, low, high, card in (("210", 5, 26, 60_000), ("853", 1, 7, 120_000)):
        k = rng.integers(low, high, n)
        add(f, zipf_ids(rng, int(k.sum()), card), np.repeat(everyone, k))
    for f, card in CROSS_CARD.items():
        add(f, zipf_ids(rng, n, card), everyone, np.log1p(rng.integers(1, 30, n)))
    scenario = rng.choice(3, n, p=(0.6, 0.25, 0.15))
    add("301", np.asarray(SCENARIOS)[scenario], everyone, base=False)
    row_of = np.concatenate(rows)
    order = np.argsort(row_of, kind="stable")
    lists, counts = feature_lists(
        row_of[order], np.concatenate(fields)[order], np.concatenate(fids)[order], np.concatenate(values)[order], n
    )
    click = (rng.random(n) < 0.04).astype(np.int64)
    conversion = (click & (rng.random(n) < 0.06)) | (rng.random(n) < 1e-5)  # a few conversions without click
    text = [pc.cast(pa.array(a), pa.string()) for a in (np.arange(first_id, first_id + n), click, conversion)]
    return [*text, hex_keys(keys[request]), pc.cast(pa.array(counts), pa.string()), lists]


def generate(folder: Path, lines: int, seed: int) -> None:
    """The four CSVs of the raw layout: ``lines`` skeleton lines in all, half of them in each split."""
    rng = np.random.default_rng(seed)
    users = max(100, lines // 200)  # users come back: ~10 requests each
    sample_id = 1
    for split, n in (("train", lines - lines // 2), ("test", lines // 2)):
        with (
            open(folder / f"sample_skeleton_{split}.csv", "wb") as sk,
            open(folder / f"common_features_{split}.csv", "wb") as cf,
        ):
            done = 0
            while done < n:
                todo = min(n - done, REQUESTS_PER_CHUNK * IMPRESSIONS_PER_REQUEST)
                requests = max(1, todo // IMPRESSIONS_PER_REQUEST)
                keys = rng.integers(0, 2**63, requests, dtype=np.uint64)
                write_lines(cf, common_chunk(rng, keys, rng.integers(0, users, requests)))
                done += write_lines(sk, skeleton_chunk(rng, keys, sample_id, todo))
                sample_id += todo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=10_000_000, help="skeleton lines, train and test together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", help="write the raw files and the cache here and keep them (default: a temp folder)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: read the raw files written there by a run with these settings",
    )
    a = p.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="aliccp_raw_"))
    raw, cache = work / "raw", work / "cache"
    raw.mkdir(parents=True, exist_ok=True)
    made = raw / "generated.json"  # the settings the files were written with
    try:
        start = time.perf_counter()
        if not (a.reuse and made.exists() and json.loads(made.read_text()) == {"lines": a.lines, "seed": a.seed}):
            made.unlink(missing_ok=True)
            generate(raw, a.lines, a.seed)
            made.write_text(json.dumps({"lines": a.lines, "seed": a.seed}))
        generated = time.perf_counter() - start
        shutil.rmtree(cache, ignore_errors=True)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        child = run_child(
            "module:mtlbench.cli.data",
            ["prepare", "ali_ccp", f"path={raw}", f"cache_dir={cache}", "--json", "--force", "--no-progress"],
            dict(os.environ, PYTHONWARNINGS="ignore"),
        )
        wall = time.perf_counter() - start
        report = json.loads(child.stdout.strip().splitlines()[-1])
        seconds = report["seconds"]  # the whole preparation: build, validation, the entry's files
        print(
            json.dumps(
                {
                    "lines": a.lines,
                    "rows": report["rows"],
                    "seconds": seconds,
                    "lines_per_second": round(a.lines / max(seconds, 1e-9)),
                    "build_seconds": report["build_seconds"],  # until the columns are validated (no writing)
                    "peak_rss_gb": round(child.peak_rss_gb * 1024**3 / 1e9, 3),
                    "peak_anon_gb": round(child.peak_anon_gb * 1024**3 / 1e9, 3),
                    "cache_gb": round(report["bytes"] / 1e9, 3),
                    "raw_gb": round(sum(f.stat().st_size for f in raw.glob("*.csv")) / 1e9, 3),
                    "prepare_wall_seconds": round(wall, 3),
                    "generate_seconds": round(generated, 3),
                    "load_before": round(load, 2),  # 1-minute load average when the build started
                    "load_after": round(os.getloadavg()[0], 2),
                    "stats": report.get("stats", {}),
                }
            )
        )
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
