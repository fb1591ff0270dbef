"""leaderboard.html in a real browser: headless Chromium renders the tables and the embedded plots."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_report import AUCS, NDCG, make_run

from mtlbench.report import leaderboards
from mtlbench.report.tables import ReportSettings
from mtlbench.report.write import write_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = [
    pytest.mark.slow,  # starts a browser
    pytest.mark.skipif(
        CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium; .ci/run does)"
    ),
]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
BAR_BEST = np.array([0xC4, 0x4E, 0x52]) / 255  # colour of the best model's bar (mtlbench.report.html)


class Dom(HTMLParser):
    """Tables (rows of cell texts, by data-table) and images of the DOM Chromium dumps."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str]] = []
        self.svgs: list[dict[str, str]] = []
        self.body: dict[str, str] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "leaderboard" in (a.get("class") or ""):
            self._table = a["data-table"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a)
        elif tag == "svg":
            self.svgs.append(a)
        elif tag == "body":
            self.body = a

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("html")
    for model in AUCS:
        for seed in range(3):
            test = {
                "click": {
                    "auc": AUCS[model][seed],
                    "ndcg@5": NDCG[model][seed],
                    "auc@scenario=0": AUCS[model][seed] - 0.1,
                    "auc@scenario=1": AUCS[model][seed],
                }
            }
            make_run(tmp / "sweep", model, seed, test, curve=[0.6 + 0.01 * seed, 0.65, 0.66], image=model == "ple")
    write_report([tmp / "sweep"], tmp / "report", ReportSettings(metrics=["auc", "ndcg@5"]))
    return tmp / "report" / "leaderboard.html"


def test_dom_has_the_tables_rows_and_plots(report, tmp_path):
    proc = chromium(["--dump-dom", report.as_uri()], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = Dom()
    dom.feed(proc.stdout)
    assert set(dom.tables) == {"Overall", "Per scenario: AUC"}
    overall = dom.tables["Overall"]
    assert overall[0][:4] == ["model", "seeds", "click AUC", "RelaImpr"]
    assert [row[0] for row in overall[1:]] == ["single_task", "mmoe", "ple"]
    assert overall[2][2] == f"{np.mean(AUCS['mmoe']):.4f} ± {np.std(AUCS['mmoe'], ddof=1):.4f}"
    assert [row[0] for row in dom.tables["Per scenario: AUC"][1:]] == ["single_task", "mmoe", "ple"]
    alts = [img["alt"] for img in dom.images]
    assert "validation curves auc" in alts and any("stage_tsne.png" in a for a in alts)
    assert all(img["src"].startswith("data:image/") for img in dom.images)
    charts = [svg["aria-label"] for svg in dom.svgs]
    assert charts == ["bar chart click AUC (lifecycle)", "bar chart click NDCG@5 (lifecycle)"]
    assert dom.body.get("data-sortable") == "3"  # the sorting script ran: two leaderboard tables, significance


def test_screenshot_shows_the_rendered_plots(report, tmp_path):
    import matplotlib.image

    shot = tmp_path / "shot.png"
    proc = chromium([f"--screenshot={shot}", "--window-size=1280,3000", report.as_uri()], tmp_path)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    px = matplotlib.image.imread(shot)[..., :3]
    assert px.shape[:2] == (3000, 1280)
    assert px.std() > 0.05  # not a blank page
    # the bar chart was decoded and painted: pixels in the colour of the best model's bar
    close = np.abs(px - BAR_BEST).max(axis=-1) < 0.03
    assert close.sum() > 500


# -- leaderboards/index.html -----------------------------------------------------------------------------
PAGE = """\
title: Toy board
dataset: lifecycle (toy)
command: mtlbench -m model=single_task,mmoe,ple seed=0,1,2
report: {metrics: [auc, ndcg@5], scenario_metrics: [auc], base: single_task}
commit: abc1234
machine: a laptop
wall_time: not recorded
"""


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("boards") / "leaderboards"
    for model in AUCS:
        for seed in range(3):
            test = {"click": {"auc": AUCS[model][seed], "ndcg@5": NDCG[model][seed], "auc@scenario=0": 0.6}}
            make_run(root / "toy" / "runs", model, seed, test)
    (root / "toy" / "page.yaml").write_text(PAGE)
    leaderboards.regenerate(root)
    return root / "index.html"


def console_errors(stderr: str) -> list[str]:
    """Chromium's log lines of JavaScript errors and console.error calls (--enable-logging=stderr)."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or ":ERROR:" in line)]


def test_index_loads_without_console_errors(index, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>nosuchfunction();</script></body></html>")
    seen = chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", broken.as_uri()], tmp_path)
    assert console_errors(seen.stderr), "the console check does not see a JavaScript error"
    proc = chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", index.as_uri()], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not console_errors(proc.stderr), console_errors(proc.stderr)
    dom = Dom()
    dom.feed(proc.stdout)
    page = index.read_text()
    sortable = len(re.findall(r"<table class=[\"'][^\"']*\bsortable\b", page))
    assert sortable == 3  # overall, per scenario and significance (no gap on this page)
    assert dom.body.get("data-sortable") == str(sortable)
    assert {"bar chart click AUC (lifecycle)", "bar chart click NDCG@5 (lifecycle)"} <= {
        svg["aria-label"] for svg in dom.svgs
    }


@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_index_sorts_a_table_by_a_column(index, tmp_path, direction):
    table_id = "page-toy-s0-t0"
    assert f'id="{table_id}"' in index.read_text()
    # column 2 of the overall table is click AUC (model, seeds, click AUC, RelaImpr, ...)
    proc = chromium(["--dump-dom", f"{index.as_uri()}#sort={table_id}:2:{direction}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = Dom()
    dom.feed(proc.stdout)
    rows = dom.tables["Overall"]
    assert rows[0][2] == "click AUC"
    order = [row[0] for row in rows[1:]]
    expected = sorted(AUCS, key=lambda m: np.mean(AUCS[m]), reverse=direction == "desc")
    assert order == expected and order != list(AUCS)  # sorted, and not the order the page was written in
