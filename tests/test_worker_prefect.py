"""Prefect flows under `buildsys worker`: Prefect's own engine runs them against buildsys's
Prefect-compatible API (the worker's embedded one on the file store, `buildsys server`'s on SQLite
and PostgreSQL), and plain flows keep the stdlib runtime.

Each store gets one worker and one batch of runs created at once (importing Prefect takes seconds
per process on a busy machine); the tests then assert on their own runs: states and messages,
parameter values as the flow saw them, task-run records, and log lines with level and logger.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from buildsys.pools import default_job_template
from buildsys.store import open_store
from buildsys.store.base import Change, FlowRun, StateStore
from tests.services.prefect import prefect_env
from tests.services.waiting import process_alive, wait_for
from tests.services.workers import Workers
from tests.test_runtime_prefect import fake_prefect

FLOWS = '''
import asyncio, dataclasses, datetime, os, pathlib, time

from pydantic import BaseModel
from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS


class Cfg(BaseModel):
    n: int
    label: str


@dataclasses.dataclass
class Point:
    x: int
    y: int


@task
def double(x: int) -> int:
    return 2 * x


@flow(log_prints=True)
def typed(cfg: Cfg, day: datetime.date, pt: Point, k: int = 1) -> int:
    kinds = (type(cfg).__name__, type(day).__name__, type(pt).__name__, type(k).__name__)
    get_run_logger().info("types %s %s %s %s", *kinds)
    print(f"values n={cfg.n} label={cfg.label} day={day.isoformat()} pt={pt.x},{pt.y} k={k}")
    mapped = double.map([1, 2, 3])
    one = double.submit(cfg.n)
    return sum(f.result() for f in mapped) + one.result() + k


@flow(retries=1, retry_delay_seconds=0)
def flaky(marker: str) -> str:
    path = pathlib.Path(marker)
    if not path.exists():
        path.write_text("1")
        raise RuntimeError("first attempt fails")
    get_run_logger().info("second attempt works")
    return "ok"


@flow
def failing() -> None:
    raise ValueError("the data is bad")


@flow
def child(x: int) -> int:
    get_run_logger().info("child got %s", x)
    return x + 1


@flow
def parent() -> int:
    result = child(41)
    get_run_logger().info("child returned %s", result)
    return result


@flow
async def asynchronous(n: int) -> int:
    await asyncio.sleep(0.01)
    get_run_logger().info("async done %s", n)
    return n


@task(cache_policy=INPUTS, persist_result=True)
def cached(x: int) -> int:
    print("computing", x)
    return x * 10


@flow
def caching() -> int:
    first, second = cached(4), cached(4)
    get_run_logger().info("cached results %s %s", first, second)
    return first + second


@flow
def waiting(path: str, pidfile: str) -> None:
    pathlib.Path(pidfile).write_text(str(os.getpid()))
    get_run_logger().info("waiting")
    deadline = time.monotonic() + 180
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
'''

PLAIN = '''
def plain(n: int = 1):
    print("plain", n, type(n).__name__)
'''


@dataclass
class Batch:
    """One store, one worker, one run per case (created at once)."""

    store: StateStore
    root: Path
    runs: dict[str, FlowRun]
    workers: Workers

    def final(self, case: str, timeout: float = 240) -> FlowRun:
        """The run once the worker is done with it: Prefect's engine sets the final state before its
        process has shipped its last log records, so also wait for the worker's "Run … →" line."""
        run = self.runs[case]
        done = wait_for(lambda: (r := self.store.get_run(run.id)).is_terminal and r, timeout, f"run {case} to end")
        said = f"Run {run.name} ({run.id[:8]}) → "
        wait_for(lambda: said in self.workers.output(self.workers.procs[0]), 60, f"the worker to conclude {case}")
        return done

    def logs(self, case: str) -> list[tuple[str, str]]:
        return [(line.stream, line.message) for line in self.store.read_logs(self.runs[case].id)]

    def records(self, case: str) -> list[tuple[str | None, int | None, str]]:
        """The run's Prefect log records: (logger, level, message)."""
        lines = self.store.read_logs(self.runs[case].id)
        return [(line.logger, line.level, line.message) for line in lines if line.stream == "prefect"]


def add_pool(store: StateStore) -> None:
    spec = {"type": "process", "base_job_template": default_job_template("process"), "queues": []}
    store.apply([Change("create", "pool", "local", spec=spec)], expected_serial=None)


