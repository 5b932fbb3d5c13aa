"""The HTTP API against a real uvicorn on 127.0.0.1 over a real SQLite store."""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from buildsys.httpclient import ONE_ORIGIN
from buildsys.server.app import Settings
from buildsys.server.openapi import document, render
from buildsys.store.sql import SqlStore
from tests.server.running import threaded_server
from tests.services.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
API = "/api/v1"

POOL = {"action": "create", "kind": "pool", "name": "local", "spec": {"type": "process"}}
DEPLOYMENT = {
    "action": "create",
    "kind": "deployment",
    "name": "etl/nightly",
    "spec": {"flow_name": "etl", "name": "nightly", "entrypoint": "flows.py:etl", "work_pool_name": "local"},
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore.sqlite(tmp_path / "server.db")
    yield s
    s.close()


@pytest.fixture
def client(store: SqlStore) -> Iterator[httpx.Client]:
    settings = Settings(housekeeping=False, max_body_bytes=64 * 1024)
    # as buildsys's own clients (ONE_ORIGIN): httpx's default pool may close a connection under a
    # thread it has just handed it to (test_store_calls_run_on_a_fixed_set_of_threads: EBADF)
    with threaded_server(store, settings=settings) as url, httpx.Client(base_url=url, timeout=30,
                                                                      limits=ONE_ORIGIN) as c:
        yield c


@pytest.fixture
def deployed(client: httpx.Client) -> httpx.Client:
    r = client.post(f"{API}/apply", json={"changes": [POOL, DEPLOYMENT], "expected_serial": 0})
    assert r.status_code == 200, r.text
    return client


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def test_served_openapi_document_is_the_checked_in_one(client: httpx.Client) -> None:
    served = client.get(f"{API}/openapi.json")
    assert served.status_code == 200
    checked_in = (REPO / "schemas" / "openapi.json").read_text()
    assert checked_in == render(), "regenerate: python -m buildsys.server.openapi > schemas/openapi.json"
    assert served.json() == json.loads(checked_in) == document()


def test_health_and_serial(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "serial": 0}
    assert client.get(f"{API}/serial").json() == {"serial": 0}


def test_apply_then_read_back_with_pagination(client: httpx.Client) -> None:
    pools = [
        {"action": "create", "kind": "pool", "name": f"p{i}", "spec": {"type": "process"}} for i in range(5)
    ]
    assert client.post(f"{API}/apply", json={"changes": pools, "expected_serial": 0}).json() == {"serial": 1}
    page = client.get(f"{API}/pools", params={"limit": 2, "offset": 2}).json()
    assert [r["name"] for r in page["items"]] == ["p2", "p3"]
    assert (page["total"], page["limit"], page["offset"], page["serial"]) == (5, 2, 2, 1)
    one = client.get(f"{API}/pools/p4").json()
    assert {k: one[k] for k in ("kind", "name", "spec", "owner", "serial")} == {
        "kind": "pool", "name": "p4", "spec": {"type": "process"}, "owner": None, "serial": 1,
    }  # fmt: skip
    assert client.get(f"{API}/variables").json()["items"] == []


def test_deployment_names_with_a_slash_and_missing_ones(deployed: httpx.Client) -> None:
    assert deployed.get(f"{API}/deployments/etl/nightly").json()["spec"]["entrypoint"] == "flows.py:etl"
    r = deployed.get(f"{API}/deployments/etl/weekly")
    assert (r.status_code, r.json()) == (404, error("not_found", "deployment 'etl/weekly' does not exist"))


def test_apply_against_a_moved_serial_is_refused_whole(deployed: httpx.Client) -> None:
    change = {"action": "create", "kind": "variable", "name": "region", "spec": {"value": "eu"}}
    r = deployed.post(f"{API}/apply", json={"changes": [change], "expected_serial": 0})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "conflict"
    assert "serial 1, plan was made at 0" in r.json()["error"]["message"]
    assert deployed.get(f"{API}/variables").json()["items"] == []
    assert deployed.get(f"{API}/serial").json() == {"serial": 1}


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (
            b"{bad",
            400,
            error(
                "bad_json",
                "the request body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
            ),
        ),
        (
            b'{"changes": [], "expected_serial": NaN}',
            400,
            error("bad_json", "the request body is not valid JSON: NaN is not allowed in JSON"),
        ),
        (
            b'{"changes": [{"action": "frob", "kind": "pool", "name": "x"}]}',
            422,
            {
                "error": {
                    "code": "rejected",
                    "message": "unknown change action in frob pool 'x'",
                    "hint": "one of: create, update, delete",
                }
            },
        ),
        (b'{"changes": "all"}', 422, error("invalid_request", "body.changes: 'all' is not of type 'array'")),
        (
            b'{"changes": [], "extra": 1}',
            422,
            error("invalid_request", "body: Additional properties are not allowed ('extra' was unexpected)"),
        ),
        (
            b'{"changes": [{"action": "create", "kind": "pool", "name": "a\\u0000b", "spec": {}}]}',
            422,
            error("invalid_request", "body.changes[0].name: the text holds a NUL character (\\x00), which databases cannot store"),
        ),
        (
            b'{"changes": [{"action": "create", "kind": "pool", "name": "a\\ud800", "spec": {"type": "process"}}], '
            b'"expected_serial": 0}',
            422,
            error("invalid_request", "body.changes[0].name: the text holds a lone surrogate (\\ud800-\\udfff), which is not a character"),
        ),
        (
            b'{"changes": [{"action": "create", "kind": "pool", "name": "p", "spec": {"type": "process", '
            b'"concurrency_limit": 1' + b"0" * 30 + b'}}], "expected_serial": 0}',
            422,
            error("invalid_request", "body.changes[0].spec.concurrency_limit: the integer 10000000000000000000\u2026 (31 digits) is out of range (stored integers are 64-bit: at most 2**63-1 in size)"),
        ),
        (b"[" * 30_000 + b"]" * 30_000, 400, None),
        (b"x" * (64 * 1024 + 1), 413, error("too_large", "the request body is larger than 65536 bytes")),
    ],
    ids=["bad-json", "nan", "enum", "type", "extra-key", "nul", "surrogate", "huge-int", "deep", "too-large"],
)
def test_bad_bodies_get_clear_4xx(client: httpx.Client, body: bytes, status: int, expected: Any) -> None:
    r = client.post(f"{API}/apply", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    if expected is not None:
        assert r.json() == expected
    else:
        assert r.json()["error"]["code"] == "bad_json"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"{API}/pools?limit=0", "query parameter limit must be >= 1"),
        (f"{API}/pools?limit=10001", "query parameter limit must be <= 10000"),
        (f"{API}/runs?limit=1001", "query parameter limit must be <= 1000"),
        (f"{API}/pools?offset=x", "query parameter offset must be an integer"),
        (f"{API}/pools?limt=5", "unknown query parameter 'limt' (accepted: limit, offset)"),
        (f"{API}/serial?x=1", "unknown query parameter 'x' (accepted: none)"),
        (
            f"{API}/runs?state=DONE",
            "query parameter state: 'DONE' is not one of SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, CRASHED, CANCELLING, PAUSED",
        ),
        (f"{API}/runs/r1/logs?wait=nan", "query parameter wait must be finite"),
    ],
)
def test_bad_query_parameters_get_422(client: httpx.Client, path: str, expected: str) -> None:
    r = client.get(path)
    assert (r.status_code, r.json()) == (422, error("invalid_request", expected))


