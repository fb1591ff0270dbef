"""The report's ``against`` option: every row tested against its reference row (same other coordinates, the named
coordinate at its reference value), paired by seed, per task and for the mean over tasks; the ranking within each
family; the untested rows in one line; every format (Markdown, CSV, LaTeX, HTML).

The p-values are checked against scipy.stats.ttest_rel / mannwhitneyu on hand-made results, and against the closed
form of the t distribution with 2 degrees of freedom on a hand example.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats as sps
from test_report import make_run, read_csv

from mtlbench.errors import ConfigError
from mtlbench.report import stats
from mtlbench.report.html import to_html
from mtlbench.report.tables import (
    Cell,
    Leaderboard,
    ReportSettings,
    build,
    fmt_p,
    settings_from,
    to_csv,
    to_latex,
    to_markdown,
)

AGAINST = {"weighting": "equal"}
TASKS = ("click", "purchase")
#: (model, weighting) -> task -> AUC per seed (seed = position; None: no run). mmoe+gw_up is clearly above equal in
#: click (differences .010, .009, .011), mmoe+gw_same differs by +.01, -.01, 0 in click (mean 0: p = 1), mmoe+gw_one
#: has one seed, ple+gw_up runs a fourth seed its reference lacks, shared_bottom has no equal row
RUNS: dict[tuple[str, str], dict[str, list[float | None]]] = {
    ("mmoe", "equal"): {"click": [0.700, 0.710, 0.720], "purchase": [0.650, 0.640, 0.660]},
    ("mmoe", "gw_up"): {"click": [0.710, 0.719, 0.731], "purchase": [0.652, 0.645, 0.659]},
    ("mmoe", "gw_same"): {"click": [0.710, 0.700, 0.720], "purchase": [0.640, 0.650, 0.655]},
    ("mmoe", "gw_one"): {"click": [0.690, None, None], "purchase": [0.600, None, None]},
    ("ple", "equal"): {"click": [0.705, 0.700, 0.712], "purchase": [0.661, 0.655, 0.650]},
    ("ple", "gw_up"): {"click": [0.707, 0.711, 0.713, 0.800], "purchase": [0.662, 0.651, 0.659, 0.700]},
    ("shared_bottom", "gw_up"): {"click": [0.690, 0.691, 0.692], "purchase": [0.630, 0.631, 0.632]},
}


def seeds_of(values: dict[str, list[float | None]]) -> list[int]:
    return [s for s, v in enumerate(values["click"]) if v is not None]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    for (model, weighting), values in RUNS.items():
        for seed in seeds_of(values):
            test = {t: {"auc": values[t][seed]} for t in TASKS}
            make_run(tmp_path / "sweep", model, seed, test, weighting=weighting)
    return tmp_path / "sweep"


def settings(**kw) -> ReportSettings:
    return ReportSettings(
        **{"metrics": ["auc"], "scenario_metrics": [], "stage_metrics": [], "rule_stage_metrics": [], "base": None}
        | {"against": AGAINST}
        | kw
    )


def paired(row: tuple[str, str], ref: tuple[str, str], task: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The values of ``row`` and ``ref`` on the seeds both have (``task`` None: the mean over tasks)."""
    common = sorted(set(seeds_of(RUNS[row])) & set(seeds_of(RUNS[ref])))

    def vals(key: tuple[str, str]) -> np.ndarray:
        tasks = TASKS if task is None else (task,)
        return np.array([np.mean([RUNS[key][t][s] for t in tasks]) for s in common])

    return vals(row), vals(ref)


def cells_by_label(board: Leaderboard) -> dict[str, dict[str, Cell]]:
    """Overall table: row label -> column header -> cell."""
    table = board.sections[0].tables[0]
    return {r.label: {c.header: cell for c, cell in zip(table.columns, r.cells)} for r in table.rows}


# -- the vectorised tests --------------------------------------------------------------------------------------------
def test_row_tests_match_scipy_ttest_rel_with_missing_seeds():
    rng = np.random.default_rng(7)
    a = 0.7 + 0.01 * rng.standard_normal((40, 5))
    b = a - 0.003 + 0.01 * rng.standard_normal((40, 5))
    a[rng.random(a.shape) < 0.2] = np.nan  # seeds a row or its reference lacks
    b[rng.random(b.shape) < 0.2] = np.nan
    res = stats.tests_against(a, b, "ttest", min_n=2)
    for i in range(len(a)):
        both = ~np.isnan(a[i]) & ~np.isnan(b[i])
        assert res.n[i] == both.sum()
        if both.sum() < 2:
            assert math.isnan(res.p[i])
            continue
        ref = sps.ttest_rel(a[i][both], b[i][both])
        assert res.p[i] == pytest.approx(ref.pvalue, rel=1e-10)
        assert res.statistic[i] == pytest.approx(ref.statistic, rel=1e-10)
        assert res.diff[i] == pytest.approx(np.mean(a[i][both] - b[i][both]))


