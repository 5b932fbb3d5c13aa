"""The worker end to end: real `buildsys worker start` subprocesses against a real SQLite store."""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from buildsys.pools import default_job_template
from buildsys.store import open_store
from buildsys.store.base import Change, FlowRun, StateStore
from tests.services.waiting import process_alive, wait_for
from tests.services.workers import Workers

FLOWS = """
import os, sys, time, pathlib

def hello(name: str = "world") -> str:
    print(f"hello {name}")
    return name

def fail():
    print("about to fail")
    raise ValueError("the data is bad")

def fail_first(marker: str):
    p = pathlib.Path(marker)
    if not p.exists():
        p.write_text("1")
        raise RuntimeError("first attempt fails")
    print("second attempt works")

def wait_for_file(path: str, pidfile: str = "", limit: float = 60.0):
    if pidfile:
        pathlib.Path(pidfile).write_text(str(os.getpid()))
    print("waiting", flush=True)
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    print("released")

def show_env():
    print("REGION=" + os.environ.get("REGION", "<unset>"))
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "flows").mkdir(parents=True)
    (root / "flows" / "demo.py").write_text(textwrap.dedent(FLOWS))
    return root


def add_pool(store: StateStore, name: str = "local", *, template: Mapping[str, Any] | None = None, **spec: Any) -> None:
    body = {
        "type": "process",
        "description": None,
        "base_job_template": dict(template or default_job_template("process")),
        "concurrency_limit": None,
        "paused": False,
        "queues": [],
        **spec,
    }
    store.apply([Change("create", "pool", name, spec=body)], expected_serial=None)


def add_deployment(
    store: StateStore, project: Path, function: str, *, name: str = "dev", pool: str = "local", **spec: Any
) -> str:
    body = {
        "flow_name": function,
        "name": name,
        "entrypoint": "flows/demo.py:" + function,
        "parameters": {},
        "work_pool_name": pool,
        "job_variables": {},
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}],
        **spec,
    }
    full = f"{function}/{name}"
    store.apply([Change("create", "deployment", full, spec=body)], expected_serial=None)
    return full


def final(store: StateStore, run: FlowRun, timeout: float = 30) -> FlowRun:
    return wait_for(lambda: (r := store.get_run(run.id)).is_terminal and r, timeout, f"run {run.name} to finish")


def log_lines(store: StateStore, run: FlowRun) -> list[tuple[str, str]]:
    return [(line.stream, line.message) for line in store.read_logs(run.id)]


def test_run_completes_with_the_flows_output_in_its_logs(store: StateStore, project: Path, workers: Workers) -> None:
    add_pool(store)
    deployment = add_deployment(store, project, "hello")
    workers.start("--name", "w1")
    run = store.create_run(deployment, parameters={"name": "ada"})
    done = final(store, run)
    assert (done.state, done.state_message, done.exit_code, done.worker) == ("COMPLETED", None, 0, "w1")
    assert done.started_at is not None and done.ended_at is not None
    lines = log_lines(store, run)
    assert lines[0][0] == "worker" and lines[0][1].startswith("Submitted to process infrastructure (")
    assert lines[1:] == [
        ("stdout", "Running pull step pull[0: prefect.deployments.steps.set_working_directory]"),
        ("stdout", "hello ada"),
    ]


def test_flow_failure_is_failed_with_the_exception(store: StateStore, project: Path, workers: Workers) -> None:
    add_pool(store)
    deployment = add_deployment(store, project, "fail")
    workers.start()
    done = final(store, store.create_run(deployment))
    assert (done.state, done.state_message, done.exit_code) == (
        "FAILED",
        "Flow run failed: ValueError: the data is bad",
        1,
    )


def test_pull_step_failure_crashes_before_running(store: StateStore, project: Path, workers: Workers) -> None:
    add_pool(store)
    deployment = add_deployment(
        store, project, "hello", pull_steps=[{"run_shell_script": {"script": "false"}}]
    )
    run = store.create_run(deployment)
    proc = workers.start("--once")  # and `worker --once` says so in its exit status
    assert proc.wait(60) == 1
    done = final(store, run)
    assert done.state == "CRASHED"
    assert done.started_at is None  # never reached RUNNING
    assert done.state_message == (
        "Flow run infrastructure exited with non-zero status code 3 (a pull step failed before the flow "
        "started): pull step pull[0: run_shell_script] failed: `false` exited with status 1."
    )
    assert workers.output(proc).endswith(
        f"error: 1 run(s) did not complete: {run.name} ({run.id[:8]}) CRASHED\n"
        f"  hint: see the logs: buildsys runs logs {run.id}\n"
    )


def test_failed_run_is_retried_when_the_deployment_sets_retries(
    store: StateStore, project: Path, workers: Workers, tmp_path: Path
) -> None:
    add_pool(store)
    deployment = add_deployment(store, project, "fail_first", retries=1)
    workers.start()
    run = store.create_run(deployment, parameters={"marker": str(tmp_path / "marker")})
    done = final(store, run)
    assert (done.state, done.attempt) == ("COMPLETED", 2)
    assert ("stdout", "second attempt works") in log_lines(store, run)


def test_bad_job_variable_crashes_with_a_clear_message(store: StateStore, project: Path, workers: Workers) -> None:
    add_pool(store)
    deployment = add_deployment(store, project, "hello", job_variables={"stream_output": "yes"})
    workers.start()
    done = final(store, store.create_run(deployment))
    assert (done.state, done.state_message) == (
        "CRASHED",
        "Failed to submit flow run to infrastructure: job variable 'stream_output': 'yes' is not of type 'boolean'",
    )


def test_changed_pool_template_applies_to_the_next_run(store: StateStore, project: Path, workers: Workers) -> None:
    add_pool(store)
    deployment = add_deployment(store, project, "show_env")
    workers.start()
    first = final(store, store.create_run(deployment))
    template = default_job_template("process")
    template["variables"]["properties"]["env"]["default"] = {"REGION": "eu-west-1"}
    pool = store.get_resource("pool", "local")
    assert pool is not None
    store.apply([Change("update", "pool", "local", spec={**pool.spec, "base_job_template": template})], expected_serial=None)
    second = final(store, store.create_run(deployment))
    assert ("stdout", "REGION=<unset>") in log_lines(store, first)
    assert ("stdout", "REGION=eu-west-1") in log_lines(store, second)


def test_worker_creates_a_missing_pool_and_says_so(store: StateStore, workers: Workers) -> None:
    proc = workers.start("--type", "process", "--once", "--name", "w0", pool="fresh")
    assert proc.wait(30) == 0
    assert workers.output(proc).splitlines() == [
        "Created work pool 'fresh' of type 'process' with the type's defaults.",
        "Worker 'w0' started on pool 'fresh' (process).",
        f"Prefect flows run through the engine of Prefect {metadata.version('prefect')} in {sys.executable}.",
        "Worker 'w0' stopped.",
    ]
    pool = store.get_resource("pool", "fresh")
    assert pool is not None and pool.spec["base_job_template"] == default_job_template("process")


def test_missing_pool_without_type_is_an_error(workers: Workers) -> None:
    proc = workers.start("--once", pool="nowhere")
    assert proc.wait(30) == 1
    assert workers.output(proc) == (
        "error: work pool 'nowhere' does not exist\n"
        "  hint: create it with `buildsys worker start --pool nowhere --type process` or declare it in "
        "work_pools: and run `buildsys apply`\n"
    )


def test_cancelling_a_running_process_run(store: StateStore, project: Path, workers: Workers, tmp_path: Path) -> None:
    add_pool(store)
    deployment = add_deployment(store, project, "wait_for_file")
    workers.start("--cancel-grace", "5")
    pidfile = tmp_path / "pid"
    run = store.create_run(deployment, parameters={"path": str(tmp_path / "never"), "pidfile": str(pidfile)})
    wait_for(lambda: store.get_run(run.id).state == "RUNNING", 20, "the run to start")
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 10, "the flow's pid"))
    store.request_cancel(run.id)
    done = final(store, run, timeout=15)
    assert (done.state, done.state_message) == (
        "CANCELLED",
        "Cancelled on request: the flow-run infrastructure was stopped.",
    )
    wait_for(lambda: not process_alive(pid), 5, "the flow process to be gone")


def test_scheduled_run_starts_at_its_time_not_before(store: StateStore, project: Path, workers: Workers) -> None:
    """A run scheduled for later is not claimed early, and is claimed by the next long poll after its
    time (each lasts a second). The upper bound is a deadline for a worker that stopped claiming, not a
    latency figure: a loaded CI machine took over two seconds to start the flow's process."""
    add_pool(store)
    deployment = add_deployment(store, project, "hello")
    workers.start()
    at = time.time() + 2.0
    run = store.create_run(deployment, scheduled_at=at)
    done = final(store, run)
    assert done.state == "COMPLETED"
    assert done.started_at is not None and at <= done.started_at < at + 30.0


