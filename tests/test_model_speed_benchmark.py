"""benchmarks/model_speed.py at a tiny size: one JSON line with each model's samples/s and its ratio to MMoE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the benchmark script in a subprocess

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "model_speed.py"


def test_model_speed_reports_every_model_against_mmoe(tmp_path):
    args = ["--models", "base_dnn", "mmoe:per=scenario", "--rows", "3000", "--batch", "256"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--steps", "1", "--rounds", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MTLBENCH_CACHE": str(tmp_path / "cache")},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(result) == ["mmoe", "base_dnn", "mmoe:per=scenario"]
    assert result["mmoe"]["vs_mmoe"] == 1.0
    for r in result.values():
        assert r["samples_per_second"] > 0
        assert abs(r["vs_mmoe"] - r["samples_per_second"] / result["mmoe"]["samples_per_second"]) < 0.01