def test_row_tests_by_hand_and_the_constant_differences():
    ref = np.array([0.70, 0.71, 0.72])
    a = np.stack([ref + [0.01, 0.02, 0.03], ref + [0.01, -0.01, 0.0], ref + 0.02, ref, ref + [0.01, 0.02, np.nan]])
    res = stats.tests_against(a, np.tile(ref, (5, 1)), "ttest")
    # differences .01, .02, .03: mean .02, sd .01, t = .02 / (.01 / sqrt 3) = 2 sqrt 3; with 2 degrees of freedom the
    # two-sided p is 1 - t / sqrt(t^2 + 2) = 1 - sqrt(12 / 14)
    assert res.statistic[0] == pytest.approx(2 * math.sqrt(3))
    assert res.p[0] == pytest.approx(1 - math.sqrt(12 / 14))
    assert res.p[1] == pytest.approx(1.0) and res.diff[1] == pytest.approx(0.0, abs=1e-12)  # mean difference 0
    # constant differences, as stats.significance: p 0 (all +.02: up to rounding of .72 + .02) and 1 (all 0)
    assert res.p[3] == 1.0 and res.constant[3] and math.isnan(res.statistic[3])
    assert res.p[2] < 1e-6
    # 2 pairs are no test by default (the report's minimum, stats.MIN_SEEDS_FOR_TEST = 3); with min_n=2 they are
    # one with 1 degree of freedom: p = 1 - 2 atan(|t|) / pi
    assert res.n[4] == 2 and math.isnan(res.p[4])
    two = stats.tests_against(a[4:], ref[None], "ttest", min_n=2)
    assert two.p[0] == pytest.approx(1 - 2 * math.atan(3.0) / math.pi)


def test_row_tests_mann_whitney_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.random((10, 4)), rng.random((10, 4))
    a[0, :3] = np.nan  # one value: not tested
    a[1, 0] = np.nan
    res = stats.tests_against(a, b, "mannwhitney")
    assert math.isnan(res.p[0]) and res.n[0] == 1
    for i in range(1, 10):
        x = a[i][~np.isnan(a[i])]
        assert res.p[i] == pytest.approx(sps.mannwhitneyu(x, b[i], alternative="two-sided").pvalue)
        assert res.diff[i] == pytest.approx(x.mean() - b[i].mean())


# -- the report -------------------------------------------------------------------------------------------------------
def test_each_row_is_tested_against_equal_of_its_model_paired_by_seed(sweep):
    board = build([sweep], settings())
    cells = cells_by_label(board)
    headers = ["click AUC", "purchase AUC", "mean AUC"]
    assert list(next(iter(cells.values()))) == headers  # the mean over tasks follows the tasks
    tested = 0
    for (model, weighting), ref in [
        (("mmoe", "gw_up"), ("mmoe", "equal")),
        (("mmoe", "gw_same"), ("mmoe", "equal")),
        (("ple", "gw_up"), ("ple", "equal")),
    ]:
        for header, task in zip(headers, ["click", "purchase", None]):
            x, y = paired((model, weighting), ref, task)
            cell = cells[f"{model} + {weighting}"][header]
            expected = sps.ttest_rel(x, y)
            assert cell.test.p == pytest.approx(expected.pvalue, rel=1e-9), (model, weighting, header)
            assert cell.test.n == len(x) == 3  # ple + gw_up's fourth seed has no pair
            assert cell.diff == pytest.approx(np.mean(x - y))
            assert cell.mark == ("**" if expected.pvalue < 0.01 else "*" if expected.pvalue < 0.05 else "")
            tested += 1
    assert cells["mmoe + gw_up"]["click AUC"].mark == "**"  # the obvious one: +.010, +.009, +.011
    assert cells["mmoe + gw_same"]["click AUC"].test.p == pytest.approx(1.0)  # +.01, -.01, 0
    # the reference and the rows without a test carry none
    assert all(c.test is None and c.mark == "" for c in cells["mmoe + equal"].values())
    assert all(c.test.p is None for c in cells["mmoe + gw_one"].values())
    assert all(c.test is None for c in cells["shared_bottom + gw_up"].values())
    assert board.sections[0].tables[0].comparisons == []  # not the best against the best baseline
    # the mean column is the mean over tasks per seed, then over seeds
    mean = cells["ple + gw_up"]["mean AUC"]
    assert mean.mean == pytest.approx(np.mean([np.mean(v) for v in zip(*RUNS[("ple", "gw_up")].values())]))
    assert tested == 9


