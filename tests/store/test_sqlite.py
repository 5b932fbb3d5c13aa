"""The store contract on a SQLite file, plus what only the file store has: the file itself (WAL,
migrations, corrupt or foreign files) and several processes sharing it."""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsys.errors import ConflictError, StateError
from buildsys.store import open_store
from buildsys.store.base import Change
from buildsys.store.migrations import LATEST, MIGRATIONS
from buildsys.store.sql import SqlStore
from tests.store.contract import StoreContract, create, deployment_spec, pool_spec, seed


class TestSqliteContract(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqlStore]:
        s = SqlStore.sqlite(tmp_path / "state.db")
        yield s
        s.close()

    @pytest.fixture
    def other_store(self, tmp_path: Path) -> Iterator[SqlStore]:
        s = SqlStore.sqlite(tmp_path / "other.db")
        yield s
        s.close()


def test_open_store_makes_the_file_and_its_directories(tmp_path: Path) -> None:
    store = open_store(".buildsys/deep/state.db", root=tmp_path)
    try:
        assert isinstance(store, SqlStore)
        assert store.url == f"sqlite:///{tmp_path / '.buildsys/deep/state.db'}"
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / ".buildsys/deep/state.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall() == [
            (1, "initial schema: serial, resources, flow runs, logs, workers"),
            (2, "claim indexes: due runs in scheduled order, per pool and per queue"),
            (3, "what Prefect's engine records: task runs, artifacts, concurrency leases, flows, log levels"),
            (4, "listing indexes: the newest runs of a state, of a pool in a state, of a deployment (the UI's run lists)"),
            (5, MIGRATIONS[4].name),
            (6, "flow-run state history: every state a run entered, in order (runs show, the UI's timeline)"),
            (7, "apply history: what each apply wrote, specs before and after (the UI's plans on a server)"),
        ]
        assert db.execute("SELECT id, serial FROM store_serial").fetchall() == [(1, 0)]
    finally:
        db.close()


