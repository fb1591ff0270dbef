"""Turn user errors (bad names, keys, values, data) into one line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from mtlbench.errors import MtlbenchError

USER_ERRORS = (MtlbenchError, HydraException, OmegaConfBaseException)


def one_line(ex: BaseException) -> str:
    """First meaningful lines of an error and its cause, joined into one line."""
    parts: list[str] = []
    e: BaseException | None = ex
    while e is not None and len(parts) < 3:
        text = str(e).strip()
        text = re.sub(r"\n\s*full_key:.*", "", text, flags=re.S)  # omegaconf's key/type details
        text = re.sub(r"\s*\n\s*", "; ", text).replace(":;", ":").replace(".;", ";")
        if text and text not in parts:
            parts.append(text)
        e = e.__cause__ or e.__context__
    return " | ".join(parts) or type(ex).__name__


def report(func: Callable[[], Any]) -> Any:
    """Replacement for Hydra's ``run_and_report``: one clear line for user errors."""
    try:
        return func()
    except USER_ERRORS as ex:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.stderr.write(f"mtlbench: error: {one_line(ex)}\n")
        sys.exit(2)


def install() -> None:
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report

    def run_and_report(func: Callable[[], Any]) -> Any:
        return original(lambda: report(func))

    hydra_utils.run_and_report = run_and_report
