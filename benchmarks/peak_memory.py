"""Run a child Python process and report its peak RSS (VmHWM) and peak anonymous memory (RssAnon).

RssAnon, sampled every 20 ms from ``/proc/self/status`` by a thread in the child, is what the process itself
allocated; RSS also counts the pages of memory-mapped files (the cache, a build's disk-backed columns), which
the kernel can drop and re-read. Shared by ``memory_10m.py`` and ``prepare_aliccp_raw.py``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

# runs a snippet or a module in a child; a thread samples RssAnon; both peaks go to stderr at exit
WRAP = """
import atexit, runpy, sys, threading, time
peak = [0]
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
    return 0
def sample():
    while True:
        peak[0] = max(peak[0], status("RssAnon:"))
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
def report():
    peak[0] = max(peak[0], status("RssAnon:"))
    print("PEAK_KB", status("VmHWM:"), peak[0], file=sys.stderr)
atexit.register(report)
what, sys.argv = sys.argv[1], sys.argv[1:]
exec(what) if not what.startswith("module:") else runpy.run_module(what[7:], run_name="__main__")
"""


@dataclass
class ChildRun:
    seconds: float
    peak_rss_gb: float  # GiB
    peak_anon_gb: float  # GiB
    stdout: str


def run_child(what: str, args: list[str], env: dict[str, str]) -> ChildRun:
    """Run a snippet (or ``module:name`` with ``args`` as its argv) in a child; exit with its stderr if it fails."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAP, what, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rss, anon = [line.split()[1:] for line in proc.stderr.splitlines() if line.startswith("PEAK_KB")][-1]
    return ChildRun(seconds, int(rss) / 1024**2, int(anon) / 1024**2, proc.stdout)
