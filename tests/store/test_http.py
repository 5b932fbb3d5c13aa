"""The store contract over HTTP: HttpStore → real uvicorn on 127.0.0.1 → SqlStore on SQLite and on
PostgreSQL. Same tests as the file store, so the CLI and the worker behave the same over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.responses import JSONResponse

from buildsys.errors import StateError
from buildsys.store.http import HttpStore
from buildsys.store.sql import SqlStore
from tests.server.running import threaded_server
from tests.services.net import free_port
from tests.services.postgres import PostgresServer, fresh_database
from tests.services.waiting import wait_for
from tests.store.contract import StoreContract


def served(stack: ExitStack, backend: SqlStore) -> HttpStore:
    """An HttpStore talking to a fresh uvicorn over `backend` (all closed by `stack`)."""
    stack.callback(backend.close)
    url = stack.enter_context(threaded_server(backend))
    return stack.enter_context(HttpStore(url, retries=0))


class TestHttpOnSqliteContract(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[HttpStore]:
        with ExitStack() as stack:
            yield served(stack, SqlStore.sqlite(tmp_path / "server.db"))

    @pytest.fixture
    def other_store(self, tmp_path: Path) -> Iterator[HttpStore]:
        with ExitStack() as stack:
            yield served(stack, SqlStore.sqlite(tmp_path / "other.db"))


@pytest.mark.postgres
class TestHttpOnPostgresContract(StoreContract):
    @pytest.fixture
    def store(self, fresh_postgres_url: str) -> Iterator[HttpStore]:
        with ExitStack() as stack:
            yield served(stack, SqlStore.postgres(fresh_postgres_url))

    @pytest.fixture
    def other_store(self, postgres_server: PostgresServer) -> Iterator[HttpStore]:
        for url in fresh_database(postgres_server):
            with ExitStack() as stack:
                yield served(stack, SqlStore.postgres(url))


# --- what only the HTTP client has: retries, and their limits ----------------------------------


class Flaky:
    """A real HTTP endpoint that fails `failures` times with 503, then answers like the server."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls.append(f"{scope['method']} {scope['path']}")
        ok = len(self.calls) > self.failures
        body = {"serial": 7} if ok else {"error": {"code": "unavailable", "message": "database restarting"}}
        response = JSONResponse(body, status_code=200 if ok else 503)
        await response(scope, receive, send)


@contextmanager
def flaky_server(app: Any) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 15, "the flaky server to listen")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def test_idempotent_calls_are_retried_on_5xx() -> None:
    app = Flaky(failures=2)
    with flaky_server(app) as url, HttpStore(url, retries=3) as store:
        assert store.serial() == 7
    assert app.calls == ["GET /api/v1/serial"] * 3


def test_calls_that_change_state_are_not_retried() -> None:
    app = Flaky(failures=1)
    with flaky_server(app) as url, HttpStore(url, retries=3) as store, pytest.raises(StateError) as info:
        store.apply([], expected_serial=None)
    assert app.calls == ["POST /api/v1/apply"]
    assert info.value.message == f"the buildsys server at {url} answered 503: database restarting"


def test_retries_give_up_with_the_last_answer() -> None:
    app = Flaky(failures=10)
    with flaky_server(app) as url, HttpStore(url, retries=2) as store, pytest.raises(StateError) as info:
        store.serial()
    assert len(app.calls) == 3
    assert info.value.message == f"the buildsys server at {url} answered 503: database restarting"


class Gathering:
    """A real HTTP endpoint that holds each request until `size` are in flight (at most 20 s),
    then answers them all like the server; it notes each request's client port."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ports: list[int] = []
        self.waiting = 0
        self.full: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import asyncio

        if scope["type"] != "http":
            return
        self.ports.append(scope["client"][1])
        if self.full is None:
            self.full = asyncio.Event()
        self.waiting += 1
        if self.waiting == self.size:
            self.waiting = 0
            self.full.set()
            self.full = None
        else:
            await asyncio.wait_for(self.full.wait(), 20)
        await JSONResponse({"serial": 7})(scope, receive, send)


def test_a_burst_from_many_threads_reuses_the_connections_of_the_last_one() -> None:
    """Two bursts of 30 concurrent calls from 30 threads on one HttpStore: the second is served on
    the first's 30 connections. A pool that keeps fewer alive than it opens closes connections
    under the threads it has just handed them to (httpcore 1.0; buildsys.httpclient.ONE_ORIGIN):
    with httpx's default limits (20 kept alive) the second burst opens new ones."""
    from concurrent.futures import ThreadPoolExecutor

    app = Gathering(30)
    with flaky_server(app) as url, HttpStore(url, retries=0) as store, ThreadPoolExecutor(30) as pool:
        for _ in range(2):
            assert list(pool.map(lambda _: store.serial(), range(30))) == [7] * 30
    assert len(app.ports) == 60
    assert len(set(app.ports)) == 30
