"""Running Prefect's own engine against buildsys's Prefect API: the project's flows deployed into a
store, a run claimed as a worker would, and `python -m prefect.engine` started for it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from buildsys.store.base import Change, FlowRun, StateStore
from tests.services.prefect import prefect_env

PROJECT = Path(__file__).parent / "project"
ENGINE_TIMEOUT = 240.0

DEPLOYMENTS = {
    "etl": {"parameters": {"cfg": {"n": 3}, "when": "2024-01-02"}},
    "child": {},
    "parent": {},
    "launcher": {},
    "async_flow": {"parameters": {"n": 1}},
    "boom": {},
    "retried": {},
    "sleepy": {},
    "limited": {},
}


def deploy(store: StateStore, project: Path | None = None) -> None:
    """The flows as deployments of pool "local"; with `project`, their pull step goes there (as
    Prefect's worker needs; the tests that start the engine themselves run it there)."""
    changes = [Change("create", "pool", "local", {"type": "process"})]
    pull = [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}] if project else []
    for flow, extra in DEPLOYMENTS.items():
        spec = {"flow_name": flow, "name": "main", "entrypoint": f"flows.py:{flow}", "work_pool_name": "local", **extra}
        if pull:
            spec["pull_steps"] = pull
        changes.append(Change("create", "deployment", f"{flow}/main", spec))
    store.apply(changes, expected_serial=None)


def copy_project(tmp: Path) -> Path:
    target = tmp / "project"
    shutil.copytree(PROJECT, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def claimed_run(store: StateStore, flow: str, **kwargs: object) -> FlowRun:
    """A new run of FLOW/main claimed by a (pretend) buildsys worker, with a lease long enough for
    a slow machine (nothing renews it here)."""
    run = store.create_run(f"{flow}/main", **kwargs)  # type: ignore[arg-type]
    claimed = store.claim_runs("local", "test-worker", lease_seconds=900)
    assert [r.id for r in claimed] == [run.id]
    return claimed[0]


def run_engine(
    python: str, api_url: str, run: FlowRun, project: Path, *, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    extra = {"PREFECT__FLOW_RUN_ID": run.id}
    if key is not None:
        extra.update(PREFECT_API_KEY=key, PREFECT_API_AUTH_STRING=f"buildsys:{key}")
    env = prefect_env(api_url, project.parent / f"home-{run.id[:8]}", **extra)
    return subprocess.run(
        [python, "-m", "prefect.engine"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=ENGINE_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
