"""mtlbench-report: collecting run directories, grouping, statistics and the table writers.

Runs are written by hand (results.json, config.yaml, logs/metrics.csv) with numbers whose mean, std,
RelaImpr and p-values are computed here independently.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from mtlbench.report import stats
from mtlbench.report.collect import find_runs, group_runs
from mtlbench.report.html import to_html
from mtlbench.report.tables import ReportSettings, build, to_csv, to_latex, to_markdown
from mtlbench.report.write import write_report

BASE_CFG = {
    "dataset": {"name": "lifecycle", "n_rows": 1000, "split": {"method": "auto", "ratios": [0.8, 0.1, 0.1]}},
    "model": {"name": "mmoe", "embedding_dim": 16},
    "weighting": {"name": "equal"},
    "trainer": {"max_epochs": 1, "enable_progress_bar": False},
    "logger": {"name": "csv"},
    "optimizer": {"name": "adam", "lr": 0.001},
    "seed": 0,
    "batch_size": 512,
    "print_summary": True,
    "resume": False,
}


def make_run(
    root: Path,
    model: str,
    seed: int,
    test: dict[str, dict[str, float]],
    *,
    weighting: str = "equal",
    model_cfg: dict | None = None,
    data_cfg: dict | None = None,
    cfg: dict | None = None,
    valid: dict | None = None,
    sps_: float = 1000.0,
    params: int = 123,
    curve: list[float] | None = None,
    image: bool = False,
    complete: bool = True,
) -> Path:
    """A run directory as mtlbench.training.run.train writes it."""
    config = json.loads(json.dumps(BASE_CFG))
    config["model"] = {"name": model, "embedding_dim": 16, **(model_cfg or {})}
    config["weighting"] = {"name": weighting}
    config["dataset"].update(data_cfg or {})
    config["seed"] = seed
    config.update(cfg or {})
    extra = "_".join(f"{k}{v}" for k, v in sorted({**(model_cfg or {}), **(data_cfg or {})}.items()))
    run = root / f"{model}_{weighting}_{extra}_seed{seed}"
    run.mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")  # Hydra's copy: not a run
    (run / "config.yaml").write_text(json.dumps(config))
    if curve is not None:
        (run / "logs").mkdir()
        lines = ["epoch,step,train/loss,valid/click/auc,test/click/auc"]
        lines += [f"{e},{10 * e + 9},,{v}," for e, v in enumerate(curve)]
        # the validation of the selected checkpoint after fitting, logged at the step of the test metrics
        lines += [f"{len(curve)},{10 * len(curve)},,0.99,", f"{len(curve)},{10 * len(curve)},,,0.7"]
        (run / "logs" / "metrics.csv").write_text("\n".join(lines) + "\n")
    if image:
        import matplotlib.image

        matplotlib.image.imsave(run / "stage_tsne.png", np.random.default_rng(0).random((20, 20, 3)))
    if complete:
        results = {
            "model": model,
            "dataset": config["dataset"]["name"],
            "weighting": weighting,
            "seed": seed,
            "version": "0.1.0",
            "metrics": {"valid": valid or test, "test": test},
            "train": {"samples_per_second": sps_, "seconds": 1.0},
            "params": params,
            "config": config,
        }
        (run / "results.json").write_text(json.dumps(results))
    return run


def table_rows(md: str, title: str) -> dict[str, list[str]]:
    """Cells of a Markdown table under ``### title``, by model label."""
    lines = md.split(f"### {title}\n", 1)[1].strip("\n").split("\n\n", 1)[0].splitlines()
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# -- statistics -------------------------------------------------------------------------------------------
def test_relaimpr_eq15_reproduces_the_stan_papers_auc_numbers():
    # STAN Table 2, Click_avatar AUC row: MLP_Single is the base; RelaImpr as printed in the paper
    base = 0.8230
    printed = {0.8279: 1.52, 0.8286: 1.73, 0.8317: 2.69, 0.8442: 6.57, 0.8471: 7.47, 0.8496: 8.22, 0.8530: 9.30}
    for auc, pct in printed.items():
        assert stats.relaimpr("auc", auc, base) == pytest.approx(pct, abs=0.02)
    assert stats.relaimpr("gauc@scenario=1", 0.6, 0.55) == pytest.approx(100.0)  # (0.1 / 0.05 - 1)
    assert stats.relaimpr("auc", 0.7, 0.5) is None  # the base is a random guesser


