"""Turn user errors (bad names, keys, values, data) into one line on stderr and a non-zero exit."""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import HydraException, MissingConfigException
from omegaconf.errors import OmegaConfBaseException

from mtlbench.errors import MtlbenchError

USER_ERRORS = (MtlbenchError, HydraException, OmegaConfBaseException)


#: Hydra's multi-line additions that are no use in a one-line error: its config search path and option lists
HYDRA_CLUTTER = re.compile(r"\n\s*(Config search path|Available options in|Search path)\b.*", flags=re.S)
#: an OmegaConf message template whose placeholders were never filled (``Value '$VALUE' of type '$VALUE_TYPE'``)
TEMPLATE = re.compile(r"\$(VALUE|VALUE_TYPE|KEY|FULL_KEY|KEY_TYPE|REF_TYPE|OBJECT_TYPE|MSG)\b")


def missing_option(ex: MissingConfigException) -> str | None:
    """``no option 'mmeo' in group model; did you mean mmoe? (options: ...)`` for a group option Hydra lacks."""
    group, _, option = (ex.missing_cfg_file or "").rpartition("/")
    if not group or not ex.options:
        return None
    options = sorted(ex.options)
    close = difflib.get_close_matches(option, options, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"no option {option!r} in group {group}{hint} (options: {', '.join(options)})"


def one_line(ex: BaseException) -> str:
    """First meaningful lines of an error and its cause, joined into one line.

    Hydra's search path and option lists are dropped, OmegaConf's key details become a ``key:`` prefix, and
    OmegaConf's unformatted originals (which still read ``$VALUE``) are skipped.
    """
    if isinstance(ex, MissingConfigException) and (option := missing_option(ex)):
        return option
    parts: list[str] = []
    e: BaseException | None = ex
    while e is not None and len(parts) < 3:
        text = HYDRA_CLUTTER.sub("", str(e)).strip()
        text = re.sub(r"\n\s*full_key:.*", "", text, flags=re.S)  # omegaconf's key/type details
        text = re.sub(r"\s*\n\s*", "; ", text).replace(":;", ":").replace(".;", ";")
        key = getattr(e, "full_key", None) if isinstance(e, OmegaConfBaseException) else None
        if key and text and key not in text:
            text = f"{key}: {text}"
        if text and text not in parts and not TEMPLATE.search(text):
            parts.append(text)
        e = e.__cause__ or e.__context__
    return " | ".join(parts) or type(ex).__name__


def full_error() -> bool:
    """``HYDRA_FULL_ERROR=1``: developers get the whole traceback instead of one line."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def report(func: Callable[[], Any]) -> Any:
    """Replacement for Hydra's ``run_and_report``: one clear line for user errors, exit code 2.

    An error of one job of a sweep names the job's overrides first (``job model=ple seed=1: ...``).
    """
    try:
        return func()
    except USER_ERRORS as ex:
        if full_error():
            raise
        job = getattr(ex, JOB_ATTRIBUTE, None)
        sys.stderr.write(f"mtlbench: error: {f'job {job}: ' if job else ''}{one_line(ex)}\n")
        sys.exit(2)


#: where :func:`install`'s job return value leaves the overrides of the sweep job that failed
JOB_ATTRIBUTE = "mtlbench_job"
_installed = False


def install() -> None:
    """Route Hydra's error reporting through :func:`report` (idempotent).

    Hydra reports a failed job with an extra ``Error executing job with overrides: [...]`` line before the error;
    for user errors that line is dropped, and in a sweep the job's overrides go into the error's one line.
    """
    global _installed
    if _installed:
        return
    _installed = True
    import hydra._internal.utils as hydra_utils
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    original = hydra_utils.run_and_report

    def run_and_report(func: Callable[[], Any]) -> Any:
        return original(lambda: report(func))

    hydra_utils.run_and_report = run_and_report

    value: property = vars(JobReturn)["return_value"]

    def return_value(self: JobReturn) -> Any:
        ex = self._return_value
        if self.status == JobStatus.FAILED and isinstance(ex, USER_ERRORS) and not full_error():
            mode = getattr(self.hydra_cfg, "mode", None) if self.hydra_cfg is not None else None
            if mode == RunMode.MULTIRUN and self.overrides:
                setattr(ex, JOB_ATTRIBUTE, " ".join(self.overrides))
            raise ex
        assert value.fget is not None
        return value.fget(self)

    setattr(JobReturn, "return_value", property(return_value, value.fset))  # noqa: B010 (a property of the class)
