"""A real `buildsys server` with a pool (a custom template variable) and a deployment whose flow
takes a pydantic model, a real worker on it, and a headless chromium."""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildsys.pools import default_job_template
from buildsys.store import open_store
from buildsys.store.base import Change, StateStore
from tests.server.running import ServerProcess, server_process
from tests.services.workers import Workers
from tests.ui.browser import Browser, chromium

FLOW = '''
import json, os, time
from datetime import date
from enum import Enum

from pydantic import BaseModel


class Mode(str, Enum):
    fast = "fast"
    careful = "careful"


class Settings(BaseModel):
    """How the work is done."""
    retries: int = 2
    mode: Mode = Mode.fast
    labels: list[str] = []


def work(settings: Settings, day: date, gate: str = "") -> None:
    data = settings if isinstance(settings, dict) else settings.model_dump(mode="json")
    print("settings " + json.dumps(data, sort_keys=True), flush=True)
    print(f"day {day}", flush=True)
    print("GREETING=" + os.environ.get("GREETING", "<unset>"), flush=True)
    if gate:
        print("waiting for " + os.path.basename(gate), flush=True)
        deadline = time.monotonic() + 120
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        print("released", flush=True)
'''

DEPLOYMENT = "work/dev"


def prefect_parameter_schema(flow_file: Path) -> dict[str, Any]:
    """The schema Prefect itself makes for the flow's signature (pydantic model under definitions)."""
    from prefect.utilities.callables import parameter_schema

    spec = importlib.util.spec_from_file_location("ui_test_flow", flow_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema: dict[str, Any] = parameter_schema(module.work).model_dump_for_openapi()
    return schema


def pool_template() -> dict[str, Any]:
    """The process template plus a custom variable `greeting` that becomes $GREETING."""
    template = default_job_template("process")
    template["variables"]["properties"]["greeting"] = {
        "title": "Greeting",
        "type": "string",
        "default": "hello",
        "description": "What the flow says first (a custom variable of this pool).",
    }
    template["job_configuration"]["env"] = {"GREETING": "{{ greeting }}"}
    return template


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "flow.py").write_text(textwrap.dedent(FLOW))
    return root


def seed(store: StateStore, project: Path) -> None:
    pool = {"type": "process", "description": "flows on this machine", "base_job_template": pool_template(),
            "concurrency_limit": None, "paused": False, "queues": []}
    deployment = {
        "flow_name": "work",
        "name": "dev",
        "entrypoint": "flow.py:work",
        "parameters": {"day": "2026-12-01"},
        "parameter_schema": prefect_parameter_schema(project / "flow.py"),
        "work_pool_name": "local",
        "job_variables": {},
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}],
        "schedules": [{"cron": "0 6 * * *", "timezone": "UTC", "active": True}],
    }
    source = {"commit": "0123456789abcdef0123456789abcdef01234567", "ref": "main", "file": "prefect.yaml", "dirty": False}
    store.apply(
        [
            Change("create", "pool", "local", spec=pool, owner="git-project", source=source),
            Change("create", "deployment", DEPLOYMENT, spec=deployment, owner="git-project", source=source),
        ],
        expected_serial=0,  # as `buildsys apply` makes it: against the serial its plan was made at
    )


@pytest.fixture
def server(tmp_path: Path, project: Path) -> Iterator[ServerProcess]:
    with server_process(str(tmp_path / "server.db"), tmp_path) as proc:
        store = open_store(proc.url)
        try:
            seed(store, project)
        finally:
            store.close()
        yield proc


@pytest.fixture
def api(server: ServerProcess) -> Iterator[StateStore]:
    store = open_store(server.url)
    yield store
    store.close()


@pytest.fixture
def worker(tmp_path: Path, server: ServerProcess) -> Iterator[Workers]:
    w = Workers(server.url, tmp_path)
    w.start("--name", "ui-worker")
    yield w
    w.stop_all()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with chromium(tmp_path) as b:
        yield b