def test_relaimpr_eq16_is_the_plain_ratio_and_logloss_has_none():
    assert stats.relaimpr("ndcg@5", 0.30, 0.25) == pytest.approx(20.0)
    assert stats.relaimpr("ndcg@1", 0.20, 0.25) == pytest.approx(-20.0)
    assert stats.relaimpr("logloss", 0.3, 0.4) is None


def test_mean_std_uses_the_sample_std():
    m, s, n = stats.mean_std([0.70, 0.72, 0.74])
    assert (m, n) == (pytest.approx(0.72), 3) and s == pytest.approx(0.02)
    assert stats.mean_std([0.5]) == (0.5, 0.0, 1)


def test_paired_ttest_matches_the_formula():
    a = {0: 0.71, 1: 0.74, 2: 0.73, 3: 0.75, 9: 0.9}  # seed 9 has no partner: left out
    b = {0: 0.70, 1: 0.71, 2: 0.72, 3: 0.71}
    d = np.array([0.01, 0.03, 0.01, 0.04])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(4))
    p = 2 * sps.t.sf(abs(t), df=3)
    r = stats.significance(a, b, "ttest")
    assert r.n == 4 and r.p == pytest.approx(p) and r.statistic == pytest.approx(t)
    assert r.mark == ("**" if p < 0.01 else "*" if p < 0.05 else "")


def test_paired_difference_has_the_t_interval_of_the_formula():
    a = {0: 0.71, 1: 0.74, 2: 0.73, 3: 0.75, 9: 0.9}  # seed 9 has no partner: left out
    b = {0: 0.70, 1: 0.71, 2: 0.72, 3: 0.71}
    d = np.array([0.01, 0.03, 0.01, 0.04])
    half = sps.t.ppf(0.975, df=3) * d.std(ddof=1) / math.sqrt(4)
    r = stats.paired_difference(a, b)
    assert r is not None and r.mean == pytest.approx(d.mean())
    assert (r.low, r.high) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    assert r.test.p == stats.significance(a, b, "ttest").p and r.test.n == 4
    one = stats.paired_difference({0: 0.8}, {0: 0.7, 1: 0.6})
    assert one is not None and one.low is None and one.test.p is None
    assert stats.paired_difference({0: 0.8}, {1: 0.7}) is None


def test_mann_whitney_exact_p_values():
    # every value of one side beats every value of the other: two-sided exact p = 2 / C(n+m, n)
    r4 = stats.significance({s: 0.8 + s / 100 for s in range(4)}, {s: 0.7 + s / 100 for s in range(4)}, "mannwhitney")
    assert r4.p == pytest.approx(2 / 70) and r4.mark == "*"
    r3 = stats.significance({s: 0.8 + s / 100 for s in range(3)}, {s: 0.7 + s / 100 for s in range(3)}, "mannwhitney")
    assert r3.p == pytest.approx(2 / 20) and r3.mark == ""  # 3 seeds can never reach p < 0.05


def test_fewer_than_three_seeds_runs_no_test():
    r = stats.significance({0: 0.8, 1: 0.9}, {0: 0.7, 1: 0.6}, "ttest")
    assert r.p is None and r.mark == "" and "no test" in r.note


def test_ranks_are_dense_and_respect_direction():
    assert stats.ranks([0.7, 0.9, 0.8, float("nan")]) == [3, 1, 2, None]
    assert stats.ranks([0.3, 0.2, 0.2], higher=False) == [2, 1, 1]


