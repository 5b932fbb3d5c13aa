"""The store contract on PostgreSQL (a private cluster from tests/services/postgres.py), plus what only
PostgreSQL has: several connections racing for runs with row locks, and unreachable servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from buildsys.errors import StateError
from buildsys.store import open_store
from buildsys.store.migrations import LATEST
from buildsys.store.sql import SqlStore
from tests.services.net import free_port
from tests.services.postgres import PostgresServer, fresh_database
from tests.store.contract import StoreContract, create, deployment_spec, pool_spec

pytestmark = pytest.mark.postgres


class TestPostgresContract(StoreContract):
    @pytest.fixture
    def store(self, fresh_postgres_url: str) -> Iterator[SqlStore]:
        s = SqlStore.postgres(fresh_postgres_url)
        yield s
        s.close()

    @pytest.fixture
    def other_store(self, postgres_server: PostgresServer) -> Iterator[SqlStore]:
        for url in fresh_database(postgres_server):
            s = SqlStore.postgres(url)
            yield s
            s.close()


def test_open_store_by_url_migrates_once(fresh_postgres_url: str) -> None:
    first = open_store(fresh_postgres_url)
    second = open_store(fresh_postgres_url.replace("postgresql://", "postgres://", 1))
    try:
        assert isinstance(first, SqlStore) and isinstance(second, SqlStore)
        assert (first.dialect, first.schema_version, second.schema_version) == ("postgresql", LATEST, LATEST)
        first.apply([create("variable", "v", {"value": 1})], expected_serial=0)
        assert second.serial() == 1
        # the UI's "since the last apply": one resource's writes, found by LIKE with `_` escaped
        first.apply([create("variable", "axb", {"value": 2})], expected_serial=None)
        assert [(a.serial, c["name"], c["planned"]) for a, c in second.list_writes_of("variable", "v")] == [(1, "v", True)]
        assert [(a.serial, c["planned"]) for a, c in second.list_writes_of("variable", "axb")] == [(2, False)]
        assert second.list_writes_of("variable", "a_b") == []
    finally:
        first.close()
        second.close()


def test_concurrent_first_opens_create_the_schema_once(fresh_postgres_url: str) -> None:
    stores: list[SqlStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(SqlStore.postgres(fresh_postgres_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        assert [s.serial() for s in stores] == [0, 0, 0, 0]
    finally:
        for s in stores:
            s.close()


def test_an_unreachable_server_gets_a_clear_error() -> None:
    url = f"postgresql://someone:hunter2@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(StateError) as err:
        SqlStore.postgres(url)
    text = err.value.render()
    assert "hunter2" not in text
    assert text.startswith(
        f"error: cannot connect to the PostgreSQL store {url.replace('hunter2', '****')}: connection failed:"
    )
    assert text.endswith("  hint: check that the server runs and that the URL, user and password are right")


def test_a_wrong_password_gets_a_clear_error(postgres_server: PostgresServer) -> None:
    url = postgres_server.url().replace(postgres_server.password, "wrong-password")
    with pytest.raises(StateError) as err:
        SqlStore.postgres(url)
    assert "password authentication failed" in err.value.message
    assert "wrong-password" not in err.value.render()


def test_racing_connections_claim_each_run_exactly_once(fresh_postgres_url: str) -> None:
    """8 workers, each with its own connection, race for 2,000 runs (SELECT … FOR UPDATE SKIP LOCKED)."""
    total, workers = 2000, 8
    with SqlStore.postgres(fresh_postgres_url) as store:
        store.apply(
            [create("pool", "local", pool_spec()), create("deployment", "etl/nightly", deployment_spec())],
            expected_serial=0,
        )
        made = {store.create_run("etl/nightly", scheduled_at=0.0).id for _ in range(total)}
    results: dict[str, list[str]] = {}
    go = threading.Event()

    def work(name: str) -> None:
        got: list[str] = []
        with SqlStore.postgres(fresh_postgres_url) as mine:
            go.wait(30)
            empty = 0
            while empty < 3:
                batch = mine.claim_runs("local", name, limit=5)
                got.extend(r.id for r in batch)
                empty = 0 if batch else empty + 1
        results[name] = got

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(workers)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(120)
    claimed = [run_id for got in results.values() for run_id in got]
    assert len(results) == workers
    assert len(claimed) == total
    assert set(claimed) == made


@pytest.mark.parametrize(
    ("pool_extra", "deployment_extra", "cap"),
    [({"concurrency_limit": 3}, {}, 3), ({}, {"concurrency_limit": 2}, 2)],
    ids=["pool-limit", "deployment-limit"],
)
def test_racing_connections_respect_concurrency_limits(
    fresh_postgres_url: str, pool_extra: dict[str, int], deployment_extra: dict[str, int], cap: int
) -> None:
    with SqlStore.postgres(fresh_postgres_url) as store:
        store.apply(
            [
                create("pool", "local", pool_spec(**pool_extra)),
                create("deployment", "etl/nightly", deployment_spec(**deployment_extra)),
            ],
            expected_serial=0,
        )
        for _ in range(40):
            store.create_run("etl/nightly", scheduled_at=0.0)
    claimed: list[str] = []
    lock = threading.Lock()
    go = threading.Event()

    def work(name: str) -> None:
        with SqlStore.postgres(fresh_postgres_url) as mine:
            go.wait(30)
            for _ in range(5):
                batch = mine.claim_runs("local", name, limit=5)
                with lock:
                    claimed.extend(r.id for r in batch)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(60)
    assert len(claimed) == cap
    with SqlStore.postgres(fresh_postgres_url) as store:
        assert len(store.list_runs(states=["PENDING"])) == cap


def test_racing_creates_with_one_idempotency_key_make_one_run(fresh_postgres_url: str) -> None:
    with SqlStore.postgres(fresh_postgres_url) as store:
        store.apply(
            [create("pool", "local", pool_spec()), create("deployment", "etl/nightly", deployment_spec())],
            expected_serial=0,
        )
    ids: list[str] = []
    errors: list[BaseException] = []
    go = threading.Event()

    def make() -> None:
        with SqlStore.postgres(fresh_postgres_url) as mine:
            go.wait(30)
            try:
                ids.append(mine.create_run("etl/nightly", idempotency_key="once").id)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(ids) == 8 and len(set(ids)) == 1
    with SqlStore.postgres(fresh_postgres_url) as store:
        assert [r.id for r in store.list_runs()] == ids[:1]


def test_a_connection_the_server_dropped_is_replaced(fresh_postgres_url: str, postgres_server: PostgresServer) -> None:
    import psycopg

    with SqlStore.postgres(fresh_postgres_url) as store:
        store.apply([create("variable", "v", {"value": 1})], expected_serial=0)
        database = fresh_postgres_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_server.url("postgres"), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchall()
        assert killed == [(True,)]
        assert store.serial() == 1
        assert store.apply([create("variable", "w", {"value": 2})], expected_serial=1) == 2


def test_a_waiting_claim_wakes_on_a_run_created_elsewhere(fresh_postgres_url: str) -> None:
    """LISTEN/NOTIFY: another store object (another connection, as another process would) creates
    the run; the waiting claim gets it at once, and closing the store stops its listener."""
    import time

    waiting = SqlStore.postgres(fresh_postgres_url)
    creator = SqlStore.postgres(fresh_postgres_url)
    try:
        creator.apply(
            [create("pool", "local", pool_spec()), create("deployment", "etl/nightly", deployment_spec())],
            expected_serial=0,
        )
        got: list[tuple[list[str], float]] = []
        claimer = threading.Thread(
            target=lambda: got.append(([r.id for r in waiting.claim_runs("local", "w1", wait=20)], time.time()))
        )
        claimer.start()
        run = creator.create_run("etl/nightly")
        claimer.join(30)
        assert [ids for ids, _ in got] == [[run.id]]
        assert got[0][1] - run.created_at < 5.0  # woke for it, long before the 20 s deadline
        listener = waiting._db._listen  # type: ignore[attr-defined]
        assert listener is not None and listener.healthy
    finally:
        waiting.close()
        creator.close()
    assert not listener._thread.is_alive()


def test_a_listing_of_some_deployments(fresh_postgres_url: str) -> None:
    """`list_resources(deployments=…)` on PostgreSQL: every pool and only the named deployments, in
    the whole listing's order (the names as query parameters)."""
    with SqlStore.postgres(fresh_postgres_url) as store:
        store.apply([create("pool", "local", pool_spec())]
                     + [create("deployment", f"etl/{n}", deployment_spec(n)) for n in ("a", "b", "c")], expected_serial=0)
        some = store.list_resources(deployments=["etl/c", "etl/a", "etl/gone"])
        assert [(r.kind, r.name) for r in some] == [("deployment", "etl/a"), ("deployment", "etl/c"), ("pool", "local")]
        assert some == [r for r in store.list_resources() if r.name != "etl/b"]
