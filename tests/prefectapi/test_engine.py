"""Real Prefect 3.9 flows run by `python -m prefect.engine` against buildsys's Prefect API: on the
worker's EmbeddedApi over a file store, and on `buildsys server` (SQLite and PostgreSQL)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from buildsys.prefectapi import EmbeddedApi
from buildsys.store.base import FlowRun, StateStore
from buildsys.store.sql import SqlStore
from tests.prefectapi.engine import claimed_run, copy_project, deploy, run_engine
from tests.server.running import server_process
from tests.services.postgres import PostgresServer, fresh_database

pytestmark = pytest.mark.slow


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[SqlStore]:
    store = SqlStore.sqlite(tmp_path / ".buildsys" / "state.db")
    deploy(store)
    yield store
    store.close()


@pytest.fixture
def embedded(file_store: SqlStore) -> Iterator[EmbeddedApi]:
    api = EmbeddedApi(file_store)
    api.start()
    yield api
    api.stop()


def _engine(python: str, api: EmbeddedApi, store: StateStore, run: FlowRun, project: Path) -> FlowRun:
    key = api.issue_key(run.id)
    try:
        assert api.url is not None
        done = run_engine(python, api.url, run, project, key=key)
    finally:
        api.revoke_key(key)
    finished = store.get_run(run.id)
    assert finished.is_terminal, done.stdout + done.stderr
    return finished


def assert_etl_recorded(store: StateStore, run: FlowRun) -> None:
    """What the etl flow leaves behind: state, parameters as the flow saw them, task runs, logs,
    the artifact and the variable it wrote."""
    assert (run.state, run.state_name, run.state_message, run.run_count) == ("COMPLETED", "Completed", None, 1)
    tasks = store.list_task_runs(run.id)
    by_name: dict[str, list[str]] = {}
    for t in tasks:
        by_name.setdefault(t.name.rsplit("-", 1)[0], []).append(t.state_name)
    assert by_name == {
        "double": ["Completed"] * 5,
        "flaky": ["Completed"],
        "cached": ["Completed", "Cached"],
        "tagged": ["Completed"],
    }
    flaky = next(t for t in tasks if t.name.startswith("flaky"))
    assert flaky.run_count == 2 and flaky.attempts == 2
    assert [h["name"] for h in flaky.history] == ["Pending", "Running", "Retrying", "Completed"]
    cached = [t for t in tasks if t.name.startswith("cached")]
    assert [t.cached for t in cached] == [False, True]
    assert all(t.started_at is not None and t.ended_at is not None for t in tasks if not t.cached)
    logs = store.read_logs(run.id)
    messages = [(line.level, line.logger, line.message) for line in logs]
    assert (20, "prefect.flow_runs", "cfg=Cfg(n=3) when=datetime.date(2024, 1, 2) count=7") in messages
    doubling = [line for line in logs if line.message.startswith("doubling ")]
    assert sorted(line.message for line in doubling) == [f"doubling {x}" for x in (1, 2, 3, 5, 7)]
    assert all(line.logger == "prefect.task_runs" and line.task_run_id for line in doubling)
    assert {line.task_run_id for line in doubling} <= {t.id for t in tasks}
    (artifact,) = store.list_artifacts(flow_run_id=run.id)
    assert (artifact.key, artifact.type, artifact.data) == ("report", "markdown", "# report\nall good")
    variable = store.get_resource("variable", "greeting")
    assert variable is not None and variable.spec["value"] == "hello after unset"


@pytest.mark.usefixtures("prefect_python")
def test_a_flow_with_tasks_on_the_embedded_api(
    prefect_python: str, file_store: SqlStore, embedded: EmbeddedApi, tmp_path: Path
) -> None:
    project = copy_project(tmp_path)
    run = claimed_run(file_store, "etl", parameters={"count": "7"})
    assert_etl_recorded(file_store, _engine(prefect_python, embedded, file_store, run, project))


def test_the_embedded_api_refuses_requests_without_a_key(embedded: EmbeddedApi) -> None:
    assert embedded.url is not None
    assert httpx.get(f"{embedded.url}/admin/version").status_code == 401
    key = embedded.issue_key("some-run")
    assert httpx.get(f"{embedded.url}/admin/version", headers={"Authorization": f"Bearer {key}"}).json() == "3.9.1"
    embedded.revoke_key(key)
    assert httpx.get(f"{embedded.url}/admin/version", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_a_runs_key_may_not_delete_runs(file_store: SqlStore, embedded: EmbeddedApi) -> None:
    run = file_store.create_run("etl/main")
    key = embedded.issue_key(run.id)
    refused = httpx.delete(f"{embedded.url}/flow_runs/{run.id}", headers={"Authorization": f"Bearer {key}"})
    assert (refused.status_code, refused.json()) == (403, {"detail": "this token has scope 'worker'; this call needs 'apply'"})
    assert file_store.get_run(run.id).state == "SCHEDULED"


def test_a_failing_flow_fails_with_the_exception_as_its_message(
    prefect_python: str, file_store: SqlStore, embedded: EmbeddedApi, tmp_path: Path
) -> None:
    run = _engine(prefect_python, embedded, file_store, claimed_run(file_store, "boom"), copy_project(tmp_path))
    assert (run.state, run.state_message) == ("FAILED", "Flow run encountered an exception: ValueError: boom happened")
    errors = [line for line in file_store.read_logs(run.id) if line.level == 40]
    assert errors and "ValueError: boom happened" in errors[0].message


def test_flow_retries_come_from_the_engine(
    prefect_python: str, file_store: SqlStore, embedded: EmbeddedApi, tmp_path: Path
) -> None:
    run = _engine(prefect_python, embedded, file_store, claimed_run(file_store, "retried"), copy_project(tmp_path))
    assert (run.state, run.run_count, run.attempt) == ("COMPLETED", 2, 1)
    assert run.prefect["empirical_policy"]["retries"] == 1


def test_subflows_and_async_flows(
    prefect_python: str, file_store: SqlStore, embedded: EmbeddedApi, tmp_path: Path
) -> None:
    project = copy_project(tmp_path)
    parent = _engine(prefect_python, embedded, file_store, claimed_run(file_store, "parent"), project)
    assert parent.state == "COMPLETED"
    stand_ins = file_store.list_task_runs(parent.id)
    children = file_store.find_runs(parent_task_run_ids=[t.id for t in stand_ins])
    assert sorted((c.flow_name, c.state, c.parameters["x"]) for c in children) == [
        ("child", "COMPLETED", 4),
        ("child", "COMPLETED", 5),
    ]
    assert all(c.deployment == "" and c.pool == "" for c in children)
    logs = {line.message for c in children for line in file_store.read_logs(c.id)}
    assert {"child got 4", "child got 5"} <= logs
    run = _engine(prefect_python, embedded, file_store, claimed_run(file_store, "async_flow", parameters={"n": "5"}), project)
    assert run.state == "COMPLETED"
    assert "async got 5" in {line.message for line in file_store.read_logs(run.id)}


def test_run_deployment_creates_a_buildsys_run_with_the_deployment_defaults(
    prefect_python: str, file_store: SqlStore, embedded: EmbeddedApi, tmp_path: Path
) -> None:
    launcher = _engine(prefect_python, embedded, file_store, claimed_run(file_store, "launcher"), copy_project(tmp_path))
    assert launcher.state == "COMPLETED"
    (created,) = file_store.list_runs(deployment="child/main")
    assert (created.state, created.parameters, created.pool) == ("SCHEDULED", {"x": 1}, "local")
    assert created.parent_task_run_id in {t.id for t in file_store.list_task_runs(launcher.id)}


@contextmanager
def _database(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if kind == "sqlite":
        yield str(tmp_path / "server.db")
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        with contextmanager(fresh_database)(server) as url:
            yield url


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_flow_with_tasks_against_buildsys_server(
    kind: str, prefect_python: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with ExitStack() as stack:
        db = stack.enter_context(_database(kind, tmp_path, request))
        store = SqlStore.sqlite(Path(db)) if kind == "sqlite" else SqlStore.postgres(db)
        stack.callback(store.close)
        deploy(store)
        server = stack.enter_context(server_process(db, tmp_path))
        assert "PREFECT_API_URL=http://127.0.0.1:" in server.output()
        run = claimed_run(store, "etl", parameters={"count": 7})
        done = run_engine(prefect_python, f"{server.url}/prefect/api", run, copy_project(tmp_path))
        finished = store.get_run(run.id)
        assert finished.is_terminal, done.stdout + done.stderr
        assert_etl_recorded(store, finished)


def test_a_tag_limit_holds_tagged_tasks_to_one_at_a_time(
    prefect_python: str, file_store: SqlStore, embedded: EmbeddedApi, tmp_path: Path
) -> None:
    file_store.set_concurrency_limit("tag:db", 1)  # as `prefect concurrency-limit create db 1` would
    run = _engine(prefect_python, embedded, file_store, claimed_run(file_store, "limited"), copy_project(tmp_path))
    assert run.state == "COMPLETED"
    spans: dict[str, list[float]] = {}
    for line in file_store.read_logs(run.id):
        word, _, rest = line.message.partition(" ")
        if word in ("start", "end"):
            index, ts = rest.split()
            spans.setdefault(index, []).append(float(ts))
    ordered = sorted(spans.values())
    assert len(ordered) == 3 and all(len(s) == 2 for s in ordered)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered)), ordered
    assert file_store.list_concurrency_limits()[0].active_slots == 0  # every lease released