def test_graceful_shutdown_lets_the_run_finish(store: StateStore, project: Path, workers: Workers, tmp_path: Path) -> None:
    add_pool(store)
    deployment = add_deployment(store, project, "wait_for_file")
    proc = workers.start("--name", "w1")
    release = tmp_path / "release"
    run = store.create_run(deployment, parameters={"path": str(release)})
    wait_for(lambda: store.get_run(run.id).state == "RUNNING", 20, "the run to start")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "finishing the runs in hand" in workers.output(proc), 10, "the worker to acknowledge SIGTERM")
    later = store.create_run(deployment, parameters={"path": str(release)})
    release.write_text("go")
    assert proc.wait(20) == 0
    assert final(store, run).state == "COMPLETED"
    assert store.get_run(later.id).state == "SCHEDULED"  # not claimed after the signal


def test_killed_worker_is_crashed_by_lease_expiry_and_retried(
    store: StateStore, project: Path, workers: Workers, tmp_path: Path
) -> None:
    add_pool(store)
    deployment = add_deployment(store, project, "wait_for_file", retries=1)
    pidfile = tmp_path / "pid"
    release = tmp_path / "release"
    doomed = workers.start("--name", "doomed", "--lease", "2")
    run = store.create_run(deployment, parameters={"path": str(release), "pidfile": str(pidfile)})
    wait_for(lambda: store.get_run(run.id).state == "RUNNING", 20, "the run to start")
    first_pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 10, "the flow's pid"))
    killed_at = time.monotonic()
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    # the orphaned flow process notices its worker died and stops (no double execution)
    wait_for(lambda: not process_alive(first_pid), 5, "the orphaned flow process to stop")
    workers.start("--name", "rescuer", "--lease", "2")
    retried = wait_for(lambda: (r := store.get_run(run.id)).attempt == 2 and r, 15, "the run to be retried")
    assert time.monotonic() - killed_at < 2 + 2 + 5  # lease + housekeeping interval + slack
    assert retried.state_name in ("AwaitingRetry", "Pending", "Running")
    release.write_text("go")
    done = final(store, run)
    assert (done.state, done.attempt, done.worker) == ("COMPLETED", 2, "rescuer")


