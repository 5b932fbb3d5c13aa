"""A waiting claim on PostgreSQL costs one claim per long-poll, not one per poll interval: it is
woken by the store's NOTIFY count (another process created a run) or by this process, and picks a
run up as soon as one is created anywhere. (An idle worker fleet used to cost every server one
claim transaction per waiting worker every 0.1 s: tests/bench/README.md, "Server at scale".)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from buildsys.store.sql import SqlStore
from tests.server.running import threaded_server

pytestmark = pytest.mark.postgres

POOL = "p"


class CountingStore(SqlStore):
    """The server's store, counting the claim transactions it runs."""

    claims = 0

    def claim_runs(self, *args: Any, **kwargs: Any) -> Any:
        type(self).claims += 1
        return super().claim_runs(*args, **kwargs)


@pytest.fixture
def stores(fresh_postgres_url: str) -> Iterator[tuple[CountingStore, SqlStore]]:
    from buildsys.store.base import Change

    server_store = CountingStore.postgres(fresh_postgres_url)
    other = SqlStore.postgres(fresh_postgres_url)  # another process's connection: no in-process wake-up
    other.apply(
        [
            Change("create", "pool", POOL, {"type": "process"}),
            Change("create", "deployment", "f/d", {"flow_name": "f", "name": "d", "work_pool_name": POOL}),
        ],
        expected_serial=None,
    )
    yield server_store, other  # type: ignore[misc]
    other.close()
    server_store.close()


def test_an_idle_long_poll_claims_once_and_wakes_for_a_run_made_elsewhere(stores: tuple[CountingStore, SqlStore]) -> None:
    import httpx

    server_store, other = stores
    CountingStore.claims = 0
    with threaded_server(server_store) as url, httpx.Client(base_url=url, timeout=30) as client:
        body = {"pool": POOL, "worker": "w", "limit": 1, "wait": 1.5}
        started = time.monotonic()
        idle = client.post("/api/v1/runs/claim", json=body)
        assert idle.status_code == 200 and idle.json()["runs"] == []
        assert time.monotonic() - started >= 1.4  # it did wait
        assert CountingStore.claims == 1  # ... without claiming every 0.1 s meanwhile

        made: list[str] = []
        timer = threading.Timer(0.5, lambda: made.append(other.create_run("f/d").id))
        timer.start()
        try:
            got = client.post("/api/v1/runs/claim", json={**body, "wait": 20}).json()["runs"]
        finally:
            timer.join()
        assert [r["id"] for r in got] == made  # woken by the other connection's NOTIFY, long before 20 s
        assert CountingStore.claims <= 4
