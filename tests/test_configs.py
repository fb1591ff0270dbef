"""Every config under configs/ composes, and the structured schema rejects bad values."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import REPO, compose_cfg

GROUPS = sorted(
    p.name for p in (REPO / "configs").iterdir() if p.is_dir() and not p.name.startswith("_") and p.name != "hydra"
)  # hydra/*: tests/test_sweeps.py


def options(group: str) -> list[str]:
    """A group's options, protocol variants in subfolders included (``model=sfpnet_table4/mmoe``)."""
    root = REPO / "configs" / group
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_composes(group: str, option: str):
    overrides = [f"{group}={option}"]
    if (group, option) == ("dataset", "table"):
        overrides += ["dataset.path=x.parquet", "dataset.tasks=[y]"]
    cfg = compose_cfg(overrides)
    assert cfg.seed == 0
    if group in ("dataset", "model", "weighting", "logger") and "/" not in option:
        assert cfg[group].name == option
    if "/" in option:  # a protocol's variant of a registered component (sfpnet_table4/mmoe: mmoe per scenario;
        # stan_dose_response/stan_equal: STAN with the equal weighting, keeping STAN's name; small/lifecycle: the
        # simulator at 1,500 users)
        import mtlbench

        registered = {
            "model": mtlbench.list_models,
            "weighting": mtlbench.list_weightings,
            "dataset": mtlbench.list_datasets,
        }
        assert cfg[group].name in registered[group]()


def test_unknown_top_level_key_is_rejected():
    with pytest.raises(ConfigCompositionException, match="learning_rate"):
        compose_cfg(["learning_rate=0.1"])


def test_type_errors_are_caught_by_the_schema():
    with pytest.raises((ValidationError, ConfigCompositionException)):
        compose_cfg(["seed=abc"])
    with pytest.raises((ValidationError, ConfigCompositionException)):
        compose_cfg(["optimizer.lr=fast"])


def test_every_group_has_at_least_one_option():
    for g in GROUPS:
        assert options(g), g
    assert Path(REPO / "configs" / "train.yaml").exists()


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_configs_are_valid_lightning_trainer_arguments(option):
    import inspect

    import pytorch_lightning as pl

    cfg = compose_cfg([f"trainer={option}"])
    params = inspect.signature(pl.Trainer.__init__).parameters
    assert set(cfg.trainer) <= set(params), set(cfg.trainer) - set(params)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_trainer_runs_a_step(tmp_path):
    from conftest import TINY, run_cli

    proc = run_cli([*TINY, "trainer=gpu", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_config_file_ships_in_the_installed_package():
    from importlib.resources import files

    packaged = files("mtlbench.configs")
    for path in (REPO / "configs").rglob("*.yaml"):
        rel = path.relative_to(REPO / "configs")
        assert packaged.joinpath(*rel.parts).is_file(), f"{rel} is missing from the package data (pyproject.toml)"


def test_protocol_variants_inherit_their_model_and_change_only_what_the_protocol_states():
    base, variant = compose_cfg(["model=mmoe"]), compose_cfg(["model=sfpnet_table4/mmoe"])
    assert variant.model.per == "scenario" and base.model.per == "task"
    assert {k: v for k, v in variant.model.items() if k != "per"} == {k: v for k, v in base.model.items() if k != "per"}
    assert compose_cfg(["model=sfpnet_table4/sfpnet"]).model.num_blocks == 2


def test_dataset_budget_sets_epochs_and_patience():
    cfg = compose_cfg(["dataset=census_income", "dataset.path=x"])
    assert cfg.trainer.max_epochs == cfg.dataset.budget.max_epochs
    assert cfg.callbacks.early_stopping_patience == cfg.dataset.budget.patience
    assert compose_cfg(["dataset=census_income", "dataset.path=x", "trainer.max_epochs=1"]).trainer.max_epochs == 1