def test_store_refusals_keep_their_message_and_hint(client: httpx.Client) -> None:
    r = client.get(f"{API}/resources", params={"kind": "flow"})
    assert (r.status_code, r.json()) == (
        422,
        {
            "error": {
                "code": "rejected",
                "message": "unknown resource kind 'flow'",
                "hint": "one of: variable, pool, deployment",
            }
        },
    )


def test_unknown_paths_and_methods_answer_json(client: httpx.Client) -> None:
    r = client.get("/api/v2/pools")
    assert (r.status_code, r.json()) == (404, error("not_found", "no such endpoint: GET /api/v2/pools"))
    r = client.delete(f"{API}/serial")
    assert (r.status_code, r.json()) == (405, error("method_not_allowed", "Method Not Allowed"))


def test_run_lifecycle_is_validated_by_the_server(deployed: httpx.Client) -> None:
    created = deployed.post(f"{API}/runs", json={"deployment": "etl/nightly", "parameters": {"n": 1}})
    assert created.status_code == 201
    run = created.json()
    assert (run["state"], run["pool"], run["parameters"]) == ("SCHEDULED", "local", {"n": 1})
    claim = deployed.post(f"{API}/runs/claim", json={"pool": "local", "worker": "w1"}).json()["runs"]
    assert [(r["id"], r["state"], r["worker"]) for r in claim] == [(run["id"], "PENDING", "w1")]
    again = deployed.post(f"{API}/runs/claim", json={"pool": "local", "worker": "w2"}).json()
    assert again == {"runs": []}
    path = f"{API}/runs/{run['id']}/state"
    theft = deployed.post(path, json={"state": "RUNNING", "worker": "w2"})
    assert theft.status_code == 409 and theft.json()["error"]["code"] == "conflict"
    assert deployed.post(path, json={"state": "RUNNING", "worker": "w1"}).json()["state"] == "RUNNING"
    done = deployed.post(path, json={"state": "COMPLETED", "worker": "w1", "exit_code": 0}).json()
    assert (done["state"], done["exit_code"]) == ("COMPLETED", 0)
    restart = deployed.post(path, json={"state": "RUNNING", "worker": "w1"})
    assert restart.status_code == 409 and restart.json()["error"]["code"] == "conflict"
    assert deployed.get(f"{API}/runs/{run['id'][:8]}").json()["state"] == "COMPLETED"
    listed = deployed.get(f"{API}/runs", params=[("state", "COMPLETED"), ("state", "FAILED")]).json()
    assert [r["id"] for r in listed["items"]] == [run["id"]]


