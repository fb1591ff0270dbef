import pytest

import mtlbench
from mtlbench.errors import UnknownNameError
from mtlbench.registry import MODELS, Registry


def test_builtin_models_listed_and_filtered():
    names = mtlbench.list_models()
    for name in ("single_task", "shared_bottom", "mmoe", "ple"):
        assert name in names
    assert mtlbench.list_models("*ple*") == [n for n in names if "ple" in n]
    assert "lifecycle" in mtlbench.list_datasets()
    assert {"equal", "fixed"} <= set(mtlbench.list_weightings())


def test_unknown_name_names_closest_match_and_known_names():
    with pytest.raises(UnknownNameError) as e:
        MODELS.get("mmeo")
    msg = str(e.value)
    assert "unknown model 'mmeo'" in msg and "did you mean 'mmoe'" in msg and "single_task" in msg
    assert "\n" not in msg


def test_duplicate_registration_is_refused():
    reg: Registry = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)


def test_factory_names_the_unknown_setting_and_the_known_ones():
    """One line: the kind, the name, the unknown key and the settings the constructor takes (run arguments out)."""
    from mtlbench.errors import ConfigError
    from mtlbench.factory import create_dataset, create_weighting

    with pytest.raises(ConfigError) as e:
        create_dataset("ali_ccp", path="x", task=["ctr"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("dataset 'ali_ccp' has no setting(s) ['task']")
    assert "'tasks'" in msg and "'path'" in msg  # a dataset's `tasks` is one of its settings
    with pytest.raises(ConfigError) as e:
        create_weighting("gradnorm", ["a", "b"], alhpa=1.0)
    assert "['alpha'" in str(e.value) and "'tasks'" not in str(e.value)  # the run passes the tasks itself