# -- collecting and grouping ----------------------------------------------------------------------------
def test_runs_are_grouped_by_everything_but_the_seed(tmp_path):
    t = {"click": {"auc": 0.7}}
    for seed in (0, 1, 2):
        make_run(tmp_path, "mmoe", seed, t)
        make_run(tmp_path, "mmoe", seed, t, model_cfg={"num_experts": 8})
    make_run(tmp_path, "ple", 0, t, cfg={"print_summary": False, "logger": {"name": "wandb"}})
    make_run(tmp_path, "ple", 1, t, cfg={"tasks": None})  # differs from seed 0 only in keys that can't matter
    make_run(tmp_path, "ple", 0, t, data_cfg={"n_rows": 5000})  # other data: another section
    make_run(tmp_path, "ple", 2, t, complete=False)
    runs, incomplete = find_runs([tmp_path])
    assert len(runs) == 9 and [p.name for p in incomplete] == ["ple_equal__seed2"]
    sections = group_runs(runs)
    assert [s.title for s in sections] == ["lifecycle (dataset.n_rows=1000)", "lifecycle (dataset.n_rows=5000)"]
    groups = {g.label: g.seeds for g in sections[0].groups}
    assert groups == {"mmoe (num_experts=None)": [0, 1, 2], "mmoe (num_experts=8)": [0, 1, 2], "ple": [0, 1]}
    assert [g.label for g in sections[1].groups] == ["ple"]


def test_runs_are_listed_in_launch_order(tmp_path):
    """Hydra numbers its jobs 0, 1, ..., 10, 11: job 10 comes after job 2, not after job 1."""
    t = {"click": {"auc": 0.7}}
    for job, model in enumerate(
        ["single_task", "single_task", "mmoe", "mmoe", "mmoe", "mmoe", "mmoe", "mmoe", "mmoe", "mmoe", "ple", "ple"]
    ):
        make_run(tmp_path / f"{job}_{model}", model, job, t)
    runs, _ = find_runs([tmp_path])
    assert [r.path.parent.name for r in runs][-4:] == ["8_mmoe", "9_mmoe", "10_ple", "11_ple"]
    assert [g.label for g in group_runs(runs)[0].groups] == ["single_task", "mmoe", "ple"]


def test_weighting_is_named_only_when_a_model_has_several(tmp_path):
    t = {"click": {"auc": 0.7}}
    make_run(tmp_path, "mmoe", 0, t)
    make_run(tmp_path, "mmoe", 0, t, weighting="uncertainty")
    make_run(tmp_path, "ple", 0, t)
    labels = sorted(g.label for g in group_runs(find_runs([tmp_path])[0])[0].groups)
    assert labels == ["mmoe + equal", "mmoe + uncertainty", "ple + equal"]
    other = tmp_path / "other"
    make_run(other, "stan", 0, t, weighting="stan_stage")
    make_run(other, "mmoe", 0, t)
    assert sorted(g.label for g in group_runs(find_runs([other])[0])[0].groups) == ["mmoe", "stan"]


# -- the leaderboard ---------------------------------------------------------------------------------------
AUCS = {"single_task": [0.70, 0.71, 0.72], "mmoe": [0.74, 0.75, 0.77], "ple": [0.73, 0.74, 0.74]}
NDCG = {"single_task": [0.50, 0.50, 0.53], "mmoe": [0.55, 0.56, 0.54], "ple": [0.60, 0.62, 0.58]}
LOGLOSS = {"single_task": [0.40, 0.41, 0.42], "mmoe": [0.39, 0.38, 0.40], "ple": [0.45, 0.44, 0.46]}


