"""The committed leaderboards: one page per folder under ``leaderboards/``, regenerated from its runs.

A page folder holds ``page.yaml`` and ``runs/<name>/results.json`` (and each run's ``config.yaml``; never
predictions). ``page.yaml`` states what the runs cannot: the title, the dataset, the exact command that produced the
runs, the report settings (:class:`~mtlbench.report.tables.ReportSettings` fields: metrics, base, candidate, ...),
the commit, the machine and the wall time ("not recorded" where nobody wrote it down), optionally a description and
``recorded``: files made at run time from data that is not committed (e.g. a bootstrap over predictions), kept as
they are and listed on the page. :func:`regenerate` writes, per page, ``README.md`` (the facts, then the report's
tables) and ``leaderboard.csv``; and ``index.html`` across pages (sortable tables in inline JavaScript, the report's
bar charts as inline SVG, the recorded PNGs inlined; nothing fetched). Every byte comes from page.yaml and the
runs' results.json (and the recorded files): no generation time, pages and runs in path order, floats with fixed
digits, so :func:`check` can compare the committed files with a fresh rendering.

``mtlbench-report leaderboards [--root leaderboards] [--check]`` runs it.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mtlbench.errors import ConfigError
from mtlbench.report.html import (
    CSS,
    IMAGE_TYPES,
    SORT_JS,
    against_html,
    bar_charts,
    gap_html,
    html_table,
    significance_html,
)
from mtlbench.report.tables import Leaderboard, build, legend, settings_from, to_csv, to_markdown
from mtlbench.rundir import RESULTS_FILE, write_text

PAGE_FILE = "page.yaml"
RUNS_DIR = "runs"
INDEX_FILE = "index.html"
README_FILE = "README.md"
CSV_FILE = "leaderboard.csv"
#: significant digits of the floats in leaderboard.csv (enough for any comparison; stable across library versions)
CSV_DIGITS = 10
REQUIRED = ("title", "dataset", "command", "report", "commit", "machine", "wall_time")
OPTIONAL = ("description", "recorded")
COMMAND = "mtlbench-report leaderboards --root leaderboards"
INDEX_CSS = """
pre.command { background: #f6f6f6; padding: .6em; overflow-x: auto; }
table.facts th { text-align: left; font-weight: normal; color: #555; }
a.folder { font-size: .6em; font-weight: normal; }
section.page { margin-top: 3em; }
"""
ENVIRONMENT_KEYS = ("python", "torch", "pytorch_lightning", "numpy", "platform", "usable_cpus", "threads", "cuda")


@dataclass
class Page:
    """One leaderboard page: its folder (``rel``: relative to the root, with ``/``) and its page.yaml."""

    path: Path
    rel: str
    title: str
    dataset: str
    command: str
    report: dict[str, Any]
    commit: str
    machine: str
    wall_time: str
    description: str = ""
    recorded: dict[str, str] = field(default_factory=dict)

    @property
    def anchor(self) -> str:
        return "page-" + re.sub(r"[^A-Za-z0-9]+", "-", self.rel).strip("-")


def load_page(path: str | Path, root: str | Path) -> Page:
    """Read and check ``<path>/page.yaml``; a missing or unknown key is a ConfigError naming the file."""
    path = Path(path)
    file = path / PAGE_FILE
    if not file.is_file():
        raise ConfigError(f"no {PAGE_FILE} in {path}")
    try:
        data = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    except Exception as e:  # the YAML parser's errors
        raise ConfigError(f"{file} is not valid YAML ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{file} must be a mapping of {', '.join(REQUIRED)}")
    missing = [k for k in REQUIRED if data.get(k) in (None, "")]
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if missing or unknown:
        raise ConfigError(f"{file}: missing {missing or 'nothing'}, unknown {unknown or 'nothing'} (keys: {REQUIRED})")
    if not isinstance(data["report"], dict):
        raise ConfigError(f"{file}: report must be a mapping of report settings")
    if not (path / RUNS_DIR).is_dir():
        raise ConfigError(f"{file}: no {RUNS_DIR}/ folder beside it")
    recorded = {str(k): str(v).strip() for k, v in (data.get("recorded") or {}).items()}
    for name in recorded:
        if not (path / name).is_file():
            raise ConfigError(f"{file}: recorded file {name!r} is not in {path}")
    text = {k: str(data[k]).strip() for k in REQUIRED if k != "report"}
    return Page(
        path=path,
        rel=path.resolve().relative_to(Path(root).resolve()).as_posix(),
        report=dict(data["report"]),
        description=str(data.get("description") or "").strip(),
        recorded=recorded,
        **text,
    )


def find_pages(root: str | Path) -> list[Page]:
    """Every folder under ``root`` with a page.yaml, in path order."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"leaderboards root {str(root)!r} is not a folder")
    files = sorted(root.rglob(PAGE_FILE), key=lambda p: p.parent.relative_to(root).as_posix())
    if not files:
        raise ConfigError(f"no {PAGE_FILE} under {root}")
    return [load_page(f.parent, root) for f in files]


def build_page(page: Page) -> Leaderboard:
    """The report of a page's runs with its settings (title: the page's); a run without results.json is an error."""
    if "title" in page.report:
        raise ConfigError(f"{page.path / PAGE_FILE}: the report's title is the page's title (drop report.title)")
    board = build([page.path / RUNS_DIR], settings_from(**page.report, title=page.title))
    if board.incomplete:
        raise ConfigError(
            f"{page.path}: runs without {RESULTS_FILE} do not belong in a leaderboard: {board.incomplete}"
        )
    if not board.sections:
        raise ConfigError(f"{page.path}: no complete runs under {RUNS_DIR}/")
    return board


def _runs(board: Leaderboard) -> list[dict[str, Any]]:
    return [r.results for sb in board.sections for g in sb.section.groups for r in g.runs]


def environment(board: Leaderboard) -> list[tuple[str, str]]:
    """The runs' software and platform (results.json ``version`` and ``environment``): each key's distinct values."""
    runs = _runs(board)
    out = []
    versions = sorted({str(r.get("version")) for r in runs if r.get("version") is not None})
    if versions:
        out.append(("mtlbench", " / ".join(versions)))
    for key in ENVIRONMENT_KEYS:
        values = sorted(
            {str((r.get("environment") or {}).get(key)) for r in runs if key in (r.get("environment") or {})}
        )
        if values:
            out.append((key, " / ".join(values)))
    return out


def data_settings(board: Leaderboard) -> str:
    """The ``dataset.*`` config values every run shares (results.json ``config``); those that differ name the
    sections."""
    runs = [r for sb in board.sections for g in sb.section.groups for r in g.runs]
    # the dataset's own training budget is left out: the trainer's settings override it (epochs: see run_summary)
    keys = sorted({k for r in runs for k in r.flat if k.startswith("dataset.") and not k.startswith("dataset.budget.")})
    shared = []
    for k in keys:
        values = {repr(r.flat.get(k)) for r in runs}
        if len(values) == 1 and k in runs[0].flat:
            shared.append(f"{k.split('.', 1)[1]}={_value(runs[0].flat[k])}")
    return ", ".join(shared)


def _value(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def run_summary(board: Leaderboard) -> str:
    """How many runs, groups and seeds; the epochs trained and the sum of the runs' training time (results.json
    ``train``)."""
    runs = _runs(board)
    groups = [g for sb in board.sections for g in sb.section.groups]
    seeds = sorted({r["seed"] for r in runs})
    seconds = [r.get("train", {}).get("seconds") for r in runs]
    known = [float(s) for s in seconds if s is not None]
    text = (
        f"{len(runs)} runs: {len(groups)} configurations in {len(board.sections)} section(s), "
        f"seeds {', '.join(map(str, seeds))}"
    )
    epochs = sorted({int(r["train"]["epochs"]) for r in runs if r.get("train", {}).get("epochs") is not None})
    if epochs:
        text += "; epochs trained (results.json train.epochs): " + (
            str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
        )
    if known:
        text += f"; training time summed over the runs (results.json train.seconds): {sum(known) / 60:.1f} min" + (
            "" if len(known) == len(runs) else f" ({len(known)} of {len(runs)} runs record it)"
        )
    return text


def _settings_text(report: dict[str, Any]) -> str:
    """One ``key: value`` line per setting, in key order, values in JSON (which is YAML)."""
    return "\n".join(f"{k}: {json.dumps(report[k], ensure_ascii=False)}" for k in sorted(report))


def page_facts(page: Page, board: Leaderboard) -> list[tuple[str, str]]:
    """The facts a page lists (README.md and index.html alike): page.yaml's, then what the runs record."""
    return [
        ("dataset", page.dataset),
        ("data settings (results.json)", data_settings(board)),
        ("commit", page.commit),
        ("machine", page.machine),
        ("wall time", page.wall_time),
        ("runs", run_summary(board)),
        *environment(board),
    ]


def readme(page: Page, board: Leaderboard) -> str:
    """The page's README.md: the facts of page.yaml and the runs, then the report's Markdown (tables, significance,
    gap)."""
    md = to_markdown(board).split("\n", 1)[1].lstrip("\n")  # without its '# title' line: the page has its own
    facts = page_facts(page, board)
    out = [
        f"# {page.title}",
        "",
        f"<!-- Generated by `{COMMAND}` from page.yaml and runs/*/{RESULTS_FILE}: edit page.yaml, not this file. -->",
        "",
    ]
    if page.description:
        out += [page.description, ""]
    out += ["The command that produced the runs:", "", "```bash", page.command, "```", ""]
    out += ["| | |", "|---|---|", *(f"| {k} | {_md_cell(v)} |" for k, v in facts), ""]
    out += ["Report settings (page.yaml `report`):", "", "```yaml", _settings_text(page.report), "```", ""]
    out += [f"Each run's `results.json` and `config.yaml` are in `{RUNS_DIR}/`. Regenerate this page with "]
    out[-1] += f"`{COMMAND}`."
    out.append("")
    if page.recorded:
        out += ["Recorded at run time from data that is not committed (kept as they are, not regenerated):", ""]
        out += [f"- [`{name}`]({name}): {what}" for name, what in page.recorded.items()]
        out.append("")
    return "\n".join(out) + "\n" + md.rstrip("\n") + "\n"


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _recorded_images(page: Page) -> list[str]:
    e = html.escape
    out = []
    for name, what in page.recorded.items():
        mime = IMAGE_TYPES.get(Path(name).suffix.lower())
        if mime is None:
            continue
        b64 = base64.b64encode((page.path / name).read_bytes()).decode("ascii")
        out.append(
            f'<figure class="recorded"><img class="plot" alt="{e(name)}" src="data:{mime};base64,{b64}">'
            f"<figcaption>{e(name)}: {e(what)}</figcaption></figure>"
        )
    return out


def page_html(page: Page, board: Leaderboard) -> str:
    """A page's section of index.html."""
    e = html.escape
    facts = page_facts(page, board)
    body = [
        f'<section class="page" id="{page.anchor}">',
        f'<h2>{e(page.title)} <a class="folder" href="{e(page.rel)}/{README_FILE}">{e(page.rel)}/</a></h2>',
    ]
    if page.description:
        body.append(f"<p>{e(page.description)}</p>")
    body.append(f"<pre class='command'><code>{e(page.command)}</code></pre>")
    body.append(
        "<table class='facts'><tbody>"
        + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
        + "</tbody></table>"
    )
    body.append(f'<p class="legend">{e(legend(board, "html"))}</p>')
    for i, sb in enumerate(board.sections):
        body.append(f"<h3>{e(sb.section.title)}</h3>")
        for j, table in enumerate(sb.tables):
            body.append(f"<h4>{e(table.title)}</h4>")
            table_id = f"{page.anchor}-s{i}-t{j}"
            body.append(html_table(sb, table, table is sb.tables[0], "leaderboard sortable", table_id))
        body += significance_html([c for t in sb.tables for c in t.comparisons], board, "significance sortable")
        body += against_html(sb, board, "against sortable")
        charts = bar_charts(sb)
        if charts:
            body.append("<h4>Plots</h4>")
            body += charts
    if board.gap is not None:
        body += gap_html(board.gap, heatmaps=False, table_class="gap sortable")
    images = _recorded_images(page)
    if images:
        body.append("<h3>Recorded at run time</h3>")
        body += images
    body.append("</section>")
    return "\n".join(body)


def index_html(pages: Sequence[tuple[Page, Leaderboard]]) -> str:
    """index.html across pages: a contents list, then each page's facts, tables and plots."""
    e = html.escape
    toc = "".join(f'<li><a href="#{p.anchor}">{e(p.title)}</a> ({e(p.dataset)}; {e(p.rel)})</li>' for p, _ in pages)
    body = [
        "<h1>mtlbench leaderboards</h1>",
        '<p class="legend">Every page is regenerated from its committed runs (results.json) and page.yaml by '
        f"<code>{e(COMMAND)}</code>. Click a column header to sort.</p>",
        f"<ul class='toc'>{toc}</ul>",
        *(page_html(p, b) for p, b in pages),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>mtlbench leaderboards</title>'
        f"<style>{CSS}{INDEX_CSS}</style></head><body>\n"
        + "\n".join(body)
        + f"\n<script>{SORT_JS}</script>\n</body></html>\n"
    )


def render(root: str | Path) -> dict[Path, str]:
    """Every generated file under ``root`` (relative path -> text), without writing."""
    root = Path(root)
    pages = [(p, build_page(p)) for p in find_pages(root)]
    out: dict[Path, str] = {}
    for page, board in pages:
        rel = Path(page.rel)
        out[rel / README_FILE] = readme(page, board)
        out[rel / CSV_FILE] = to_csv(board, digits=CSV_DIGITS)
    out[Path(INDEX_FILE)] = index_html(pages)
    return out


def regenerate(root: str | Path) -> list[Path]:
    """Write every page's README.md and leaderboard.csv and the index under ``root``; the paths written."""
    root = Path(root)
    written = []
    for rel, text in render(root).items():
        write_text(root / rel, text)
        written.append(root / rel)
    return written


def check(root: str | Path) -> list[str]:
    """The generated files whose committed text under ``root`` differs from a fresh rendering (one line each)."""
    root = Path(root)
    stale = []
    for rel, text in render(root).items():
        path = root / rel
        if not path.exists():
            stale.append(f"{path}: missing")
        elif path.read_text() != text:
            stale.append(f"{path}: differs from its regeneration")
    return stale