def test_unknown_deployment_and_run_are_404(client: httpx.Client) -> None:
    r = client.post(f"{API}/runs", json={"deployment": "nope/none"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get(f"{API}/runs/does-not-exist")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_long_poll_claim_returns_as_soon_as_a_run_is_created(deployed: httpx.Client) -> None:
    result: dict[str, Any] = {}

    def claim() -> None:
        start = time.monotonic()
        r = deployed.post(f"{API}/runs/claim", json={"pool": "local", "worker": "w", "wait": 20})
        result.update(runs=r.json()["runs"], elapsed=time.monotonic() - start)

    waiter = threading.Thread(target=claim)
    waiter.start()
    created_at = time.monotonic()
    run = deployed.post(f"{API}/runs", json={"deployment": "etl/nightly"}).json()
    waiter.join(25)
    assert [r["id"] for r in result["runs"]] == [run["id"]]
    assert result["elapsed"] < 10, "the claim waited for its whole window instead of waking up"
    assert time.monotonic() - created_at < 5


def test_long_poll_claim_gives_up_after_wait(deployed: httpx.Client) -> None:
    start = time.monotonic()
    r = deployed.post(f"{API}/runs/claim", json={"pool": "local", "worker": "w", "wait": 0.5})
    assert r.json() == {"runs": []}
    assert 0.5 <= time.monotonic() - start < 5
    capped = deployed.post(f"{API}/runs/claim", json={"pool": "local", "worker": "w", "wait": 31})
    assert capped.status_code == 422
    assert capped.json() == error("invalid_request", "body.wait: 31 is greater than the maximum of 30.0")


def test_logs_append_read_and_follow(deployed: httpx.Client) -> None:
    run = deployed.post(f"{API}/runs", json={"deployment": "etl/nightly"}).json()
    logs = f"{API}/runs/{run['id']}/logs"
    lines = [
        {"ts": 1.0, "stream": "stdout", "message": "one"},
        {"ts": 2.0, "stream": "stderr", "message": "two"},
    ]
    assert deployed.post(logs, json={"lines": lines}).json() == {"last_seq": 2}
    page = deployed.get(logs, params={"after": 1}).json()
    assert page == {
        "lines": [
            {
                "run_id": run["id"],
                "seq": 2,
                "ts": 2.0,
                "message": "two",
                "stream": "stderr",
                "level": None,
                "logger": None,
                "task_run_id": None,
            }
        ],
        "state": "SCHEDULED",
    }
    result: dict[str, Any] = {}

    def follow() -> None:
        result["page"] = deployed.get(logs, params={"after": 2, "wait": 20}).json()

    follower = threading.Thread(target=follow)
    follower.start()
    deployed.post(logs, json={"lines": [{"ts": 3.0, "stream": "stdout", "message": "three"}]})
    follower.join(25)
    assert [x["message"] for x in result["page"]["lines"]] == ["three"]
    cancelled = deployed.post(f"{API}/runs/{run['id']}/cancel").json()
    assert cancelled["state"] == "CANCELLED"
    start = time.monotonic()
    assert deployed.get(logs, params={"after": 3, "wait": 20}).json() == {"lines": [], "state": "CANCELLED"}
    assert time.monotonic() - start < 5, "a follow of an ended run must return at once"


def test_heartbeat_reports_cancellation_and_lists_workers(deployed: httpx.Client) -> None:
    run = deployed.post(f"{API}/runs", json={"deployment": "etl/nightly"}).json()
    deployed.post(f"{API}/runs/claim", json={"pool": "local", "worker": "w1"})
    beat = {"pool": "local", "worker": "w1", "run_ids": [run["id"]]}
    assert deployed.post(f"{API}/workers/heartbeat", json=beat).json() == {"cancelling": []}
    assert deployed.post(f"{API}/runs/{run['id']}/cancel").json()["state"] == "CANCELLING"
    assert deployed.post(f"{API}/workers/heartbeat", json=beat).json() == {"cancelling": [run["id"]]}
    workers = deployed.get(f"{API}/workers", params={"pool": "local"}).json()["items"]
    assert [(w["name"], w["pool"], w["status"]) for w in workers] == [("w1", "local", "ONLINE")]


def test_expire_crashes_runs_whose_lease_ran_out(deployed: httpx.Client) -> None:
    run = deployed.post(f"{API}/runs", json={"deployment": "etl/nightly"}).json()
    deployed.post(f"{API}/runs/claim", json={"pool": "local", "worker": "w1", "lease_seconds": 5})
    expired = deployed.post(f"{API}/runs/expire", json={"now": time.time() + 60}).json()["runs"]
    assert [(r["id"], r["state"]) for r in expired] == [(run["id"], "CRASHED")]


def test_export_and_import_round_trip(deployed: httpx.Client) -> None:
    deployed.post(f"{API}/runs", json={"deployment": "etl/nightly"})
    exported = deployed.get(f"{API}/export").json()
    assert sorted(r["name"] for r in exported["resources"]) == ["etl/nightly", "local"]
    wipe = {"changes": [{"action": "delete", "kind": "deployment", "name": "etl/nightly"}]}
    assert deployed.post(f"{API}/apply", json=wipe).status_code == 200
    assert deployed.post(f"{API}/import", json=exported).status_code == 200
    assert deployed.get(f"{API}/deployments/etl/nightly").status_code == 200
    assert len(deployed.get(f"{API}/runs").json()["items"]) == 1


def test_two_servers_on_one_database_behave_as_one(store: SqlStore, tmp_path: Path) -> None:
    other_store = SqlStore.sqlite(tmp_path / "server.db")
    try:
        with (
            threaded_server(store) as first_url,
            threaded_server(other_store) as second_url,
            httpx.Client(base_url=first_url) as first,
            httpx.Client(base_url=second_url) as second,
        ):
            assert second.get(f"{API}/pools").json()["items"] == []  # now cached by the second server
            assert first.post(f"{API}/apply", json={"changes": [POOL, DEPLOYMENT]}).json() == {"serial": 1}
            page = second.get(f"{API}/pools").json()
            assert ([r["name"] for r in page["items"]], page["serial"]) == (["local"], 1)
            update = {
                "action": "update",
                "kind": "pool",
                "name": "local",
                "spec": {"type": "process", "paused": True},
            }
            assert first.post(f"{API}/apply", json={"changes": [update], "expected_serial": 1}).json() == {
                "serial": 2
            }
            assert second.get(f"{API}/pools/local").json()["spec"] == {"type": "process", "paused": True}
            assert second.get(f"{API}/pools").json()["items"][0]["spec"]["paused"] is True
            run = second.post(f"{API}/runs", json={"deployment": "etl/nightly"}).json()
            assert first.get(f"{API}/runs/{run['id']}").json()["state"] == "SCHEDULED"
    finally:
        other_store.close()


def test_servers_turn_schedules_into_runs_once(store: SqlStore, tmp_path: Path) -> None:
    other_store = SqlStore.sqlite(tmp_path / "server.db")
    fast = Settings(housekeeping_seconds=0.2)

    def daily(name: str) -> dict[str, Any]:
        spec = {**DEPLOYMENT["spec"], "name": name, "schedules": [{"interval": 86400, "timezone": "UTC"}]}
        return {"action": "create", "kind": "deployment", "name": f"etl/{name}", "spec": spec}

    def scheduled(client: httpx.Client, name: str) -> list[dict[str, Any]]:
        runs = client.get(f"{API}/runs", params={"deployment": f"etl/{name}"}).json()["items"]
        return [r for r in runs if r["auto_scheduled"]]

    try:
        with (
            threaded_server(store, settings=fast) as first_url,
            threaded_server(other_store, settings=fast) as second_url,
            httpx.Client(base_url=first_url) as first,
        ):
            first.post(f"{API}/apply", json={"changes": [POOL, daily("one")]})
            runs = wait_for(
                lambda: len(scheduled(first, "one")) >= 3 and scheduled(first, "one"), 20, "3 runs of etl/one"
            )
            # both servers keep scheduling every 0.2 s (the second at once after its own apply):
            # by the time etl/two has its runs, etl/one has been scheduled over and over
            httpx.post(f"{second_url}{API}/apply", json={"changes": [daily("two")]})
            wait_for(lambda: len(scheduled(first, "two")) >= 3, 20, "3 runs of etl/two")
            again = scheduled(first, "one")
            assert sorted(r["id"] for r in again) == sorted(r["id"] for r in runs)
            times = sorted(r["scheduled_at"] for r in again)
            assert [b - a for a, b in itertools.pairwise(times)] == [86400.0, 86400.0]
            assert len(scheduled(first, "two")) == 3
    finally:
        other_store.close()


def test_store_calls_run_on_a_fixed_set_of_threads(deployed: httpx.Client) -> None:
    """The SQL store keeps a connection per thread: a burst must not mint threads (connections)."""
    from concurrent.futures import ThreadPoolExecutor

    def store_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("buildsys-db")}

    before = store_threads()  # this server's so far (and any a finished test's server still winds down)
    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(lambda _: deployed.get(f"{API}/serial").status_code, range(200)))
    assert statuses == [200] * 200
    assert len(store_threads() - before) <= 8


