"""Handing a Prefect flow to Prefect's own engine, inside the run's process, after buildsys's pull steps.

Standard library only: buildsys never imports ``prefect`` itself. The run's interpreter does, when
the entrypoint turns out to be a Prefect flow; this module then checks that the installed Prefect
is one whose engine we know how to start (3.x, with the calls named in ``ENGINE_CALLS``) and runs
the flow run ``PREFECT__FLOW_RUN_ID`` names the way ``python -m prefect.engine`` does, except that
the flow object is the one already imported (so nothing re-reads the deployment and no pull step
runs twice). The worker learns about the hand-off from a control line and leaves the run's states
to the engine.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

SUPPORTED_MAJOR = 3
RUN_ID_ENV = "PREFECT__FLOW_RUN_ID"
API_URL_ENV = "PREFECT_API_URL"
API_KEY_ENV = "PREFECT_API_KEY"
# Prefect's events websockets authenticate only with an auth string (user:password), never the key:
# buildsys's API takes "buildsys:<key>" there, and as HTTP Basic (which the string makes Prefect use).
API_AUTH_ENV = "PREFECT_API_AUTH_STRING"
# Console lines whose log record Prefect also sent to the API: the worker echoes them but does not
# store them a second time (they are in the run's logs with their level and logger already).
API_MARK = "::buildsys-api::"
# (module, attribute) that buildsys relies on to start the engine; a Prefect without them is refused.
ENGINE_CALLS = (
    ("prefect.flow_engine", "run_flow"),
    ("prefect.flow_engine", "load_flow_run"),
    ("prefect.engine", "handle_engine_signals"),
    ("prefect.logging.loggers", "flow_run_logger"),
)
_API_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class EngineUnavailable(Exception):
    """Prefect is missing, or is not a version whose engine buildsys can start."""


def version_problem(version: str) -> str | None:
    """Why this Prefect version cannot run flows under buildsys, or None when it can."""
    major = version.split(".", 1)[0]
    if major.isdigit() and int(major) == SUPPORTED_MAJOR:
        return None
    return (
        f"prefect {version} is installed, but buildsys starts Prefect {SUPPORTED_MAJOR}.x's engine "
        f"(its API changed between major versions)"
    )


def installed_version(python: str | None = None) -> str | None:
    """Prefect's version in ``python`` (default: this interpreter), read from the package metadata
    without importing prefect; None when it is not installed there."""
    if python is None or python == sys.executable:
        try:
            return metadata.version("prefect")
        except metadata.PackageNotFoundError:
            return None
    code = "import importlib.metadata as m\ntry: print(m.version('prefect'))\nexcept m.PackageNotFoundError: pass"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def is_prefect_flow(obj: Any) -> bool:
    """Whether ``obj`` is a Prefect ``@flow`` (checked against the class the user's import loaded)."""
    flows = sys.modules.get("prefect.flows")
    flow_class = getattr(flows, "Flow", None)
    return isinstance(flow_class, type) and isinstance(obj, flow_class)


def engine_calls() -> dict[str, Callable[..., Any]]:
    """The engine's entry points, or EngineUnavailable naming the version and what is missing."""
    version = installed_version() or "(unknown version)"
    problem = version_problem(version)
    if problem:
        raise EngineUnavailable(f"{problem}; the run's interpreter is {sys.executable}")
    found: dict[str, Callable[..., Any]] = {}
    for module, attr in ENGINE_CALLS:
        try:
            value = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            raise EngineUnavailable(
                f"prefect {version} in {sys.executable} has no {module}.{attr}, which buildsys uses to start "
                f"Prefect's engine (supported: Prefect {SUPPORTED_MAJOR}.x with that call)"
            ) from None
        found[attr] = value
    return found


def run_flow_run(flow: Any, flow_run_id: str) -> None:
    """Run the flow run through Prefect's engine, as ``python -m prefect.engine`` would (the engine
    reads the run, coerces its parameters, sets its states and ships its logs through the API)."""
    from uuid import UUID

    calls = engine_calls()
    run_id = UUID(flow_run_id)
    _mark_api_records_on_console()
    with calls["handle_engine_signals"](run_id):
        flow_run = calls["load_flow_run"](flow_run_id=run_id)
        kwargs: dict[str, Any] = {"flow_run": flow_run}
        if "error_logger" in inspect.signature(calls["run_flow"]).parameters:
            kwargs["error_logger"] = calls["flow_run_logger"](flow_run=flow_run)
        _drive(calls["run_flow"](flow, **kwargs))


def _drive(result: Any) -> None:
    """Async and generator flows come back from the engine unstarted: run them to the end here."""
    if inspect.iscoroutine(result):
        asyncio.run(result)
    elif inspect.isasyncgen(result):

        async def consume() -> None:
            async for _ in result:
                pass

        asyncio.run(consume())
    elif inspect.isgenerator(result):
        for _ in result:
            pass


class _MarkApiRecords(logging.Formatter):
    """Prefixes every line of a record that also goes to the API with ``API_MARK``."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        if not record.name.startswith(_API_LOGGERS):
            return text
        return "\n".join(API_MARK + line for line in text.split("\n"))


def _mark_api_records_on_console() -> None:
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler" and not isinstance(handler.formatter, _MarkApiRecords):
            handler.setFormatter(_MarkApiRecords(handler.formatter))