def add_deployment(store: StateStore, root: Path, name: str, entrypoint: str, **spec: Any) -> str:
    flow_name = entrypoint.replace(":", ".").rsplit(".", 1)[-1].replace("_", "-")
    body = {
        "flow_name": flow_name,
        "name": name,
        "entrypoint": entrypoint,
        "parameters": {},
        "work_pool_name": "local",
        "job_variables": {},
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(root)}}],
        **spec,
    }
    store.apply([Change("create", "deployment", f"{flow_name}/{name}", spec=body)], expected_serial=None)
    return f"{flow_name}/{name}"


def start_batch(state: str, store: StateStore, tmp: Path) -> Batch:
    root = tmp / "project"
    (root / "flows").mkdir(parents=True)
    (root / "flows" / "__init__.py").write_text("")
    (root / "flows" / "pf.py").write_text(textwrap.dedent(FLOWS))
    (root / "flows" / "plain.py").write_text(textwrap.dedent(PLAIN))
    add_pool(store)

    def deploy(case: str, entrypoint: str, **spec: Any) -> str:
        return add_deployment(store, root, case, entrypoint, **spec)

    signals = tmp / "signals"
    signals.mkdir()
    params: dict[str, tuple[str, dict[str, Any]]] = {
        "typed": (
            deploy("typed", "flows/pf.py:typed"),
            {"cfg": {"n": 7, "label": "seven"}, "day": "2024-05-06", "pt": {"x": 1, "y": 2}, "k": "3"},
        ),
        "module_path": (deploy("module_path", "flows.pf.typed"), {"cfg": {"n": 1, "label": "m"}, "day": "2024-01-02", "pt": {"x": 0, "y": 0}}),
        "flaky": (deploy("flaky", "flows/pf.py:flaky"), {"marker": str(tmp / "flaky-marker")}),
        "failing": (deploy("failing", "flows/pf.py:failing"), {}),
        "parent": (deploy("parent", "flows/pf.py:parent"), {}),
        "asynchronous": (deploy("asynchronous", "flows/pf.py:asynchronous"), {"n": 5}),
        "caching": (deploy("caching", "flows/pf.py:caching"), {}),
        "cancel": (deploy("cancel", "flows/pf.py:waiting"), {"path": str(signals / "never"), "pidfile": str(signals / "cancel.pid")}),
        "kill": (deploy("kill", "flows/pf.py:waiting"), {"path": str(signals / "never"), "pidfile": str(signals / "kill.pid")}),
        "command": (
            deploy("command", "flows/pf.py:asynchronous", job_variables={"command": f"{sys.executable} -m prefect flow-run execute"}),
            {"n": 9},
        ),
        "plain_file": (deploy("plain_file", "flows/plain.py:plain"), {"n": 4}),
        "plain_module": (deploy("plain_module", "flows.plain.plain"), {"n": 6}),
    }
    home = tmp / "prefect-home"
    home.mkdir()
    workers = Workers(state, tmp)
    workers.start("--name", "w1", env=prefect_env(None, home))
    runs = {case: store.create_run(deployment, parameters=p) for case, (deployment, p) in params.items()}
    return Batch(store, root, runs, workers)


STORES = ["file", "server-sqlite", "server-postgres"]


@pytest.fixture(scope="module", params=STORES)
def batch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, prefect_python: str) -> Iterator[Batch]:
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "file":
        store = open_store(str(tmp / "state.db"))
        b = start_batch(str(tmp / "state.db"), store, tmp)
        try:
            yield b
        finally:
            b.workers.stop_all()
            store.close()
        return
    from tests.server.running import ServerProcess

    if request.param == "server-sqlite":
        db = str(tmp / "server.db")
    else:
        db = request.getfixturevalue("postgres_url")
    server = ServerProcess(db, tmp).wait_ready()
    store = open_store(server.url)
    try:
        b = start_batch(server.url, store, tmp)
        try:
            yield b
        finally:
            b.workers.stop_all()
    finally:
        store.close()
        server.stop()


def test_parameters_are_coerced_and_tasks_recorded(batch: Batch) -> None:
    done = batch.final("typed")
    assert (done.state, done.state_message) == ("COMPLETED", None), batch.logs("typed")
    records = batch.records("typed")
    assert ("prefect.flow_runs", 20, "types Cfg date Point int") in [(lg, lv, m) for lg, lv, m in records]
    # log_prints: print() became an INFO record of the flow run
    assert ("prefect.flow_runs", 20, "values n=7 label=seven day=2024-05-06 pt=1,2 k=3") in records
    tasks = batch.store.list_task_runs(done.id)  # type: ignore[attr-defined]
    assert sorted((t.state, t.name.rsplit("-", 1)[0]) for t in tasks) == [("COMPLETED", "double")] * 4
    # the engine's own records are stored once, as records, not again as stderr lines
    assert not [m for s, m in batch.logs("typed") if s == "stderr" and "types Cfg" in m]


