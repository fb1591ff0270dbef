"""The committed leaderboards (leaderboards/): every page regenerates to the committed bytes; the generator on a tiny
fake page (facts from page.yaml, numbers from results.json, sortable tables, deterministic output)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_report import make_run

from mtlbench.errors import ConfigError
from mtlbench.report import leaderboards

ROOT = Path(__file__).resolve().parents[1] / "leaderboards"
PAGE = """\
title: Toy board
dataset: lifecycle (toy)
command: mtlbench -m model=single_task,mmoe seed=0,1,2
report: {metrics: [auc], scenario_metrics: [], stage_metrics: [], rule_stage_metrics: [], base: single_task}
commit: abc1234
machine: a laptop
wall_time: not recorded
"""
AUCS = {"single_task": [0.70, 0.71, 0.72], "mmoe": [0.74, 0.76, 0.75]}


def test_committed_pages_are_what_the_generator_writes(tmp_path):
    """Regenerate leaderboards/ in a copy: every generated file must equal the committed one."""
    copy = tmp_path / "leaderboards"
    shutil.copytree(ROOT, copy)
    written = leaderboards.regenerate(copy)
    assert copy / "index.html" in written
    differ = [
        str(p.relative_to(copy))
        for p in written
        if not (ROOT / p.relative_to(copy)).exists() or (ROOT / p.relative_to(copy)).read_bytes() != p.read_bytes()
    ]
    assert not differ, f"stale committed pages (run `mtlbench-report leaderboards --root leaderboards`): {differ}"
    # every folder of runs is a page, and a leaderboard holds results, never predictions
    for runs in ROOT.rglob(leaderboards.RUNS_DIR):
        if runs.is_dir() and runs.parent.name != leaderboards.RUNS_DIR:
            assert (runs.parent / leaderboards.PAGE_FILE).is_file(), f"{runs.parent} has runs/ but no page.yaml"
    assert not [p for p in ROOT.rglob("predictions*")], "predictions do not belong in leaderboards/"
    pages = leaderboards.find_pages(ROOT)
    folders = sorted(f.parent.relative_to(ROOT).as_posix() for f in ROOT.rglob(leaderboards.PAGE_FILE))
    assert [p.rel for p in pages] == folders and "lifecycle/multiscenario" in folders  # every page.yaml, path order


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    root = tmp_path / "leaderboards"
    page = root / "toy"
    for model, values in AUCS.items():
        for seed, auc in enumerate(values):
            make_run(page / "runs", model, seed, {"click": {"auc": auc}}, sps_=100.0 * (seed + 1))
    (page / "page.yaml").write_text(PAGE)
    return root


def test_toy_page_has_the_facts_and_the_numbers_of_its_runs(toy):
    leaderboards.regenerate(toy)
    readme = (toy / "toy" / "README.md").read_text()
    for fact in ("# Toy board", "mtlbench -m model=single_task,mmoe seed=0,1,2", "| commit | abc1234 |"):
        assert fact in readme, fact
    assert "| machine | a laptop |" in readme and "| wall time | not recorded |" in readme
    assert "| runs | 6 runs: 2 configurations in 1 section(s), seeds 0, 1, 2;" in readme
    mmoe = f"| mmoe | 3 | **{np.mean(AUCS['mmoe']):.4f} ± {np.std(AUCS['mmoe'], ddof=1):.4f}**"
    assert mmoe in readme
    relaimpr = ((np.mean(AUCS["mmoe"]) - 0.5) / (np.mean(AUCS["single_task"]) - 0.5) - 1) * 100
    assert f"| {relaimpr:.2f}% |" in readme
    rows = (toy / "toy" / "leaderboard.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,section,table,label") and len(rows) == 3
    # the index: the page's tables sortable by their values, its bar chart inline, nothing fetched
    index = (toy / "index.html").read_text()
    assert index.count('class="leaderboard sortable"') == 1 and "<script>" in index
    sort_keys = re.findall(r'<td class="num[^"]*"(?: title="[^"]*")? data-sort="([0-9.]+)">0\.7', index)
    assert sorted(map(float, sort_keys)) == pytest.approx(sorted(np.mean(v) for v in AUCS.values()), abs=1e-6)
    assert 'aria-label="bar chart click AUC (lifecycle)"' in index
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", index) and "fetch(" not in index


def test_regeneration_is_deterministic_and_check_finds_a_stale_page(toy, tmp_path):
    first = {p.relative_to(toy): p.read_bytes() for p in leaderboards.regenerate(toy)}
    other = tmp_path / "elsewhere" / "leaderboards"
    shutil.copytree(toy, other)
    second = {p.relative_to(other): p.read_bytes() for p in leaderboards.regenerate(other)}
    assert first == second  # same bytes from another folder: no paths, times or dict order leak in
    assert leaderboards.check(toy) == []
    (toy / "toy" / "README.md").write_text("edited by hand\n")
    assert leaderboards.check(toy) == [f"{toy / 'toy' / 'README.md'}: differs from its regeneration"]
    # a seed changes a number: the page changes
    results = toy / "toy" / "runs" / "mmoe_equal__seed0" / "results.json"
    data = json.loads(results.read_text())
    data["metrics"]["test"]["click"]["auc"] = 0.80
    results.write_text(json.dumps(data))
    leaderboards.regenerate(toy)
    assert f"{np.mean([0.80, 0.76, 0.75]):.4f}" in (toy / "toy" / "README.md").read_text()


def test_bad_pages_are_one_clear_error(toy):
    page = toy / "toy" / "page.yaml"
    page.write_text(PAGE.replace("machine: a laptop\n", "speed: fast\n"))
    with pytest.raises(ConfigError, match=r"page\.yaml: missing \['machine'\], unknown \['speed'\]"):
        leaderboards.find_pages(toy)
    page.write_text(PAGE)
    make_run(toy / "toy" / "runs", "ple", 0, {"click": {"auc": 0.7}}, complete=False)
    with pytest.raises(ConfigError, match="without results.json"):
        leaderboards.render(toy)


def test_cli_regenerates_and_checks(toy, capsys):
    from mtlbench.cli.report import main

    args = ["leaderboards", "--root", str(toy)]
    assert main([*args, "--check"]) == 1
    assert f"{toy / 'index.html'}: missing" in capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines() == [
        str(toy / "toy" / "README.md"),
        str(toy / "toy" / "leaderboard.csv"),
        str(toy / "index.html"),
    ]
    assert main([*args, "--check"]) == 0
    assert "0 generated file(s) differ" in capsys.readouterr().err
    (toy / "toy" / "page.yaml").write_text("title: [unclosed\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtlbench-report leaderboards: error:") and "page.yaml is not valid YAML" in err