def test_killed_worker_without_retries_leaves_a_crashed_run(
    store: StateStore, project: Path, workers: Workers, tmp_path: Path
) -> None:
    add_pool(store)
    deployment = add_deployment(store, project, "wait_for_file")
    doomed = workers.start("--name", "doomed", "--lease", "2")
    run = store.create_run(deployment, parameters={"path": str(tmp_path / "never"), "limit": 30.0})
    wait_for(lambda: store.get_run(run.id).state == "RUNNING", 20, "the run to start")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    workers.start("--name", "other", "--lease", "2")
    done = final(store, run, timeout=15)
    assert (done.state, done.state_message) == ("CRASHED", "worker 'doomed' stopped renewing its lease")


def thousand_runs_exactly_once(store: StateStore, project: Path, workers: Workers, tmp_path: Path) -> None:
    """4 workers share 1,000 runs; returns the seconds it took. Each run appends its id to a ledger."""
    ledger = tmp_path / "ledger"
    add_pool(store)
    # a cheap command instead of the Python runtime: this test is about claiming, not flows
    command = f"sh -c 'echo \"$BUILDSYS_RUN_ID $BUILDSYS_WORKER\" >> {ledger}'"
    deployment = add_deployment(store, project, "hello", job_variables={"command": command, "stream_output": False})
    runs = [store.create_run(deployment) for _ in range(1000)]
    for i in range(4):
        workers.start("--name", f"w{i}", "--limit", "8", "--no-stream")
    wait_for(
        lambda: len(store.list_runs(deployment=deployment, states=["COMPLETED"], limit=2000)) == 1000,
        90,
        "all 1000 runs to complete",
        max_interval=1.0,
    )
    entries = [line.split() for line in ledger.read_text().splitlines()]
    executed = [run_id for run_id, _worker in entries]
    assert len(executed) == 1000
    assert sorted(executed) == sorted(r.id for r in runs)
    by_worker = {w for _run, w in entries}
    assert len(by_worker) >= 2, by_worker  # the work was shared