def test_module_path_entrypoint_runs_through_the_engine(batch: Batch) -> None:
    done = batch.final("module_path")
    assert done.state == "COMPLETED", batch.logs("module_path")
    assert ("prefect.flow_runs", 20, "types Cfg date Point int") in batch.records("module_path")


def test_flow_retry_comes_from_the_engine(batch: Batch) -> None:
    done = batch.final("flaky")
    assert done.state == "COMPLETED", batch.logs("flaky")
    assert done.run_count == 2  # type: ignore[attr-defined]
    assert done.attempt == 1  # the engine retried in-process; the store did not reschedule
    messages = [m for _, _, m in batch.records("flaky")]
    assert any("first attempt fails" in m for m in messages)
    assert "second attempt works" in messages


def test_failing_flow_is_failed_with_the_exceptions_message(batch: Batch) -> None:
    done = batch.final("failing")
    assert done.state == "FAILED"
    assert done.state_message is not None and "ValueError: the data is bad" in done.state_message
    assert not done.state_message.startswith("Flow run infrastructure")


def test_subflow_runs_and_returns(batch: Batch) -> None:
    done = batch.final("parent")
    assert done.state == "COMPLETED", batch.logs("parent")
    assert ("prefect.flow_runs", 20, "child returned 42") in batch.records("parent")


def test_async_flow(batch: Batch) -> None:
    done = batch.final("asynchronous")
    assert done.state == "COMPLETED", batch.logs("asynchronous")
    assert ("prefect.flow_runs", 20, "async done 5") in batch.records("asynchronous")


def test_task_caching(batch: Batch) -> None:
    done = batch.final("caching")
    assert done.state == "COMPLETED", batch.logs("caching")
    assert ("prefect.flow_runs", 20, "cached results 40 40") in batch.records("caching")
    tasks = batch.store.list_task_runs(done.id)  # type: ignore[attr-defined]
    assert sorted(t.cached for t in tasks) == [False, True]
    assert [m for s, m in batch.logs("caching") if s == "stdout" and m.startswith("computing")] == ["computing 4"]


def test_cancellation_stops_the_engine_and_ends_cancelled(batch: Batch) -> None:
    pidfile = Path(batch.runs["cancel"].parameters["pidfile"])
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 240, "the flow to start"))
    batch.store.request_cancel(batch.runs["cancel"].id)
    done = batch.final("cancel", 60)
    assert done.state == "CANCELLED"
    wait_for(lambda: not process_alive(pid), 30, "the engine process to be gone")


def test_killed_engine_process_is_crashed(batch: Batch) -> None:
    pidfile = Path(batch.runs["kill"].parameters["pidfile"])
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 240, "the flow to start"))
    os.kill(pid, signal.SIGKILL)
    done = batch.final("kill", 60)
    assert done.state == "CRASHED"
    assert done.state_message == (
        "Flow run infrastructure failed: the flow-run process was killed by SIGKILL (the run was RUNNING)."
    )
    assert done.infrastructure_pid == str(pid)  # recorded by the worker, though the engine set the states


def test_prefect_flow_run_execute_command(batch: Batch) -> None:
    done = batch.final("command")
    assert done.state == "COMPLETED", batch.logs("command")
    assert ("prefect.flow_runs", 20, "async done 9") in batch.records("command")
    assert done.infrastructure_pid and done.infrastructure_pid.isdigit()


def test_plain_flows_keep_the_stdlib_runtime(batch: Batch) -> None:
    for case, n in (("plain_file", 4), ("plain_module", 6)):
        done = batch.final(case)
        assert (done.state, done.exit_code) == ("COMPLETED", 0), batch.logs(case)
        assert ("stdout", f"plain {n} int") in batch.logs(case)
        assert batch.records(case) == []


def test_worker_refuses_a_prefect_it_cannot_start_naming_the_versions(
    tmp_path: Path, store: StateStore, workers: Workers
) -> None:
    fake = fake_prefect(tmp_path / "site", "4.0.0")
    proc = workers.start("--type", "process", "--once", "--name", "w0", env={"PYTHONPATH": str(fake)})
    assert proc.wait(30) == 1
    assert workers.output(proc).splitlines()[-2:] == [
        "error: prefect 4.0.0 is installed, but buildsys starts Prefect 3.x's engine (its API changed between major "
        f"versions); found in {sys.executable}",
        "  hint: install Prefect 3 there (`pip install 'prefect>=3,<4'`), or start the worker from a Python without "
        "Prefect if no flow uses it",
    ]
