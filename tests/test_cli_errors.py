"""A newcomer's mistakes on the ``mtlbench`` command line: one line, a "did you mean", exit 2, nothing written.

Most checks run in-process on :func:`mtlbench.cli.checks.check_command_line` (the check ``mtlbench`` runs before
Hydra); a few run the installed command to see what a user sees: stderr, the exit code, no run directory, no
torch import before a missing file is reported, and ``--help``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtlbench.cli import checks, errors
from mtlbench.config import register_configs
from mtlbench.errors import ConfigError, DataError

from conftest import REPO

TINY = ["dataset.n_users=200", "dataset.n_rows=6000", "trainer.max_epochs=1", "predictions=false", "analysis=none"]


def check(*argv: str) -> checks.CommandLine | None:
    """The command-line check of ``mtlbench *argv``, both steps (plugins: none to load)."""
    register_configs()  # the run schema, as importing mtlbench.cli.train does
    found = checks.check_command_line(list(argv), load_plugins=lambda: None)
    if found is not None:
        checks.check_added_settings(found)
    return found


def error_of(*argv: str) -> str:
    """The error of ``mtlbench *argv`` as ``errors.report`` prints it (after ``mtlbench: error: ``)."""
    with pytest.raises((ConfigError, DataError)) as info:
        check(*argv)
    return errors.one_line(info.value)


def mtlbench(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The installed ``mtlbench`` command, as a user runs it."""
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [str(Path(sys.executable).with_name("mtlbench")), *args],
        cwd=cwd,
        env={**environ, "PYTHONWARNINGS": "ignore", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def only_line(proc: subprocess.CompletedProcess) -> str:
    """The single line of stderr, which must be ``mtlbench: error: ...`` after exit code 2."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("mtlbench: error: "), proc.stderr[-3000:]
    return lines[0]


# -- group options --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, words",
    [
        (["model=mmeo"], ["no option 'mmeo' in group model; did you mean mmoe?", "(options: adaptdhm, ", "star)"]),
        (["weighting=gradnrom"], ["no option 'gradnrom' in group weighting; did you mean gradnorm?"]),
        (["trainer=gpuu"], ["no option 'gpuu' in group trainer; did you mean gpu?"]),
        (["-m", "model=mmoe,plee"], ["no option 'plee' in group model; did you mean ple?"]),
        (["model=sfpnet_table4/mmeo"], ["did you mean sfpnet_table4/mmoe?"]),
        (["hydra/launcher=paralel"], ["no option 'paralel' in group hydra/launcher; did you mean parallel?"]),
        (["experiment=quikstart"], ["did you mean quickstart?"]),
    ],
)
def test_an_unknown_option_names_the_group_and_the_closest_option(argv, words):
    line = error_of(*argv)
    for w in words:
        assert w in line, line


def test_every_option_of_the_config_folder_is_accepted_and_listed():
    groups = ["model", "dataset", "weighting", "trainer", "logger", "experiment", "analysis"]
    with pytest.raises(ConfigError) as info:
        check("model=nosuch")
    listed = str(info.value).split("(options: ")[1].rstrip(")").split(", ")
    folder = REPO / "configs" / "model"
    assert listed == sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))
    for group in groups:
        option = sorted((REPO / "configs" / group).glob("*.yaml"))[0].stem
        check(f"{group}={option}")  # no error


# -- keys -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, words",
    [
        (["trainer.max_epoch=1"], ["no key 'max_epoch' in trainer; did you mean trainer.max_epochs?"]),
        (["dataset.n_user=10"], ["did you mean dataset.n_users?"]),
        (["optimizer.lrr=0.1"], ["did you mean optimizer.lr?"]),
        (["callbacks.early_stoping_patience=1"], ["did you mean callbacks.early_stopping_patience?"]),
        (["model.num_expert=3"], ["did you mean model.num_experts?"]),
        (["batch_sise=64"], ["no key 'batch_sise' in the config; did you mean batch_size?"]),
        (
            ["max_epochs=2"],
            ["did you mean trainer.max_epochs or dataset.budget.max_epochs?"],
        ),  # a key of a group, given at the top level
        (["~trainer.max_epoch"], ["did you mean trainer.max_epochs?"]),
        (["hydra.run.dri=x"], ["did you mean hydra.run.dir?"]),
        (["trainer.limit_train_batches=2"], ["+trainer.limit_train_batches=2"]),  # not in the yaml: say how to add
    ],
)
def test_an_unknown_key_suggests_the_closest_key(argv, words):
    line = error_of(*argv)
    for w in words:
        assert w in line, line


def _keys() -> list[tuple[str, str]]:
    cfg = check(*[]).config  # type: ignore[union-attr]
    out = [("", str(k)) for k in cfg if k != "hydra" and not OmegaConf.is_dict(cfg[k])]
    for section in ("trainer", "dataset", "optimizer", "callbacks", "model", "logger"):
        out += [(section, str(k)) for k in cfg[section]]
    return out


def test_every_key_of_every_group_is_suggested_for_a_typo():
    """Drop a letter from each key of the default config (top level, trainer, dataset, ...): "did you mean" it."""
    tree = checks._plain(check().config)  # type: ignore[union-attr]
    missed = []
    for section, key in _keys():
        if len(key) < 4:
            continue
        typo = key[:-2] + key[-1]  # one letter dropped
        full = f"{section}.{key}" if section else key
        message = str(checks.unknown_key(tree, f"{section}.{typo}" if section else typo))
        if f"did you mean {full}?" not in message:
            missed.append(f"{typo}: {message}")
    assert not missed, "\n".join(missed)
    assert len(_keys()) > 40


def test_a_value_of_the_wrong_type_names_key_value_and_type():
    line = error_of("batch_size=abc")
    assert line == "batch_size=abc: expected a value of type int, got 'abc'", line
    assert "$VALUE" not in line
    assert "optimizer.lr" in error_of("optimizer.lr=fast") and "float" in error_of("optimizer.lr=fast")
    assert "seed=x" in error_of("-m", "seed=0,x")  # every value of a sweep is checked


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["+trainer.max_epoch=1"],
            ["Trainer has no setting 'max_epoch'; did you mean trainer.max_epochs?"],
        ),
        (["+model.num_expert=3"], ["model 'mmoe' has no setting 'num_expert'; did you mean model.num_experts?"]),
        (["+optimizer.lrr=0.1"], ["did you mean optimizer.lr?"]),
        (["+batch_sise=64"], ["did you mean batch_size?"]),
    ],
)
def test_plus_additions_are_checked_like_the_rest(argv, words):
    line = error_of(*argv)
    for w in words:
        assert w in line, line


@pytest.mark.parametrize(
    "argv",
    [
        ["+trainer.limit_train_batches=2", "hydra.run.dir=/tmp/x", "seed=3"],  # a Lightning argument the yaml lacks
        ["-m", "model=mmoe,ple", "seed=0,1,2", "model.dropout=0.1"],
        ["experiment=quickstart", "debug=smoke"],
        ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"],
        ["model=sfpnet_table4/mmoe", "+hydra.job.env_set.X=1"],
        ["dataset=table", "+dataset.categorical={u: {vocab_size: 0, role: user}}", "dataset.tasks=[y]"],
        ["weighting=fixed", "weighting.weights={click: 1.0}", "~logger", "tasks=[click]"],
    ],
)
def test_correct_command_lines_pass(argv):
    assert check(*argv) is not None


def test_help_and_hydra_flags_are_left_to_hydra():
    assert check("--help") is None and check("--hydra-help") is None and check("--info") is None


# -- paths ----------------------------------------------------------------------------------------------
def test_a_missing_dataset_path_is_named(tmp_path):
    missing = tmp_path / "nonexistent"
    line = error_of("dataset=census_income", f"dataset.path={missing}")
    assert line.startswith(f"dataset.path: {str(missing)!r} does not exist (dataset census_income; files: "), line
    assert "mtlbench-data download census_income" in line  # the config's "files:" comment says where they are
    (tmp_path / "census").mkdir()
    check("dataset=census_income", f"dataset.path={tmp_path / 'census'}")  # present: no error here


def help_groups(text: str) -> dict[str, list[str]]:
    """The "Config groups" section of ``mtlbench --help``: group -> its options (wrapped rows joined)."""
    section = text.split("Config groups")[1].split("\n\n")[0].splitlines()[1:]
    groups: dict[str, str] = {}
    last = ""
    for line in section:
        if line.startswith("   "):  # a wrapped row's continuation
            groups[last] += " " + line.strip()
        else:
            last, _, options = line.strip().partition(" ")
            groups[last] = options.strip()
    return {g: [o.strip() for o in options.split(",")] for g, options in groups.items()}


#: a subprocess that imports torch (today every compose loads the registries, plugins included): tens of seconds
SLOW = pytest.mark.slow


# -- the installed command ------------------------------------------------------------------------------
@SLOW
def test_an_unknown_option_is_one_line_exit_2_and_full_error_keeps_the_traceback(tmp_path):
    line = only_line(mtlbench(["model=mmeo", f"hydra.run.dir={tmp_path / 'x'}"], tmp_path))
    assert line.startswith("mtlbench: error: no option 'mmeo' in group model; did you mean mmoe? (options: ")
    assert not (tmp_path / "x").exists()
    full = mtlbench(["model=mmeo"], tmp_path, HYDRA_FULL_ERROR="1")
    assert full.returncode != 0 and "Traceback (most recent call last)" in full.stderr


@SLOW
def test_a_plus_typo_leaves_no_run_directory(tmp_path):
    proc = mtlbench(["+trainer.max_epoch=1", *TINY, f"hydra.run.dir={tmp_path / 'x'}"], tmp_path)
    line = only_line(proc)
    assert "did you mean trainer.max_epochs?" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_a_missing_dataset_path_is_reported_before_torch_is_imported(tmp_path):
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules))\n"
        "from mtlbench.cli.train import main\n"
        "sys.argv = ['mtlbench', *sys.argv[1:]]\n"
        "main()\n"
    )
    args = ["dataset=census_income", "dataset.path=/nonexistent", f"hydra.run.dir={tmp_path / 'x'}"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert only_line(proc).startswith("mtlbench: error: dataset.path: '/nonexistent' does not exist (dataset census")
    assert proc.stdout.strip() == "torch imported: False"
    assert not (tmp_path / "x").exists()


@SLOW
def test_help_says_what_the_tool_is_and_lists_the_generated_groups(tmp_path):
    proc = mtlbench(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "powered by Hydra" not in text
    for word in ("multi-task", "mtlbench-report", "mtlbench-data", "Examples:", "-m model=", "experiment=", "resume"):
        assert word in text, word
    groups = help_groups(text)
    for group in ("dataset", "model", "weighting", "trainer", "logger", "experiment", "debug", "hydra/launcher"):
        assert group in groups, group
    for group in ("model", "dataset", "weighting", "experiment"):  # generated: every file of the folder is named
        folder = REPO / "configs" / group
        on_disk = sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))
        assert sorted(o.strip("[]") for o in groups[group]) == on_disk
    assert "[mmoe]" in groups["model"] and "[lifecycle]" in groups["dataset"]  # the current choices
    assert {"parallel", "sequential", "slurm"} <= set(groups["hydra/launcher"])
    assert "batch_size" in text and "optimizer.lr" in text
    hydra = mtlbench(["--hydra-help"], tmp_path)
    assert hydra.returncode == 0 and "Hydra" in hydra.stdout and "--multirun" in hydra.stdout


# -- errors found while a job runs ----------------------------------------------------------------------
@pytest.mark.parametrize("mode, prefix", [("RUN", ""), ("MULTIRUN", "job model=ple seed=1: ")])
def test_a_failed_job_is_one_line_and_a_sweep_job_names_its_overrides(capsys, mode, prefix):
    """Hydra adds "Error executing job with overrides: [...]" before a failed job's error: one line instead."""
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    errors.install()
    job = JobReturn(overrides=["model=ple", "seed=1"], status=JobStatus.FAILED, _return_value=ConfigError("bad"))
    job.hydra_cfg = OmegaConf.create({"mode": RunMode[mode]})
    with pytest.raises(SystemExit) as exit_info:
        errors.report(lambda: job.return_value)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"mtlbench: error: {prefix}bad\n"
    done = JobReturn(overrides=[], status=JobStatus.COMPLETED, _return_value=0.5)
    assert done.return_value == 0.5
