"""benchmarks/weighting_cost.py at a tiny size: a Markdown table and one JSON line with ms/step on MMoE and PLE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the benchmark script in a subprocess

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "weighting_cost.py"


def test_weighting_cost_reports_each_method_on_mmoe_and_ple_against_equal(tmp_path):
    args = ["--methods", "famo", "cagrad", "stan_stage", "--rows", "3000", "--batch", "256"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--steps", "1", "--rounds", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MTLBENCH_CACHE": str(tmp_path / "cache")},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith("skipped ['stan_stage']") for line in lines)  # needs model=stan: named, not measured
    result = json.loads(lines[-1])
    assert list(result) == ["equal", "famo", "cagrad"]
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| method | MMoE ms/step | × equal | PLE ms/step | × equal |"
    assert [row.split("|")[1].strip() for row in table[2:]] == ["equal", "famo", "cagrad"]
    for per_model in result.values():
        assert list(per_model) == ["mmoe", "ple"]
        for model, r in per_model.items():
            assert r["ms_per_step"] > 0
            assert abs(r["vs_equal"] - r["ms_per_step"] / result["equal"][model]["ms_per_step"]) < 0.01
    assert result["equal"]["mmoe"]["vs_equal"] == 1.0
