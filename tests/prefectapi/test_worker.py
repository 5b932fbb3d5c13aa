"""Prefect's own process worker (`prefect worker start --type process`) pointed at `buildsys server`'s
/prefect/api: it claims buildsys runs under buildsys's claim rules, runs them through Prefect's
workspace supervisor and engine, and honours cancellation pushed through events/out."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsys.store.sql import SqlStore
from tests.prefectapi.engine import ENGINE_TIMEOUT, copy_project, deploy
from tests.prefectapi.test_engine import assert_etl_recorded
from tests.server.running import ServerProcess, server_process
from tests.services.prefect import prefect_env
from tests.services.waiting import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[SqlStore, ServerProcess, Path]]:
    project = copy_project(tmp_path)
    db = str(tmp_path / "server.db")
    store = SqlStore.sqlite(Path(db))
    deploy(store, project)
    try:
        with server_process(db, tmp_path) as server:
            yield store, server, tmp_path
    finally:
        store.close()


def _worker(python: str, server: ServerProcess, tmp: Path, *extra: str) -> list[str]:
    return [python, "-m", "prefect", "worker", "start", "--pool", "local", "--type", "process", *extra]


def test_prefects_process_worker_completes_a_buildsys_run(
    prefect_python: str, served: tuple[SqlStore, ServerProcess, Path]
) -> None:
    store, server, tmp = served
    run = store.create_run("etl/main", parameters={"count": 7})
    env = prefect_env(f"{server.url}/prefect/api", tmp / "worker-home")
    done = subprocess.run(
        _worker(prefect_python, server, tmp, "--run-once"),
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=ENGINE_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    finished = store.get_run(run.id)
    assert finished.is_terminal, done.stdout + done.stderr + server.output()[-3000:]
    assert finished.worker == "prefect-worker:local"
    assert finished.infrastructure_pid  # the worker PATCHed the process it started
    assert_etl_recorded(store, finished)


def test_cancellation_reaches_prefects_worker_through_events_out(
    prefect_python: str, served: tuple[SqlStore, ServerProcess, Path]
) -> None:
    store, server, tmp = served
    run = store.create_run("sleepy/main")
    env = prefect_env(f"{server.url}/prefect/api", tmp / "worker-home", PREFECT_WORKER_QUERY_SECONDS="1")
    log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(
        _worker(prefect_python, server, tmp),
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: any(line.message == "sleeping 300.0 s" for line in store.read_logs(run.id)),
            ENGINE_TIMEOUT,
            "the sleepy flow to be running",
        )
        assert store.get_run(run.id).state == "RUNNING"
        assert store.request_cancel(run.id).state == "CANCELLING"
        wait_for(lambda: store.get_run(run.id).is_terminal, 120, "the worker to cancel the run")
        cancelled = store.get_run(run.id)
        assert (cancelled.state, cancelled.state_name) == ("CANCELLED", "Cancelled"), (tmp / "worker.log").read_text()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        log.close()
