"""The Prefect-compatible API against the calls Prefect's clients make (reference:
prefect-engine-api.md), on a real uvicorn over a real SQLite store: shapes, Prefect's state rules,
validation and auth. The real engine and worker runs are in test_engine.py / test_worker.py."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from buildsys.server.auth import Authenticator, TokenStore, database_for
from buildsys.store.base import Proposal
from buildsys.store.sql import SqlStore
from buildsys.store.transitions import decide
from tests.prefectapi.engine import claimed_run, deploy
from tests.server.running import threaded_server
from tests.services.prefect import PrefectServer, prefect_env

API = "/prefect/api"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore.sqlite(tmp_path / "server.db")
    deploy(s)
    yield s
    s.close()


@pytest.fixture
def client(store: SqlStore) -> Iterator[httpx.Client]:
    with threaded_server(store) as url, httpx.Client(base_url=url + API, timeout=30) as c:
        yield c


def state(type_: str, name: str | None = None, **details: Any) -> dict[str, Any]:
    return {"state": {"type": type_, "name": name or type_.title(), "state_details": details}}


def test_admin_calls_and_csrf(client: httpx.Client) -> None:
    assert client.get("/admin/version").json() == "3.9.1"
    assert client.get("/admin/storage").json() == {"default_result_storage_block_id": None}
    assert client.get("/csrf-token", params={"client": "x"}).status_code == 404
    assert client.get("/no/such/thing").status_code == 404


def test_flow_run_deployment_pool_and_queue_read_back_in_prefects_shape(client: httpx.Client, store: SqlStore) -> None:
    run = store.create_run("etl/main", parameters={"count": 2})
    body = client.get(f"/flow_runs/{run.id}").json()
    assert (body["id"], body["name"], body["parameters"]) == (run.id, run.name, {"cfg": {"n": 3}, "when": "2024-01-02", "count": 2})
    assert (body["state"]["type"], body["state"]["name"], body["work_pool_name"]) == ("SCHEDULED", "Scheduled", "local")
    assert client.get(f"/flows/{body['flow_id']}").json()["name"] == "etl"
    dep = client.get(f"/deployments/{body['deployment_id']}").json()
    assert (dep["name"], dep["entrypoint"], dep["flow_id"]) == ("main", "flows.py:etl", body["flow_id"])
    assert client.get("/deployments/name/etl/main").json()["id"] == dep["id"]
    pool = client.get("/work_pools/local").json()
    assert (pool["type"], pool["is_paused"]) == ("process", False)
    assert "job_configuration" in pool["base_job_template"]
    queue = client.get(f"/work_queues/{body['work_queue_id']}").json()
    assert (queue["name"], queue["work_pool_name"]) == ("default", "local")
    assert [q["name"] for q in client.post("/work_pools/local/queues/filter", json={}).json()] == ["default"]
    assert client.get(f"/flow_runs/{uuid.uuid4()}").status_code == 404
    assert client.get("/flow_runs/not-a-uuid").status_code == 422


def test_delete_flow_run_takes_the_run_with_its_logs_and_states_and_keeps_a_held_one(
    client: httpx.Client, store: SqlStore, tmp_path: Path
) -> None:
    done = store.create_run("etl/main")
    store.append_logs(done.id, [(1_800_000_000.0, "stdout", "a line")])
    deleted = client.delete(f"/flow_runs/{done.id}")
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert client.get(f"/flow_runs/{done.id}").status_code == 404
    with sqlite3.connect(tmp_path / "server.db") as db:
        left = [db.execute(f"SELECT count(*) FROM {table} WHERE {key} = ?", (done.id,)).fetchone()[0]
                for table, key in (("flow_runs", "id"), ("flow_run_states", "run_id"), ("logs", "run_id"))]
    assert left == [0, 0, 0]
    again = client.delete(f"/flow_runs/{done.id}")
    assert (again.status_code, again.json()) == (
        404, {"detail": f"flow run {done.id!r} not found (`buildsys runs ls` lists the runs)"}
    )
    assert client.delete("/flow_runs/not-a-uuid").json() == {"detail": "path.id: 'not-a-uuid' is not a valid UUID"}
    held = claimed_run(store, "etl")
    refused = client.delete(f"/flow_runs/{held.id}")
    assert (refused.status_code, refused.json()) == (409, {"detail": (
        f"flow run {held.name} ({held.id}) is PENDING: a run that may still be running is not deleted "
        "(cancel it first, and delete it once it has ended)"
    )})
    assert store.get_run(held.id).state == "PENDING"


def test_delete_flow_run_needs_the_apply_scope_as_the_native_delete(store: SqlStore, tmp_path: Path) -> None:
    tokens = TokenStore(database_for(str(tmp_path / "server.db")))
    run = store.create_run("etl/main")
    with threaded_server(store, authenticator=Authenticator(tokens)) as url:
        path = f"{url}{API}/flow_runs/{run.id}"
        answers = {scope: httpx.delete(path, headers={"Authorization": f"Bearer {tokens.create(scope)[1]}"}).status_code
                   for scope in ("read", "worker", "cache", "apply")}
    assert answers == {"read": 403, "worker": 403, "cache": 403, "apply": 204}
    assert store.find_runs(ids=[run.id], limit=1) == []


DELETE_PROBE = """
import asyncio, json, sys