@pytest.mark.slow
def test_four_workers_run_a_thousand_runs_exactly_once(
    store: StateStore, project: Path, workers: Workers, tmp_path: Path
) -> None:
    thousand_runs_exactly_once(store, project, workers, tmp_path)  # within its deadline, exactly once each


@pytest.mark.slow
def test_four_workers_a_thousand_runs_through_the_http_store(project: Path, tmp_path: Path) -> None:
    from tests.server.running import server_process

    with server_process(str(tmp_path / "server.db"), tmp_path) as server:
        store = open_store(server.url)
        workers = Workers(server.url, tmp_path)
        try:
            thousand_runs_exactly_once(store, project, workers, tmp_path)  # ~30 s here; 90 s deadline
        finally:
            workers.stop_all()
            store.close()



def test_pool_concurrency_limit_holds_across_workers(
    store: StateStore, project: Path, workers: Workers, tmp_path: Path
) -> None:
    add_pool(store, concurrency_limit=1)
    deployment = add_deployment(store, project, "wait_for_file")
    release = tmp_path / "release"
    runs = [store.create_run(deployment, parameters={"path": str(release)}) for _ in range(3)]
    workers.start("--name", "a")
    workers.start("--name", "b")
    wait_for(lambda: len(store.list_runs(states=["RUNNING"])) == 1, 20, "one run to start")
    # both workers stay alive and polling (fresh heartbeats) while the pool's limit keeps the rest queued
    since = time.time() + 1.0
    wait_for(
        lambda: {w.name for w in store.list_workers("local") if w.last_heartbeat > since} == {"a", "b"},
        10,
        "both workers to heartbeat again",
    )
    assert len(store.list_runs(states=["RUNNING", "PENDING"])) == 1
    release.write_text("go")
    for run in runs:
        assert final(store, run).state == "COMPLETED"


def test_local_limit_runs_one_at_a_time(store: StateStore, project: Path, workers: Workers, tmp_path: Path) -> None:
    add_pool(store)
    deployment = add_deployment(store, project, "wait_for_file")
    release = tmp_path / "release"
    runs = [store.create_run(deployment, parameters={"path": str(release)}) for _ in range(2)]
    workers.start("--limit", "1")
    wait_for(lambda: len(store.list_runs(states=["RUNNING"])) == 1, 20, "one run to start")
    assert [r.state for r in store.list_runs(states=["SCHEDULED"])] == ["SCHEDULED"]
    release.write_text("go")
    for run in runs:
        assert final(store, run).state == "COMPLETED"


@pytest.mark.postgres
def test_worker_on_a_postgresql_store(fresh_postgres_url: str, project: Path, tmp_path: Path) -> None:
    pg = open_store(fresh_postgres_url)
    workers = Workers(fresh_postgres_url, tmp_path)
    try:
        add_pool(pg)
        deployment = add_deployment(pg, project, "hello")
        workers.start("--name", "pgw")
        run = pg.create_run(deployment, parameters={"name": "postgres"})
        done = final(pg, run)
        assert (done.state, done.worker) == ("COMPLETED", "pgw")
        assert ("stdout", "hello postgres") in log_lines(pg, run)
    finally:
        workers.stop_all()
        pg.close()


def test_a_worker_on_buildsys_server_leaves_schedules_to_the_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A schedule pass lists every deployment; the server already makes the runs, so workers over
    HTTP do not repeat it (at 100,000 deployments one pass took 111 s over HTTP); on a file or
    database store they still do."""
    import buildsys.schedules
    from buildsys.store.http import HttpStore
    from buildsys.store.sql import SqlStore
    from buildsys.worker import Worker, WorkerOptions

    passes: list[object] = []
    def counted(store: object, now: float | None = None) -> buildsys.schedules.Round:
        passes.append(store)
        return buildsys.schedules.Round(created=[], failed={}, scheduled=frozenset())

    monkeypatch.setattr(buildsys.schedules, "schedule_round", counted)
    remote = HttpStore("http://127.0.0.1:9", retries=0)  # never called
    local = SqlStore.sqlite(tmp_path / "state.db")
    try:
        Worker(remote, WorkerOptions(pool="p"))._schedule(0.0)
        assert passes == []
        Worker(local, WorkerOptions(pool="p"))._schedule(0.0)
        assert passes == [local]
    finally:
        remote.close()
        local.close()
