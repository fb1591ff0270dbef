"""The top-level ``configs/`` folder ships inside the package as ``mtlbench.configs``."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mtlbench", "mtlbench.*"]) + ["mtlbench.configs"],
    package_dir={"mtlbench.configs": "configs"},
)