def test_one_bad_deployment_never_stops_scheduling_nor_lease_expiry(
    store: SqlStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="buildsys.server")
    daily = [{"interval": 86400, "timezone": "UTC"}]
    no_pool = {"action": "create", "kind": "deployment", "name": "etl/a-no-pool",  # sorts first
               "spec": {"flow_name": "etl", "name": "a-no-pool", "entrypoint": "flows.py:etl", "schedules": daily}}
    fine = {**DEPLOYMENT, "spec": {**DEPLOYMENT["spec"], "schedules": daily}}

    def lost_worker() -> str:  # a run whose worker died: its lease expires
        store.create_run("etl/nightly")
        (claimed,) = store.claim_runs("local", "dead-worker", lease_seconds=0.05)
        return claimed.id

    def crashed(run_id: str) -> bool:
        return store.get_run(run_id).state == "CRASHED"

    with threaded_server(store, settings=Settings(housekeeping_seconds=0.1)) as url, httpx.Client(base_url=url) as c:
        assert c.post(f"{API}/apply", json={"changes": [POOL, no_pool, fine]}).status_code == 200
        wait_for(lambda: len(store.list_runs(deployment="etl/nightly")) >= 3, 20, "the runs of etl/nightly")
        first = lost_worker()
        wait_for(lambda: crashed(first), 20, "the expired lease handled")
        # a damaged record makes the whole scheduling pass fail: leases still expire
        with sqlite3.connect(tmp_path / "server.db") as db:
            db.execute("update resources set spec = 'not json' where name = 'etl/a-no-pool'")
        second = lost_worker()
        wait_for(lambda: crashed(second), 20, "the expired lease handled while scheduling fails")
        third = lost_worker()
        wait_for(lambda: crashed(third), 20, "a later round")
    said = [r.getMessage() for r in caplog.records if "a-no-pool" in r.getMessage()]
    assert said[0] == (
        "Scheduled runs of deployment etl/a-no-pool cannot be created: deployment 'etl/a-no-pool' has no work "
        "pool, so no worker could run it (set work_pool.name on the deployment in prefect.yaml and apply)"
    )
    assert said[-1].startswith("scheduling failed (the server tries again every round): error: the state store")
    assert len(said) == len(set(said)) <= 3  # each said once (the damage may first be met creating a run)
