"""The store contract over HTTP: HttpStore → real uvicorn on 127.0.0.1 → SqlStore on SQLite and on
PostgreSQL. Same tests as the file store, so the CLI and the worker behave the same over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from buildsys.store.http import HttpStore
from buildsys.store.sql import SqlStore
from tests.infra.postgres import PostgresServer, fresh_database
from tests.server.running import threaded_server
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
