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