def test_ranking_within_each_model_by_the_mean_over_tasks(sweep):
    md = to_markdown(build([sweep], settings()))
    block = md.split("### Significance against weighting=equal\n", 1)[1].split("\n\n")[1].splitlines()
    # rank, label, seeds, the ranking value, then one difference per column
    assert block[0] == "| rank in model | model | seeds | mean AUC | Δ click AUC | Δ purchase AUC | Δ mean AUC |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block[2:]]
    # mean AUC over tasks by hand: mmoe: gw_up .686, equal .680, gw_same .6792, gw_one .645; ple: gw_up .7004 (its 4
    # seeds), equal .6805; shared_bottom + gw_up alone (no reference: still ranked in its family)
    assert [(r[0], r[1]) for r in rows] == [
        ("1", "mmoe + gw_up"),
        ("2", "mmoe + equal"),
        ("3", "mmoe + gw_same"),
        ("4", "mmoe + gw_one"),
        ("1", "ple + gw_up"),
        ("2", "ple + equal"),
        ("1", "shared_bottom + gw_up"),
    ]
    assert rows[1][4:] == ["reference"] * 3
    per_seed = np.mean([RUNS[("mmoe", "gw_up")][t] for t in TASKS], axis=0)  # mean over tasks, per seed
    assert rows[0][3] == f"{per_seed.mean():.4f} ± {per_seed.std(ddof=1):.4f}"
    assert rows[3][4] == "-0.0100 (untested)" and rows[6][4:] == ["n/a"] * 3


def test_markdown_counts_the_tests_and_lists_the_untested_rows_in_one_line(sweep):
    board = build([sweep], settings())
    md = to_markdown(board)
    assert "9 tests, no multiple-comparison correction" in md and "about 0.5 of these 9" in md
    assert "significance of each row against the row with weighting=equal and the same model" in md  # the legend
    untested = [line for line in md.splitlines() if line.startswith("Not tested")]
    assert untested == [
        "Not tested (fewer than 3 seeds paired with the reference): mmoe + gw_one (1 seed); "
        "Not tested (no row with weighting=equal and the same model): shared_bottom + gw_up. Test: paired t-test."
    ]
    # a cell: difference, mark, p-value; ple + gw_up paired 3 of its 4 seeds
    x, y = paired(("mmoe", "gw_up"), ("mmoe", "equal"), "click")
    p = sps.ttest_rel(x, y).pvalue
    assert f"| +{np.mean(x - y):.4f}\\*\\* (p={fmt_p(p)}) |" in md
    assert ", n=3)" in next(line for line in md.splitlines() if line.startswith("| 1 | ple + gw_up |"))
    # the overall table's cells carry the marks too
    assert "\\*\\*" in next(line for line in md.split("### Overall", 1)[1].splitlines() if "| mmoe + gw_up |" in line)


def test_csv_latex_and_html_carry_the_same_tests(sweep):
    board = build([sweep], settings())
    rows = {(r["label"], r["task"]): r for r in read_csv(to_csv(board))}
    x, y = paired(("mmoe", "gw_up"), ("mmoe", "equal"), None)
    mean = rows[("mmoe + gw_up", "mean")]
    assert mean["compared_with"] == "mmoe + equal" and mean["test"] == "ttest"
    assert float(mean["p_value"]) == pytest.approx(sps.ttest_rel(x, y).pvalue)
    assert float(mean["difference"]) == pytest.approx(np.mean(x - y))
    assert rows[("mmoe + equal", "click")]["note"] == "reference" and rows[("mmoe + equal", "click")]["p_value"] == ""
    assert rows[("shared_bottom + gw_up", "click")]["note"] == "no row with weighting=equal"
    assert rows[("mmoe + gw_one", "click")]["note"].startswith("no test: 1 seed(s) paired with the reference")
    ranks = {label: int(r["against_rank"]) for (label, task), r in rows.items() if task == "mean"}
    assert ranks["shared_bottom + gw_up"] == 1 and sorted(v for k, v in ranks.items() if k.startswith("ple")) == [1, 2]

    tex = to_latex(board)
    assert "Significance against weighting=equal" in tex and "$\\Delta$ mean AUC" in tex
    assert "$^{**}$ (p=" in tex and "reference & reference & reference" in tex
    assert "9 tests, no multiple-comparison correction" in tex and "Not tested (fewer than 3 seeds" in tex
    captions = [line for line in tex.splitlines() if line.startswith("\\caption")]
    assert any("p $<$ 0.05" in c for c in captions) and not any(" < " in c for c in captions)

    page = to_html(board)
    assert '<table class="against sortable"' in page and "<th>Δ click AUC</th>" in page
    assert '<sup class="sig">**</sup> (p=' in page and '<p class="untested">Not tested (fewer than 3 seeds' in page
    assert "9 tests, no multiple-comparison correction" in page


