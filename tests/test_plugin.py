"""The example plugin in plugins/ installs as its own package and runs through the mtlbench CLI."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(REPO / "plugins" / "mtlbench-example")],
                          capture_output=True, text=True)
    if proc.returncode != 0 and "setuptools" in proc.stderr and "No module named" in proc.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert proc.returncode == 0, proc.stderr
    return target


def env_with(path):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]))


def test_plugin_model_is_listed_only_when_installed(plugin_path, tmp_path):
    code = "import mtlbench; print(mtlbench.list_models('example*'))"
    with_plugin = subprocess.run([sys.executable, "-c", code], env=env_with(plugin_path), capture_output=True,
                                 text=True, cwd=tmp_path)  # cwd: import the installed package, not the checkout
    without = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert with_plugin.stdout.strip() == "['example_gated']", with_plugin.stderr
    assert without.stdout.strip() == "[]"


def test_plugin_model_trains_from_the_cli(plugin_path, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mtlbench.cli.train", *TINY, "model=example_gated",
                           f"hydra.run.dir={out}"], cwd=tmp_path, env=env_with(plugin_path), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == "example_gated" and res["config"]["model"]["bottom"] == [64]
    assert 0.5 < res["metrics"]["valid"]["click"]["auc"] < 1.0