@pytest.fixture
def three_models(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for model in AUCS:
        for seed in range(3):
            test = {
                "click": {
                    "auc": AUCS[model][seed],
                    "ndcg@5": NDCG[model][seed],
                    "logloss": LOGLOSS[model][seed],
                    "auc@scenario=0": AUCS[model][seed] - 0.1,
                    "auc@scenario=1": AUCS[model][seed],
                },
                "buy": {"auc": 0.6 + 0.01 * seed, "ndcg@5": None},
            }
            make_run(
                root,
                model,
                seed,
                test,
                sps_=1000.0 * (seed + 1),
                params=10 + len(model),
                curve=[0.6 + 0.01 * seed, 0.65],
                image=model == "mmoe",
            )
    make_run(root, "mmoe", 7, {"click": {"auc": 0.1}}, complete=False)
    return root


def test_markdown_has_mean_std_relaimpr_bold_second_and_marks(three_models):
    settings = ReportSettings(metrics=["auc", "ndcg@5", "logloss"], scenario_metrics=["auc"])
    board = build([three_models], settings)
    md = to_markdown(board)
    rows = table_rows(md, "Overall")
    # columns: seeds, click AUC, RelaImpr, click NDCG@5, RelaImpr, click LogLoss, RelaImpr, buy AUC, ...
    assert rows["single_task"][:3] == ["3", "0.7100 ± 0.0100", "-"]
    mmoe_auc = np.mean(AUCS["mmoe"])
    assert rows["mmoe"][1].startswith(f"**{mmoe_auc:.4f} ± {np.std(AUCS['mmoe'], ddof=1):.4f}**")
    assert rows["ple"][1].startswith("<u>0.7367 ± 0.0058</u>")
    assert rows["mmoe"][2] == f"{((mmoe_auc - 0.5) / (0.71 - 0.5) - 1) * 100:.2f}%"  # Eq. 15
    assert rows["ple"][4] == f"{(0.60 / np.mean(NDCG['single_task']) - 1) * 100:.2f}%"  # Eq. 16
    assert rows["ple"][3].startswith("**0.6000 ± 0.0200**")
    # logloss: lower is better, no RelaImpr
    assert rows["mmoe"][5].startswith("**0.3900") and rows["single_task"][5].startswith("<u>0.4100")
    assert rows["mmoe"][6] == "n/a"
    # buy NDCG@5 is undefined everywhere: no column; speed and params at the end
    assert "buy NDCG@5" not in md
    assert rows["mmoe"][-2:] == ["2,000", "14"]
    # significance of the best against the best baseline, paired over seeds
    p_auc = sps.ttest_rel(AUCS["mmoe"], AUCS["ple"]).pvalue
    p_ndcg = sps.ttest_rel(NDCG["ple"], NDCG["mmoe"]).pvalue
    mark = "\\*\\*" if p_ndcg < 0.01 else "\\*" if p_ndcg < 0.05 else ""
    assert rows["ple"][3] == f"**0.6000 ± 0.0200**{mark}" and mark
    sig = md.split("### Significance", 1)[1]
    diff = np.mean(AUCS["mmoe"]) - np.mean(AUCS["ple"])
    assert f"| click AUC | mmoe | ple | {diff:+.4f} | paired t-test | 3 | {p_auc:.4f} |" in sig
    # per-scenario table and incomplete runs
    scen = table_rows(md, "Per scenario: AUC")
    assert scen["mmoe"][1].startswith(f"**{mmoe_auc - 0.1:.4f}")
    assert "click #0" in md and "click #1" in md
    assert "Incomplete runs" in md and "mmoe_equal__seed7" in md


def test_csv_holds_every_cell_and_the_p_values(three_models):
    board = build([three_models], ReportSettings(metrics=["auc", "ndcg@5"], scenario_metrics=[]))
    rows = read_csv(to_csv(board))
    cell = {(r["label"], r["task"], r["metric"]): r for r in rows}
    r = cell[("mmoe", "click", "auc")]
    assert float(r["mean"]) == pytest.approx(np.mean(AUCS["mmoe"]))
    assert float(r["std"]) == pytest.approx(np.std(AUCS["mmoe"], ddof=1))
    assert r["n"] == "3" and r["seeds"] == "0 1 2" and r["rank"] == "1"
    assert float(r["p_value"]) == pytest.approx(sps.ttest_rel(AUCS["mmoe"], AUCS["ple"]).pvalue)
    assert r["compared_with"] == "ple" and r["test"] == "ttest"
    assert cell[("ple", "click", "auc")]["p_value"] == ""  # only the tested model carries it
    assert float(cell[("ple", "click", "auc")]["relaimpr_pct"]) == pytest.approx(
        ((np.mean(AUCS["ple"]) - 0.5) / 0.21 - 1) * 100
    )
    assert cell[("single_task", "click", "auc")]["relaimpr_pct"] == ""
    assert float(cell[("mmoe", "click", "auc")]["train_samples_per_second"]) == pytest.approx(2000.0)


def test_mann_whitney_and_a_chosen_candidate(three_models):
    board = build(
        [three_models], ReportSettings(metrics=["auc"], scenario_metrics=[], test="mannwhitney", candidate="ple")
    )
    comp = board.sections[0].tables[0].comparisons[0]
    assert (comp.best, comp.baseline) == ("ple", "mmoe")  # ple against the best of the others
    assert comp.result.p == pytest.approx(sps.mannwhitneyu(AUCS["ple"], AUCS["mmoe"]).pvalue)
    assert board.sections[0].tables[0].rows[2].cells[0].mark == ""  # ple is worse: never marked


def test_a_model_with_one_of_its_weightings_is_named_and_chosen(tmp_path):
    for seed, (equal, stage, ple) in enumerate(((0.70, 0.75, 0.72), (0.71, 0.76, 0.73), (0.72, 0.74, 0.71))):
        make_run(tmp_path, "stan", seed, {"click": {"auc": equal}})
        make_run(tmp_path, "stan", seed, {"click": {"auc": stage}}, weighting="stan_stage")
        make_run(tmp_path, "ple", seed, {"click": {"auc": ple}})
    labels = {"stan+equal": "STAN (equal weighting)", "stan+stan_stage": "STAN", "ple": "PLE"}
    settings = ReportSettings(
        metrics=["auc"], scenario_metrics=[], base="ple", candidate="stan+equal", model_labels=labels
    )
    board = build([tmp_path], settings)
    assert sorted(r.label for r in board.sections[0].rows) == ["PLE + equal", "STAN", "STAN (equal weighting)"]
    comp = board.sections[0].tables[0].comparisons[0]
    assert (comp.best, comp.baseline) == ("STAN (equal weighting)", "STAN")  # not the best model: the candidate
    order = ReportSettings(metrics=["auc"], scenario_metrics=[], models=["stan+stan_stage", "ple", "stan+equal"])
    assert [r.group.weighting for r in build([tmp_path], order).sections[0].rows] == ["stan_stage", "equal", "equal"]


def test_two_seeds_say_no_test_was_run(tmp_path):
    for model, v in (("single_task", 0.7), ("mmoe", 0.8)):
        for seed in (0, 1):
            make_run(tmp_path, model, seed, {"click": {"auc": v + seed / 100}, "buy": {"auc": v}})
    board = build([tmp_path], ReportSettings(metrics=["auc"]))
    md = to_markdown(board)
    sig = md.split("### Significance", 1)[1]
    # one line for the untested columns, no table of "no test" rows
    assert "Not tested (fewer than 3 seeds): click AUC, buy AUC, click #0" not in sig  # no scenario metrics here
    assert "Not tested (fewer than 3 seeds): click AUC, buy AUC." in sig
    assert "| column |" not in sig and "no test:" not in md and "\\*" not in md.split("## lifecycle")[1]
    assert "no significance test: fewer than 3 seeds per model" in md.split("## lifecycle")[0]
    assert read_csv(to_csv(board))[0]["p_value"] == ""


def test_significance_lists_tested_columns_and_one_line_for_the_rest(tmp_path):
    for model, v in (("single_task", 0.70), ("mmoe", 0.75)):
        for seed in range(3):
            test = {"click": {"auc": v + seed / 100 + (0.002 * seed if model == "mmoe" else 0.0)}}
            if seed < 2:
                test["buy"] = {"auc": v}  # buy only in two seeds: no test
            make_run(tmp_path, model, seed, test)
    board = build([tmp_path], ReportSettings(metrics=["auc"], scenario_metrics=[]))
    md = to_markdown(board)
    sig = md.split("### Significance\n", 1)[1]
    rows = [line for line in sig.splitlines() if line.startswith("| click") or line.startswith("| buy")]
    p = sps.ttest_rel([0.75, 0.762, 0.774], [0.70, 0.71, 0.72]).pvalue
    p_text = f"{p:.2g}" if p < 1e-3 else f"{p:.4f}"
    assert rows == [f"| click AUC | mmoe | single_task | +0.0520 | paired t-test | 3 | {p_text} | \\*\\* |"]
    assert "Not tested (fewer than 3 seeds): buy AUC." in sig
    page = to_html(board)
    assert page.count("<tr><td>click AUC</td>") == 1 and "<tr><td>buy AUC</td>" not in page
    assert "Not tested (fewer than 3 seeds): buy AUC." in page


def test_caption_names_relaimpr_only_when_the_tables_show_it(three_models, tmp_path):
    settings = ReportSettings(metrics=["auc"], scenario_metrics=[], base="nosuch_model")
    board = build([three_models], settings)
    md = to_markdown(board)
    assert "| RelaImpr |" not in md  # no column ...
    assert "RelaImpr against" not in md and "Eq. 15" not in md  # ... and the caption does not name one
    assert "no RelaImpr column: the base 'nosuch_model' has no runs here" in md
    assert "RelaImpr against" not in to_latex(board) and "& RelaImpr" not in to_latex(board)
    assert "RelaImpr against" not in to_html(board)
    shown = to_markdown(build([three_models], ReportSettings(metrics=["auc"], scenario_metrics=[])))
    assert "RelaImpr against single_task: STAN Eq. 15" in shown and "| RelaImpr |" in shown
    # the base in one section of two: the caption says where
    make_run(three_models / "other", "mmoe", 0, {"click": {"auc": 0.7}}, data_cfg={"n_rows": 5000})
    two = to_markdown(build([three_models], ReportSettings(metrics=["auc"], scenario_metrics=[])))
    assert "RelaImpr against single_task (in the 1 section(s) where it ran)" in two


def test_candidate_is_named_as_candidate_not_best(three_models):
    settings = ReportSettings(metrics=["auc", "logloss"], scenario_metrics=[], candidate="ple")
    board = build([three_models], settings)
    md = to_markdown(board)
    sig = md.split("### Significance\n", 1)[1]
    assert "| column | candidate | best other model | difference |" in sig and "| best |" not in sig
    assert "significance of ple (the candidate) against the best other model per column" in md
    assert "the best model against the best baseline" not in md
    # click AUC: ple (0.7367) against mmoe (0.7533): the candidate is the worse one
    p = sps.ttest_rel(AUCS["ple"], AUCS["mmoe"]).pvalue
    diff = np.mean(AUCS["ple"]) - np.mean(AUCS["mmoe"])
    assert f"| click AUC | ple | mmoe | {diff:+.4f} | paired t-test | 3 | {p:.4f} |" in sig
    # logloss (lower is better): ple is above mmoe by 0.06 in every seed: significant, and the candidate is worse
    logloss = next(line for line in sig.splitlines() if line.startswith("| click LogLoss |"))
    assert logloss.startswith("| click LogLoss | ple | mmoe | +0.0600 | paired t-test | 3 |")
    assert logloss.endswith("| \\*\\* (worse) |")
    page = to_html(board)
    assert "<th>candidate</th><th>best other model</th>" in page
    assert "the candidate" in to_latex(board)
    plain = to_markdown(build([three_models], ReportSettings(metrics=["auc"], scenario_metrics=[])))
    assert "| column | best | best baseline | difference |" in plain


def test_bar_chart_starts_at_chance_with_a_legend(tmp_path):
    import re

    from mtlbench.report import svg

    bars = [svg.Bar("a", 0.710, 0.001, 2, 3), svg.Bar("b", 0.715, 0.001, 1, 3), svg.Bar("c", None, 0.0, None, 0)]
    chart = svg.bar_chart("click AUC", "auc", bars)
    bottom, top, step, note = svg.axis("auc", bars)
    assert bottom == 0.5 and top >= 0.716 and "starts at 0.5" in note
    heights = [float(h) for h in re.findall(r'<rect class="bar" [^>]*height="([0-9.]+)"', chart)]
    assert len(heights) == 2  # no bar for a missing value
    # bar height proportional to AUC - 0.5: a 0.005 difference is 2.4% of the bar, not the whole axis
    assert heights[1] / heights[0] == pytest.approx((0.715 - 0.5) / (0.710 - 0.5), rel=0.01)
    for text in ("best", "second", "other models", "± std over seeds", "starts at 0.5"):
        assert text in chart, text
    ticks = [float(t) for t in re.findall(r'text-anchor="end">([0-9.]+)</text>', chart)]
    assert ticks[0] == 0.5 and ticks[-1] == pytest.approx(top)
    ndcg = svg.axis("ndcg@5", [svg.Bar("a", 0.31, 0.01, 1, 3)])
    assert ndcg[0] == 0.0 and "starts at 0" in ndcg[3]
    assert svg.bar_chart("click AUC", "auc", bars) == chart  # the same text every time


def test_report_does_not_echo_by_default(three_models, tmp_path, capsys):
    board = write_report([three_models], tmp_path / "r", ReportSettings(metrics=["auc"]), html=False)
    assert capsys.readouterr().out == ""
    assert [p.name for p in board.files] == ["leaderboard.md", "leaderboard.csv", "leaderboard.tex"]
    write_report([three_models], tmp_path / "r", ReportSettings(metrics=["auc"]), html=False, echo=True)
    assert "### Overall" in capsys.readouterr().out


def test_latex_marks_best_and_second(three_models):
    tex = to_latex(build([three_models], ReportSettings(metrics=["auc"], scenario_metrics=[])))
    mmoe = next(line for line in tex.splitlines() if line.startswith("mmoe &"))
    ple = next(line for line in tex.splitlines() if line.startswith("ple &"))
    assert "$\\mathbf{0.7533 \\pm 0.0153}$" in mmoe and "\\underline{$0.7367 \\pm 0.0058$}" in ple
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "single\\_task" in tex


def test_model_order_and_labels_and_missing_models(three_models):
    settings = ReportSettings(
        metrics=["auc"],
        scenario_metrics=[],
        models=["single_task", "ple", "stan", "mmoe"],
        model_labels={"single_task": "MLP_Single", "ple": "PLE"},
        task_labels={"click": "CTR"},
    )
    board = build([three_models], settings)
    assert [r.label for r in board.sections[0].rows] == ["MLP_Single", "PLE", "mmoe"]
    assert board.missing_models == ["stan"]
    md = to_markdown(board)
    assert "CTR AUC" in md and "RelaImpr against MLP_Single" in md
    assert "without complete runs here (not available yet, or not run): stan." in md


def test_html_is_self_contained_with_plots_and_run_images(three_models, tmp_path):
    out = tmp_path / "report"
    write_report([three_models], out, ReportSettings(metrics=["auc", "ndcg@5"]))
    page = (out / "leaderboard.html").read_text()
    assert page.count('class="leaderboard sortable"') == 2  # overall and per-scenario tables
    assert page.count('<figure class="bars"') == 2  # one bar chart per task (inline SVG, a panel per metric)
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" class="bar-chart"') == 3  # click AUC, NDCG@5; buy AUC
    assert page.count('<figure class="curves">') == 1
    assert page.count('<figure class="run-image">') == 1 and "stage_tsne.png" in page
    assert 'src="http' not in page and "href=" not in page  # nothing outside the page


def test_validation_curve_reads_epochs_and_skips_the_post_fit_validation(tmp_path):
    from mtlbench.report.html import read_metrics_log

    run = make_run(tmp_path, "mmoe", 0, {"click": {"auc": 0.7}}, curve=[0.61, 0.66, 0.64])
    log = read_metrics_log(run / "logs" / "metrics.csv")
    assert log["valid/click/auc"] == {0: 0.61, 1: 0.66, 2: 0.64}
    assert log["test/click/auc"] == {3: 0.7}


def test_bad_settings_are_one_clear_error(tmp_path):
    from mtlbench.errors import ConfigError

    with pytest.raises(ConfigError, match="scenario_metrics"):
        ReportSettings(metrics=["auc@scenario=1"])
    with pytest.raises(ConfigError, match="mannwhitney"):
        ReportSettings(test="wilcoxon")
    make_run(tmp_path, "mmoe", 0, {"click": {"auc": 0.7}})
    with pytest.raises(ConfigError, match="nosuch"):
        build([tmp_path], ReportSettings(tasks=["nosuch"]))


@pytest.mark.slow  # runs mtlbench-report in subprocesses
def test_cli_writes_all_files_and_fails_in_one_line(three_models, tmp_path, capsys):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "mtlbench.cli.report",
        str(three_models),
        "--out",
        str(out),
        "--metrics",
        "auc",
        "--label",
        "single_task=MLP_Single",
        "--test",
        "mannwhitney",
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.html"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "leaderboard.md").read_text()
    assert "| MLP_Single | 3 |" in md and "Mann-Whitney U test" in md
    assert "9 complete run(s), 1 incomplete" in proc.stderr and proc.stdout == ""  # --quiet
    # default: the paths written, not the report; --echo adds the Markdown
    from mtlbench.cli.report import main

    assert main(cmd[3:-1]) == 0
    assert capsys.readouterr().out.splitlines() == [str(out / f"leaderboard.{k}") for k in ("md", "csv", "tex", "html")]
    assert main([*cmd[3:-1], "--echo", "--no-html"]) == 0
    echoed = capsys.readouterr().out
    assert "| MLP_Single | 3 |" in echoed and str(out / "leaderboard.md") in echoed
    bad = subprocess.run(
        [sys.executable, "-m", "mtlbench.cli.report", str(tmp_path / "nope"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("mtlbench-report: error:") and "nope" in bad.stderr


def test_terminal_summary_keeps_different_hyper_parameters_apart():
    from mtlbench.report.summary import mean_std_table

    def run(lr, seed, auc):
        cfg = {
            "seed": seed,
            "model": {"name": "mmoe"},
            "optimizer": {"lr": lr},
            "dataset": {"name": "d"},
            "weighting": {"name": "equal"},
        }
        return {
            "dataset": "d",
            "model": "mmoe",
            "weighting": "equal",
            "seed": seed,
            "config": cfg,
            "metrics": {"test": {"click": {"auc": auc}}},
        }

    table = mean_std_table(
        [run(1e-3, 0, 0.7), run(1e-3, 1, 0.72), run(1e-2, 0, 0.6), run(1e-2, 1, 0.62)], metrics=("auc",)
    )
    rows = [line for line in table.splitlines() if line.startswith("| d | mmoe")]
    assert len(rows) == 2  # not one row of "4 seeds"
    assert "optimizer.lr=0.001 | 2 | 0.7100" in table and "optimizer.lr=0.01 | 2 | 0.6100" in table