def test_sqlite_url_form(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    store.close()
    assert (tmp_path / "s.db").is_file()


def test_reopening_keeps_the_data_and_applies_no_migration_twice(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqlStore.sqlite(path) as store:
        store.apply([create("variable", "v", {"value": 1})], expected_serial=0)
    with SqlStore.sqlite(path) as store:
        assert store.serial() == 1
        assert store.schema_version == LATEST
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone() == (LATEST,)
    db.close()


def test_an_older_store_is_migrated_in_place(tmp_path: Path) -> None:
    """A store made by the first release (migration 1 only) opens, keeps its data, gains migration 2."""
    path = tmp_path / "state.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
    for statement in MIGRATIONS[0].statements:
        db.execute(statement)
    db.execute("INSERT INTO schema_migrations VALUES (1, ?, 0)", (MIGRATIONS[0].name,))
    db.execute(
        "INSERT INTO resources (kind, name, id, spec, owner, source, created_at, updated_at, serial) "
        "VALUES ('variable', 'kept', 'id-1', '{\"value\": 1}', NULL, NULL, 1.0, 1.0, 1)"
    )
    db.execute("UPDATE store_serial SET serial = 1")
    db.close()
    with SqlStore.sqlite(path) as store:
        assert store.schema_version == LATEST == 7
        kept = store.get_resource("variable", "kept")
        assert kept is not None and (dict(kept.spec), kept.id, store.serial()) == ({"value": 1}, "id-1", 1)
    db = sqlite3.connect(path)
    indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'flow_runs_%'")}
    db.close()
    assert {"flow_runs_due", "flow_runs_queue_due", "flow_runs_state_created", "flow_runs_pool_state_created"} <= indexes


def test_a_store_from_a_newer_buildsys_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqlStore.sqlite(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    db.commit()
    db.close()
    with pytest.raises(StateError) as err:
        SqlStore.sqlite(path)
    assert err.value.render() == (
        f"error: the state store {path} has schema version 99, newer than this buildsys understands ({LATEST})\n"
        "  hint: upgrade buildsys to use this store"
    )


def test_a_corrupt_file_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database at all, just some text " * 40)
    with pytest.raises(StateError) as err:
        SqlStore.sqlite(path)
    assert err.value.render() == (
        f"error: the state store {path} is not a readable buildsys store: file is not a database\n"
        "  hint: restore it from a `buildsys state export`, or move it away to start afresh"
    )


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(StateError) as err:
        SqlStore.sqlite(path)
    assert err.value.message == f"{path} is a database but not a buildsys state store (it has other tables: users)"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="is a directory, not a file"):
        SqlStore.sqlite(tmp_path)


def test_values_that_are_not_json_are_refused(tmp_path: Path) -> None:
    with SqlStore.sqlite(tmp_path / "state.db") as store:
        seed(store, nightly={})
        with pytest.raises(StateError) as err:
            store.apply([create("variable", "v", {"value": float("nan")})], expected_serial=1)
        assert err.value.message == (
            "the spec of variable 'v' cannot be stored: it is not plain JSON "
            "(Out of range float values are not JSON compliant)"
        )
        with pytest.raises(StateError, match="the run's parameters cannot be stored: it is not plain JSON"):
            store.create_run("etl/nightly", parameters={"when": {1, 2}})
        assert (store.serial(), store.get_resource("variable", "v"), store.list_runs()) == (1, None, [])


def test_bulk_apply_and_list_take_one_transaction_and_a_few_queries(tmp_path: Path) -> None:
    """What makes a bulk apply or a listing slow (a transaction per row, a query per row) is
    counted here, not timed: a bound on seconds fails on a loaded machine. Figures live in the
    bench README."""
    with SqlStore.sqlite(tmp_path / "state.db") as store:
        statements: list[str] = []
        store._db.connection().set_trace_callback(statements.append)  # this thread's connection
        changes = [create("pool", "local", pool_spec())]
        changes += [create("deployment", f"etl/d{i}", deployment_spec(f"d{i}")) for i in range(1000)]
        store.apply(changes, expected_serial=0)
        assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
        more = [create("deployment", f"etl/e{i}", deployment_spec(f"e{i}")) for i in range(9000)]
        store.apply(more, expected_serial=1)
        statements.clear()
        listed = store.list_resources("deployment")
        assert len(listed) == 10_000
        assert len(statements) <= 5, statements


# --- several processes on one file -----------------------------------------------------------


def _bump_counter(path: str, times: int) -> int:
    """Increment variable `counter` `times` times with read-modify-apply; returns conflicts seen."""
    conflicts = 0
    with SqlStore.sqlite(path) as store:
        done = 0
        while done < times:
            serial = store.serial()
            current = store.get_resource("variable", "counter")
            assert current is not None
            try:
                store.apply(
                    [Change("update", "variable", "counter", {"value": current.spec["value"] + 1})],
                    expected_serial=serial,
                )
                done += 1
            except ConflictError:
                conflicts += 1
    return conflicts


def test_concurrent_applies_from_processes_never_lose_an_update(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqlStore.sqlite(path) as store:
        store.apply([create("variable", "counter", {"value": 0})], expected_serial=0)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.starmap(_bump_counter, [(str(path), 25)] * 4)
    with SqlStore.sqlite(path) as store:
        counter = store.get_resource("variable", "counter")
        assert counter is not None and counter.spec["value"] == 100
        assert store.serial() == 101


def _claim_all(path: str, worker: str, ready: object, go: object, first: object) -> list[str]:
    got: list[str] = []
    with SqlStore.sqlite(path) as store:
        ready.set()  # type: ignore[attr-defined]
        go.wait(30)  # type: ignore[attr-defined]
        got.extend(r.id for r in store.claim_runs("local", worker, limit=5))
        # every process holds a first batch before any claims on: on a slow machine one process
        # could otherwise drain all the runs before the others start, and nothing would race
        first.wait(30)  # type: ignore[attr-defined]
        empty = 0
        while empty < 3:
            batch = store.claim_runs("local", worker, limit=5)
            got.extend(r.id for r in batch)
            empty = 0 if batch else empty + 1
    return got


def test_racing_processes_claim_each_run_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    total, processes = 2000, 8
    with SqlStore.sqlite(path) as store:
        store.apply(
            [create("pool", "local", pool_spec()), create("deployment", "etl/nightly", deployment_spec())],
            expected_serial=0,
        )
        made = {store.create_run("etl/nightly", scheduled_at=0.0).id for _ in range(total)}
    ctx = multiprocessing.get_context("fork")
    manager = ctx.Manager()
    try:
        readies = [manager.Event() for _ in range(processes)]
        go = manager.Event()
        first = manager.Barrier(processes)
        with ctx.Pool(processes) as pool:
            pending = pool.starmap_async(
                _claim_all, [(str(path), f"w{i}", readies[i], go, first) for i in range(processes)]
            )
            for ready in readies:
                assert ready.wait(30)
            go.set()
            results = pending.get(60)
    finally:
        manager.shutdown()
    claimed = [run_id for got in results for run_id in got]
    assert len(claimed) == total
    assert set(claimed) == made
    assert all(results)  # every process claimed, and after the first batches they raced for the rest
    with SqlStore.sqlite(path) as store:
        assert store.list_runs(states=["SCHEDULED"]) == []


def _open_new_store(path: str, ready: object, go: object) -> int:
    ready.set()  # type: ignore[attr-defined]
    go.wait(30)  # type: ignore[attr-defined]
    with SqlStore.sqlite(path) as store:
        return store.serial()


def test_processes_opening_a_new_store_together_all_get_it(tmp_path: Path) -> None:
    """SQLite refuses a switch to WAL at once ("database is locked", no busy wait) while another
    connection is switching the same new file: two `apply`s on a fresh checkout hit this. Each
    round starts 4 processes on one new file at the same moment; every open must succeed."""
    ctx = multiprocessing.get_context("fork")
    manager = ctx.Manager()
    try:
        with ctx.Pool(4) as pool:
            for round_ in range(15):
                path = str(tmp_path / f"state-{round_}.db")
                readies = [manager.Event() for _ in range(4)]
                go = manager.Event()
                pending = pool.starmap_async(_open_new_store, [(path, readies[i], go) for i in range(4)])
                for ready in readies:
                    assert ready.wait(30)
                go.set()
                assert pending.get(60) == [0, 0, 0, 0]
    finally:
        manager.shutdown()


def test_readers_are_not_blocked_and_writers_wait_for_the_lock(tmp_path: Path) -> None:
    """WAL: while another process holds the write lock, reads answer at once and an apply waits."""
    import threading

    path = tmp_path / "state.db"
    with SqlStore.sqlite(path) as store:
        store.apply([create("variable", "a", {"value": 1})], expected_serial=0)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("UPDATE store_serial SET serial = serial")
        try:
            assert (store.serial(), [r.name for r in store.list_resources()]) == (1, ["a"])
            results: list[int] = []
            writer = threading.Thread(
                target=lambda: results.append(store.apply([create("variable", "b", {"value": 2})], expected_serial=1))
            )
            writer.start()
            writer.join(0.3)
            assert writer.is_alive() and results == []  # waiting for the lock, not failing
        finally:
            holder.execute("COMMIT")
            holder.close()
        writer.join(10)
        assert results == [2]


def test_a_lock_held_past_the_busy_timeout_is_a_clear_conflict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buildsys.store import dialect

    path = tmp_path / "state.db"
    SqlStore.sqlite(path).close()
    monkeypatch.setattr(dialect, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with SqlStore.sqlite(path) as store, pytest.raises(ConflictError) as err:
            store.apply([create("variable", "a", {"value": 1})], expected_serial=0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert err.value.render() == (
        f"error: the state store {path} stayed locked by another process for more than 0.2 s\n"
        "  hint: another apply, worker or import holds it; try again"
    )


def test_a_claim_reads_the_limited_deployments_through_their_own_index(tmp_path: Path) -> None:
    """Every claim asks for the pool's deployments with a concurrency limit; that must not walk
    every deployment of the pool (100,000 deployments made claims several times slower)."""
    from buildsys.store.sqlclaims import DEPLOYMENT_LIMITS_SQL

    path = tmp_path / "state.db"
    SqlStore.sqlite(path).close()
    db = sqlite3.connect(path)
    plan = " ".join(str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN {DEPLOYMENT_LIMITS_SQL}", ("pool",)))
    db.close()
    assert "USING INDEX resources_pool_limited" in plan, plan


def test_reading_a_store_imports_neither_uuid_nor_secrets(tmp_path: Path) -> None:
    """uuid (with platform) and secrets (with random, base64) are imported when an id or a name is
    made (or the file created), not when a store is opened and read: ~3 ms of every plan's start."""
    import subprocess
    import sys

    with SqlStore.sqlite(tmp_path / "state.db") as made:
        seed(made, nightly={})

    code = (
        "import sys\nfrom buildsys.store.sql import SqlStore\n"
        f"s = SqlStore.sqlite({str(tmp_path / 'state.db')!r})\ns.list_resources(); s.serial(); s.close()\n"
        "print(sorted(m for m in ('uuid', 'platform', 'secrets', 'random') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_a_flows_id_is_a_uuid5_in_its_namespace() -> None:
    import uuid

    from buildsys.store.sqlengine import flow_id

    assert flow_id("etl") == str(uuid.uuid5(uuid.UUID("6b1f4a52-5c1e-4a8e-9b7e-2f0c6d1e9a10"), "etl"))