def test_mann_whitney_against_the_reference(sweep):
    board = build([sweep], settings(test="mannwhitney"))
    cell = cells_by_label(board)["ple + gw_up"]["click AUC"]
    row, ref = RUNS[("ple", "gw_up")]["click"], RUNS[("ple", "equal")]["click"]
    assert cell.test.p == pytest.approx(sps.mannwhitneyu(row, ref, alternative="two-sided").pvalue)  # all 4 seeds
    assert "Mann-Whitney U test of all the seeds of each row (unpaired)" in to_markdown(board)


def test_a_variant_key_as_the_axis(tmp_path):
    for experts, values in {4: [0.70, 0.71, 0.72], 8: [0.72, 0.74, 0.73]}.items():
        for seed, auc in enumerate(values):
            make_run(tmp_path, "mmoe", seed, {"click": {"auc": auc}}, model_cfg={"num_experts": experts})
    board = build([tmp_path], settings(against={"model.num_experts": 4}))
    cells = cells_by_label(board)
    cell = cells["mmoe (num_experts=8)"]["click AUC"]
    assert cell.test.p == pytest.approx(sps.ttest_rel([0.72, 0.74, 0.73], [0.70, 0.71, 0.72]).pvalue)
    assert "mean AUC" not in cells["mmoe (num_experts=8)"]  # one task: no mean column, ranked by the task
    assert "against the row with model.num_experts=4 and the same model and weighting" in to_markdown(board)


def test_bad_against_settings_are_one_clear_error(sweep):
    for bad in ("weighting=equal", {}, {"weighting": ["equal"]}, {"weighting": None}):
        with pytest.raises(ConfigError, match="against must map row coordinates"):
            settings(against=bad)
    with pytest.raises(ConfigError, match=r"against: \['weigting'\] are not coordinates.*'model', 'weighting'"):
        build([sweep], settings(against={"weigting": "equal"}))
    # from a config (OmegaConf container) and off with none
    assert settings_from(against=OmegaConf.create({"weighting": "equal"})).against == AGAINST
    assert settings_from(against="none").against is None


def test_the_weightings_experiment_and_page_use_it():
    from hydra import compose, initialize_config_module

    from mtlbench.config import register_configs
    from mtlbench.report import leaderboards

    register_configs()
    with initialize_config_module("mtlbench.configs", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=weightings"], return_hydra_config=True)
    report = {k: v for k, v in cfg.hydra.callbacks.summary.items() if k not in ("_target_", "title")}
    assert settings_from(**report).against == AGAINST
    root = Path(__file__).resolve().parents[1] / "leaderboards"
    page = leaderboards.load_page(root / "lifecycle" / "weightings", root)
    assert page.report["against"] == AGAINST
    readme = (page.path / "README.md").read_text()
    assert "### Significance against weighting=equal" in readme and "| rank in model | model | seeds |" in readme


def test_the_report_command_takes_against(sweep, tmp_path, capsys):
    from mtlbench.cli.report import main

    out = tmp_path / "report"
    argv = [str(sweep), "--out", str(out), "--metrics", "auc", "--base", "none", "--no-html", "--quiet"]
    assert main([*argv, "--against", "weighting=equal"]) == 0
    md = (out / "leaderboard.md").read_text()
    assert "### Significance against weighting=equal" in md and "9 tests, no multiple-comparison correction" in md
    assert main([*argv, "--against", "weighting"]) != 0
    assert "--against expects NAME=VALUE, got 'weighting'" in capsys.readouterr().err
