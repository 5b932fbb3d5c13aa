"""The worker's per-run keys (EmbeddedApi's KeyRing) authorize calls about their own run only: run
A's key drives A, A's subflows and what hangs off them, and cannot change run B. In-process uvicorn
over a real SQLite store; the real engine under these keys is in test_engine.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from buildsys.prefectapi.embedded import KeyRing
from buildsys.store.sql import SqlStore
from tests.prefectapi.engine import claimed_run, deploy
from tests.server.running import threaded_server
from tests.services.waiting import wait_for

API = "/prefect/api"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore.sqlite(tmp_path / "server.db")
    deploy(s)
    yield s
    s.close()


def _state(type_: str) -> dict[str, Any]:
    return {"state": {"type": type_, "name": type_.title()}}


def _task_event(task_id: str, run_id: str) -> str:
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "occurred": "2030-01-01T00:00:01Z",
            "event": "prefect.task-run.Running",
            "resource": {"prefect.resource.id": f"prefect.task-run.{task_id}"},
            "related": [{"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run"}],
            "payload": {"validated_state": {"type": "RUNNING", "name": "Running"}, "task_run": {"name": "t-1", "task_key": "t"}},
        }
    )


def test_a_runs_key_drives_its_own_run_and_subflows_and_cannot_change_another_run(store: SqlStore) -> None:
    keys = KeyRing()
    a, b = claimed_run(store, "parent"), claimed_run(store, "etl")
    key_a, key_b = keys.issue(a.id), keys.issue(b.id)
    with threaded_server(store, authenticator=keys) as url:  # type: ignore[arg-type]
        as_a = httpx.Client(base_url=url + API, headers={"Authorization": f"Bearer {key_a}"}, timeout=30)
        as_b = httpx.Client(base_url=url + API, headers={"Authorization": f"Bearer {key_b}"}, timeout=30)
        with as_a, as_b:
            # its own run: everything the engine does
            assert as_a.get(f"/flow_runs/{a.id}").status_code == 200
            assert as_a.post(f"/flow_runs/{a.id}/set_state", json=_state("RUNNING")).json()["status"] == "ACCEPT"
            assert as_a.patch(f"/flow_runs/{a.id}", json={"flow_version": "1"}).status_code == 204
            log = {"name": "prefect.flow_runs", "level": 20, "message": "hello", "flow_run_id": a.id}
            assert as_a.post("/logs/", json=[log]).status_code == 201
            assert as_a.post("/artifacts/", json={"key": "r", "type": "markdown", "data": "#", "flow_run_id": a.id}).status_code == 201
            assert as_a.get("/variables/name/none").status_code == 404  # reads of the project's variables
            assert as_a.get("/deployments/name/child/main").status_code == 200

            # a subflow: its stand-in task run, the subflow run, and the subflow's own states
            task = as_a.post("/task_runs/", json={"name": "child", "flow_run_id": a.id, "task_key": "k", "dynamic_key": 0})
            assert task.status_code == 201
            flow = as_a.post("/flows/", json={"name": "child"}).json()
            sub = as_a.post("/flow_runs/", json={"flow_id": flow["id"], "parent_task_run_id": task.json()["id"]})
            assert sub.status_code == 201
            sub_id = sub.json()["id"]
            assert as_a.post(f"/flow_runs/{sub_id}/set_state", json=_state("RUNNING")).json()["status"] == "ACCEPT"
            # run_deployment: A may start it from its task run and watch it, not drive it
            dep = as_a.get("/deployments/name/child/main").json()
            made = as_a.post(f"/deployments/{dep['id']}/create_flow_run", json={"parent_task_run_id": task.json()["id"]})
            assert made.status_code == 201
            launched = made.json()["id"]
            assert as_a.get(f"/flow_runs/{launched}").status_code == 200
            assert as_a.post(f"/flow_runs/{launched}/set_state", json=_state("RUNNING")).status_code == 403
            seen = as_a.post("/flow_runs/filter", json={}).json()
            assert {r["id"] for r in seen} == {a.id, sub_id, launched}

            # run B, through A's key: nothing changes it, nothing reads it
            refused = [
                as_a.post(f"/flow_runs/{b.id}/set_state", json=_state("CANCELLED")),
                as_a.patch(f"/flow_runs/{b.id}", json={"name": "taken-over", "infrastructure_pid": "1"}),
                as_a.patch(f"/flow_runs/{b.id}/labels", json={"x": "y"}),
                as_a.post("/logs/", json=[log, {**log, "flow_run_id": b.id}]),
                as_a.post("/artifacts/", json={"key": "r", "type": "markdown", "data": "#", "flow_run_id": b.id}),
                as_a.post("/task_runs/", json={"name": "t", "flow_run_id": b.id, "task_key": "k", "dynamic_key": 0}),
                as_a.get(f"/flow_runs/{b.id}"),
                as_a.post("/flow_runs/", json={"flow_id": flow["id"]}),  # a run with no parent
                as_b.post(f"/flow_runs/{sub_id}/set_state", json=_state("FAILED")),  # A's subflow, B's key
                as_b.post(f"/deployments/{dep['id']}/create_flow_run", json={"parent_task_run_id": task.json()["id"]}),
                # what only a worker or an operator does
                as_a.post("/work_pools/local/get_scheduled_flow_runs", json={}),
                as_a.post("/work_pools/local/workers/heartbeat", json={"name": "w"}),
                as_a.post("/v2/concurrency_limits/", json={"name": "tag:x", "limit": 1}),
                as_a.post("/concurrency_limits/", json={"tag": "x", "concurrency_limit": 1}),
                as_a.post("/artifacts/filter", json={}),
            ]
            assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
            assert "bound to flow run" in refused[0].json()["detail"]
            assert {r["id"] for r in as_b.post("/flow_runs/filter", json={}).json()} == {b.id}

        ws_base = url.replace("http://", "ws://") + API

        async def report(key: str, run_ids: list[str]) -> list[str]:
            task_ids = [str(uuid.uuid4()) for _ in run_ids]
            async with websockets.connect(f"{ws_base}/events/in", subprotocols=[websockets.Subprotocol("prefect")]) as ws:
                await ws.send(json.dumps({"type": "auth", "token": f"buildsys:{key}"}))
                assert json.loads(await ws.recv()) == {"type": "auth_success"}
                for task_id, run_id in zip(task_ids, run_ids, strict=True):
                    await ws.send(_task_event(task_id, run_id))
            return task_ids

        # one socket handles its events in order: once A's own event is in, B's was dropped
        foreign, own = asyncio.run(report(key_a, [b.id, a.id]))
        wait_for(lambda: store.get_task_run(own) is not None, 30, "A's own task-run event to be recorded")
        assert store.get_task_run(foreign) is None

    after = store.get_run(b.id)
    assert (after.state, after.name, after.infrastructure_pid, after.prefect.get("labels")) == (b.state, b.name, b.infrastructure_pid, None)
    assert store.read_logs(b.id) == [] and store.list_artifacts(flow_run_id=b.id) == []
    assert store.list_task_runs(b.id) == []
    assert [line.message for line in store.read_logs(a.id)] == ["hello"]  # the refused batch wrote nothing