import httpx
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Running


@flow(name=sys.argv[1])
def probe() -> None: ...


async def outcome(call):
    try:
        await call
        return "ok"
    except ObjectNotFound:
        return "ObjectNotFound"
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code


async def delete_runs(url):
    with temporary_settings({PREFECT_API_URL: url}):
        async with get_client() as client:
            running = await client.create_flow_run(probe)
            await client.set_flow_run_state(running.id, Running())
            done = await client.create_flow_run(probe)
            await client.set_flow_run_state(done.id, Running())
            await client.set_flow_run_state(done.id, Completed())
            return {
                "finished": await outcome(client.delete_flow_run(done.id)),
                "read after": await outcome(client.read_flow_run(done.id)),
                "again": await outcome(client.delete_flow_run(done.id)),
                "running": await outcome(client.delete_flow_run(running.id)),
            }


print(json.dumps([asyncio.run(delete_runs(url)) for url in sys.argv[2:]]))
"""


def test_prefects_client_deletes_runs_as_on_prefects_server(
    prefect_python: str, prefect_server: PrefectServer, store: SqlStore, tmp_path: Path
) -> None:
    with threaded_server(store) as url:
        probe = subprocess.run(
            [prefect_python, "-c", DELETE_PROBE, f"delete-probe-{uuid.uuid4().hex[:6]}", prefect_server.api_url, url + API],
            capture_output=True, text=True, timeout=120, env=prefect_env(None, tmp_path / "prefect-home"),
        )
    assert probe.returncode == 0, probe.stderr
    on_prefect, on_buildsys = json.loads(probe.stdout)
    assert on_prefect == {"finished": "ok", "read after": "ObjectNotFound", "again": "ObjectNotFound", "running": "ok"}
    # the one deliberate difference (docs/prefect-api.md): a run that may still be running is kept
    assert on_buildsys == {**on_prefect, "running": 409}


def test_set_state_follows_prefects_rules(client: httpx.Client, store: SqlStore) -> None:
    run = claimed_run(store, "etl")
    url = f"/flow_runs/{run.id}/set_state"
    again = client.post(url, json=state("PENDING")).json()
    assert (again["status"], again["details"]["type"]) == ("ABORT", "abort_details")
    running = client.post(url, json=state("RUNNING", transition_id="t1")).json()
    assert (running["status"], running["state"]["type"], running["details"]) == ("ACCEPT", "RUNNING", {"type": "accept_details"})
    assert client.post(url, json=state("RUNNING", transition_id="t1")).json()["status"] == "ACCEPT"  # the same proposal again
    assert client.post(url, json=state("RUNNING")).json()["status"] == "ABORT"
    assert store.get_run(run.id).run_count == 1
    store.request_cancel(run.id)
    rejected = client.post(url, json=state("COMPLETED")).json()
    assert (rejected["status"], rejected["state"]["type"]) == ("REJECT", "CANCELLING")
    assert rejected["details"]["reason"] == "the run is being cancelled; only CANCELLED is accepted"
    forced = client.post(url, json={**state("CANCELLED"), "force": True}).json()
    assert forced["status"] == "ACCEPT" and store.get_run(run.id).state == "CANCELLED"
    assert client.post(url, json=state("RUNNING")).json()["status"] == "ABORT"


def test_engine_retries_are_a_reject_to_awaiting_retry_then_a_wait(client: httpx.Client, store: SqlStore) -> None:
    run = claimed_run(store, "retried")
    url = f"/flow_runs/{run.id}"
    assert client.patch(url, json={"empirical_policy": {"retries": 1, "retry_delay": 30}}).status_code == 204
    client.post(f"{url}/set_state", json=state("RUNNING"))
    retry = client.post(f"{url}/set_state", json={"state": {"type": "FAILED", "message": "boom"}}).json()
    assert (retry["status"], retry["state"]["type"], retry["state"]["name"]) == ("REJECT", "SCHEDULED", "AwaitingRetry")
    held = store.get_run(run.id)
    assert (held.state, held.state_name, held.worker) == ("RUNNING", "AwaitingRetry", "test-worker")
    wait = client.post(f"{url}/set_state", json=state("RUNNING")).json()
    assert wait["status"] == "WAIT" and 25 <= wait["details"]["delay_seconds"] <= 30


def test_decide_is_pure_and_reuses_the_store_rules(store: SqlStore) -> None:
    run = store.create_run("etl/main")
    now = run.scheduled_at + 1
    assert decide(run, Proposal("FAILED", message="bad parameters"), now).run.state == "FAILED"
    assert decide(run, Proposal("PENDING"), now).run.state == "PENDING"
    assert decide(run, Proposal("COMPLETED"), now).run.ended_at == now
    early = decide(run, Proposal("RUNNING"), run.scheduled_at - 60)
    assert (early.status, round(early.delay_seconds)) == ("WAIT", 60)
    assert store.get_run(run.id) == run  # deciding wrote nothing


def test_subflow_run_deployment_and_filters(client: httpx.Client, store: SqlStore) -> None:
    parent = claimed_run(store, "parent")
    task = client.post("/task_runs/", json={"name": "child", "flow_run_id": parent.id, "task_key": "k", "dynamic_key": 0}).json()
    flow = client.post("/flows/", json={"name": "child"}).json()
    sub = client.post(
        "/flow_runs/", json={"flow_id": flow["id"], "parameters": {"x": 4}, "parent_task_run_id": task["id"], "state": {"type": "PENDING"}}
    ).json()
    assert (sub["parent_task_run_id"], sub["state"]["type"], sub["deployment_id"]) == (task["id"], "PENDING", None)
    found = client.post("/flow_runs/filter", json={"flow_runs": {"parent_task_run_id": {"any_": [task["id"]]}}}).json()
    assert [r["id"] for r in found] == [sub["id"]]
    dep = client.get("/deployments/name/child/main").json()
    made = client.post(f"/deployments/{dep['id']}/create_flow_run", json={"parameters": {"x": 1}, "parent_task_run_id": task["id"]})
    assert made.status_code == 201 and made.json()["state"]["type"] == "SCHEDULED"
    assert store.get_run(made.json()["id"]).parent_task_run_id == task["id"]
    unsupported = client.post("/flow_runs/filter", json={"flow_runs": {"tags": {"all_": ["x"]}}})
    assert unsupported.status_code == 422 and "tags" in unsupported.json()["detail"]


def test_scheduled_runs_are_claimed_once_for_prefects_worker(client: httpx.Client, store: SqlStore) -> None:
    run = store.create_run("etl/main")
    first = client.post("/work_pools/local/get_scheduled_flow_runs", json={"work_queue_names": ["default"]}).json()
    assert [r["flow_run"]["id"] for r in first] == [run.id]
    assert client.post("/work_pools/local/get_scheduled_flow_runs", json={}).json() == []
    url = f"/flow_runs/{run.id}/set_state"
    assert client.post(url, json=state("PENDING")).json()["status"] == "ACCEPT"  # the worker's own PENDING
    assert client.post(url, json=state("PENDING")).json()["status"] == "ABORT"  # a second submission
    assert client.post("/work_pools/local/workers/heartbeat", json={"name": "w", "heartbeat_interval_seconds": 30}).status_code == 204
    assert store.get_run(run.id).lease_expires_at is not None
    assert [w.name for w in store.list_workers("local")] == ["prefect-worker:local", "w"]


@pytest.mark.parametrize(
    ("path", "body", "detail"),
    [
        ("/v2/concurrency_limits/increment-with-lease", {"names": ["tag:x"], "slots": 10**30}, "body.slots"),
        ("/logs/", [{"level": 20, "message": "\ud800", "flow_run_id": None}], "lone surrogate"),
        ("/logs/", [{"level": 2**70, "message": "x"}], "body[0].level"),
        ("/flows/", {"name": "a\u0000b"}, "NUL"),
        ("/flow_runs/filter", {"limit": -1}, "body.limit"),
    ],
)
def test_bad_bodies_are_422_not_500(client: httpx.Client, path: str, body: Any, detail: str) -> None:
    raw = json.dumps(body)  # keeps the lone surrogate as \ud800
    answer = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 422 and detail in answer.json()["detail"], answer.text


def test_logs_variables_artifacts_and_leases(client: httpx.Client, store: SqlStore) -> None:
    run = claimed_run(store, "etl")
    logs = [{"name": "prefect.flow_runs", "level": 40, "message": "bad", "timestamp": "2030-01-01T00:00:00Z", "flow_run_id": run.id}]
    assert client.post("/logs/", json=[*logs, {"level": 20, "message": "orphan", "flow_run_id": str(uuid.uuid4())}]).status_code == 201
    (line,) = store.read_logs(run.id)
    assert (line.level, line.logger, line.message, line.ts) == (40, "prefect.flow_runs", "bad", 1893456000.0)
    assert client.get("/variables/name/v").status_code == 404
    assert client.post("/variables/", json={"name": "v", "value": {"a": 1}}).status_code == 201
    assert client.patch("/variables/name/v", json={"value": [1, 2]}).status_code == 204
    assert client.get("/variables/name/v").json()["value"] == [1, 2]
    art = client.post("/artifacts/", json={"key": "k", "type": "markdown", "data": "# x", "flow_run_id": run.id}).json()
    assert [a["id"] for a in client.post("/artifacts/filter", json={"artifacts": {"key": {"any_": ["k"]}}}).json()] == [art["id"]]
    free = client.post("/v2/concurrency_limits/increment-with-lease", json={"names": ["tag:none"], "slots": 1}).json()
    assert free["limits"] == []
    assert client.post(f"/v2/concurrency_limits/leases/{free['lease_id']}/renew", json={"lease_duration": 60}).status_code == 204
    assert client.post("/v2/concurrency_limits/", json={"name": "tag:one", "limit": 1}).status_code == 201
    taken = client.post("/v2/concurrency_limits/increment-with-lease", json={"names": ["tag:one"], "slots": 1})
    assert taken.json()["limits"][0]["name"] == "tag:one"
    locked = client.post("/v2/concurrency_limits/increment-with-lease", json={"names": ["tag:one"], "slots": 1})
    assert locked.status_code == 423 and locked.headers["retry-after"] == "1"
    client.post("/v2/concurrency_limits/decrement-with-lease", json={"lease_id": taken.json()["lease_id"]})
    assert client.post("/v2/concurrency_limits/increment-with-lease", json={"names": ["tag:one"], "slots": 1}).status_code == 200
    v1 = client.post("/concurrency_limits/", json={"tag": "db", "concurrency_limit": 2})  # `prefect concurrency-limit create`
    assert v1.status_code == 200 and v1.json()["tag"] == "db"
    assert ("tag:db", 2) in [(x.name, x.limit) for x in store.list_concurrency_limits()]


def test_auth_with_bearer_basic_and_the_websocket_auth_frame(store: SqlStore, tmp_path: Path) -> None:
    db = database_for(str(tmp_path / "server.db"))
    tokens = TokenStore(db)
    _, worker = tokens.create("worker")
    _, reader = tokens.create("read")
    with threaded_server(store, authenticator=Authenticator(tokens)) as url:
        base = url + API
        assert httpx.get(f"{base}/admin/version").status_code == 401
        assert httpx.get(f"{base}/admin/version", headers={"Authorization": f"Bearer {reader}"}).json() == "3.9.1"
        basic = base64.b64encode(f"buildsys:{worker}".encode()).decode()
        assert httpx.post(f"{base}/flows/", json={"name": "f"}, headers={"Authorization": f"Basic {basic}"}).status_code == 201
        denied = httpx.post(f"{base}/flows/", json={"name": "f"}, headers={"Authorization": f"Bearer {reader}"})
        assert denied.status_code == 403

        async def frames(token: str | None) -> dict[str, Any]:
            ws_url = base.replace("http://", "ws://") + "/events/in"
            async with websockets.connect(ws_url, subprotocols=[websockets.Subprotocol("prefect")]) as ws:
                await ws.send(json.dumps({"type": "auth", "token": token}))
                reply: dict[str, Any] = json.loads(await ws.recv())
                return reply

        assert asyncio.run(frames(None))["type"] == "auth_failure"
        assert asyncio.run(frames(f"buildsys:{worker}")) == {"type": "auth_success"}


def test_events_in_records_task_runs_and_events_out_pushes_cancelling(client: httpx.Client, store: SqlStore) -> None:
    run = claimed_run(store, "etl")
    task_id = str(uuid.uuid4())
    ws_base = str(client.base_url).rstrip("/").replace("http://", "ws://")

    def event(name: str, type_: str, occurred: str) -> str:
        return json.dumps(
            {
                "id": str(uuid.uuid4()),
                "occurred": occurred,
                "event": f"prefect.task-run.{name}",
                "resource": {"prefect.resource.id": f"prefect.task-run.{task_id}", "prefect.resource.name": "t-1"},
                "related": [{"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.role": "flow-run"}],
                "payload": {"validated_state": {"type": type_, "name": name}, "task_run": {"name": "t-1", "task_key": "t", "run_count": 1}},
            }
        )

    async def session() -> dict[str, Any]:
        proto = [websockets.Subprotocol("prefect")]
        async with websockets.connect(f"{ws_base}/events/in", subprotocols=proto) as ws:
            await ws.send(json.dumps({"type": "auth", "token": None}))
            assert json.loads(await ws.recv()) == {"type": "auth_success"}
            await ws.send(event("Running", "RUNNING", "2030-01-01T00:00:01Z"))
            await ws.send(event("Completed", "COMPLETED", "2030-01-01T00:00:02Z"))
        async with websockets.connect(f"{ws_base}/events/out", subprotocols=proto) as out:
            await out.send(json.dumps({"type": "auth", "token": None}))
            assert json.loads(await out.recv()) == {"type": "auth_success"}
            await out.send(json.dumps({"type": "filter", "filter": {"event": {"name": ["prefect.flow-run.Cancelling"]}}}))
            await asyncio.to_thread(store.request_cancel, run.id)
            pushed: dict[str, Any] = json.loads(await asyncio.wait_for(out.recv(), 30))
            return pushed

    pushed = asyncio.run(session())
    assert pushed["type"] == "event" and pushed["event"]["event"] == "prefect.flow-run.Cancelling"
    assert pushed["event"]["resource"]["prefect.resource.id"] == f"prefect.flow-run.{run.id}"
    (task,) = store.list_task_runs(run.id)
    assert (task.id, task.name, task.state, task.ended_at) == (task_id, "t-1", "COMPLETED", 1893456002.0)
    assert [h["name"] for h in task.history] == ["Running", "Completed"]


def test_events_out_pushes_suspended_to_the_run_that_subscribed(client: httpx.Client, store: SqlStore) -> None:
    mine, other = claimed_run(store, "etl"), claimed_run(store, "child")
    for run in (mine, other):
        client.post(f"/flow_runs/{run.id}/set_state", json=state("RUNNING"))
        paused = client.post(f"/flow_runs/{run.id}/set_state", json=state("PAUSED", "Suspended")).json()
        assert paused["status"] == "ACCEPT"
    ws_base = str(client.base_url).rstrip("/").replace("http://", "ws://")

    async def subscribe() -> list[dict[str, Any]]:
        async with websockets.connect(f"{ws_base}/events/out", subprotocols=[websockets.Subprotocol("prefect")]) as out:
            await out.send(json.dumps({"type": "auth", "token": None}))
            assert json.loads(await out.recv()) == {"type": "auth_success"}
            wanted = {"event": {"name": ["prefect.flow-run.Suspended"]}, "resource": {"id": [f"prefect.flow-run.{mine.id}"]}}
            await out.send(json.dumps({"type": "filter", "filter": wanted}))
            first: dict[str, Any] = json.loads(await asyncio.wait_for(out.recv(), 30))
            with pytest.raises(TimeoutError):  # nothing about the other run, and nothing twice
                await asyncio.wait_for(out.recv(), 1.5)
            return [first]

    (pushed,) = asyncio.run(subscribe())
    assert pushed["event"]["event"] == "prefect.flow-run.Suspended"
    assert pushed["event"]["resource"]["prefect.resource.id"] == f"prefect.flow-run.{mine.id}"
    assert pushed["event"]["resource"]["prefect.state-type"] == "PAUSED"
