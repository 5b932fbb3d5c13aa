"""A damaged state file gives one clear error naming what is wrong and what to do, never a
traceback; an empty file is never silently taken as a new store."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from buildsys.errors import StateError
from buildsys.store import open_store
from buildsys.store.base import Change
from buildsys.store.sql import SqlStore
from tests.store.contract import SOURCE, deployment_spec, pool_spec


def test_an_empty_file_is_not_a_new_store(tmp_path: Path) -> None:
    empty = tmp_path / "state.db"
    empty.write_bytes(b"")
    with pytest.raises(StateError) as err:
        open_store("state.db", root=tmp_path)
    assert err.value.message == f"the state store {empty} is an empty file, not a buildsys store (was it truncated?)"
    assert empty.stat().st_size == 0


@pytest.mark.parametrize("spec", ["not json", "[1,2]", "null", '{"a": '])
def test_a_damaged_spec_is_a_clear_error(tmp_path: Path, spec: str) -> None:
    path = tmp_path / "state.db"
    with SqlStore.sqlite(path) as store:
        store.apply([Change("create", "variable", "region", {"value": "eu"}, owner="p")], expected_serial=0)
    with sqlite3.connect(path) as db:
        db.execute("update resources set spec = ? where name = 'region'", (spec,))
    with SqlStore.sqlite(path) as store, pytest.raises(StateError) as err:
        store.list_resources("variable")
    assert err.value.message == (
        f"the state store {path} is damaged: the spec of variable 'region' (table resources) is {spec!r}, "
        "not a JSON object"
    )
    assert "buildsys state export" in (err.value.hint or "")


@pytest.mark.parametrize(
    ("table", "column", "value", "call", "expected"),
    [
        ("flow_runs", "parameters", "not json", lambda s, _run: s.list_runs(),
         "the parameters of flow run {run} (table flow_runs) is 'not json', not a JSON object"),
        ("flow_runs", "tags", '{"a": 1}', lambda s, run: s.get_run(run),
         "the tags of flow run {run} (table flow_runs) is '{{\"a\": 1}}', not a JSON list"),
        ("resources", "source", "\x00", lambda s, _run: s.get_resource("deployment", "etl/nightly"),
         "the source of deployment 'etl/nightly' (table resources) is '\\x00', not a JSON object"),
        ("resources", "spec", "[]", lambda s, _run: s.create_run("etl/nightly"),
         "the spec of deployment 'etl/nightly' (table resources) is '[]', not a JSON object"),
        ("resources", "spec", "nul", lambda s, _run: s.claim_runs("local", "w"),
         "the spec of pool 'local' (table resources) is 'nul', not a JSON object"),
        ("resources", "spec", "x", lambda s, _run: s.apply([Change("update", "pool", "local", pool_spec(), "p")],
                                                           expected_serial=None),
         "the spec of pool 'local' (table resources) is 'x', not a JSON object"),
    ],
    ids=["run-parameters", "run-tags", "source", "spec-when-creating-a-run", "pool-spec-when-claiming",
         "spec-when-updating"],
)
def test_every_damaged_record_names_the_store_and_the_row(
    tmp_path: Path, table: str, column: str, value: str, call: Any, expected: str
) -> None:
    path = tmp_path / "state.db"
    with SqlStore.sqlite(path) as store:
        store.apply([Change("create", "pool", "local", pool_spec(), "p", SOURCE),
                     Change("create", "deployment", "etl/nightly", deployment_spec(), "p", SOURCE)], expected_serial=0)
        run = store.create_run("etl/nightly")
    where = "id = ?" if table == "flow_runs" else "name = ?"
    name = run.id if table == "flow_runs" else ("local" if "pool" in expected else "etl/nightly")
    with sqlite3.connect(path) as db:
        db.execute(f"update {table} set {column} = ? where {where}", (value, name))
    with SqlStore.sqlite(path) as store, pytest.raises(StateError) as err:
        call(store, run.id)
    assert err.value.message == f"the state store {path} is damaged: " + expected.format(run=run.id)
    assert err.value.hint and "buildsys state import" in err.value.hint


def test_the_cli_says_which_store_and_row_is_damaged(isolated: Path) -> None:
    import subprocess
    import sys

    path = isolated / ".buildsys" / "state.db"
    with SqlStore.sqlite(path) as store:
        store.apply([Change("create", "pool", "local", pool_spec(), "p", SOURCE),
                     Change("create", "deployment", "etl/nightly", deployment_spec(), "p", SOURCE)], expected_serial=0)
        run = store.create_run("etl/nightly")
    with sqlite3.connect(path) as db:
        db.execute("update flow_runs set job_variables = '{' where id = ?", (run.id,))
    result = subprocess.run([sys.executable, "-m", "buildsys", "runs", "ls"], cwd=isolated, capture_output=True,
                            text=True, timeout=120)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: the state store {path} is damaged: the job_variables of flow run {run.id} (table flow_runs) is "
        "'{', not a JSON object\n  hint: restore the store from a `buildsys state export` file (`buildsys state "
        "import`), or move the store away and apply again to start afresh\n"
    )


def test_a_new_store_file_appears_whole(tmp_path: Path) -> None:
    """SQLite creates an empty file first; another process opening the store then (two applies at
    once on a new project) took it for a truncated store. The file now appears with its header."""
    from buildsys.store.dialect import SqliteDatabase

    path = tmp_path / "new" / "state.db"
    SqliteDatabase(path)  # no connection yet
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.db"]  # no temporary file left
    with open_store(str(path), root=tmp_path) as store:
        assert store.serial() == 0


def test_flipped_bytes_are_a_clear_error_never_a_crash(tmp_path: Path) -> None:
    """Random byte flips in a real store file: each read either works or is a StateError naming the
    store (before: 'Could not decode to UTF-8', a UnicodeDecodeError from the header and a migration's
    'table … already exists' were tracebacks, 4 of 40 files here)."""
    import random

    good = tmp_path / "good.db"
    with SqlStore.sqlite(good) as store:
        store.apply([Change("create", "pool", "local", pool_spec(), "p", SOURCE),
                     Change("create", "deployment", "etl/nightly", deployment_spec(), "p", SOURCE)], expected_serial=0)
        store.create_run("etl/nightly")
    with sqlite3.connect(good) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    original = good.read_bytes()
    rng = random.Random(7)
    errors = 0
    for n in range(40):
        damaged = bytearray(original)
        for _ in range(20):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path = tmp_path / f"s{n}.db"
        path.write_bytes(bytes(damaged))
        try:
            with SqlStore.sqlite(path) as store:
                store.list_resources()
                store.list_runs()
        except StateError as exc:
            assert str(path) in exc.message, exc.message
            errors += 1
    assert errors > 0
    # the three kinds seen, made on purpose
    with sqlite3.connect(good) as db:
        db.execute("update resources set spec = cast(x'7bff7d' as text) where name = 'local'")
    with SqlStore.sqlite(good) as store, pytest.raises(StateError, match=r"is damaged: a text column holds bytes that are not UTF-8 \(column 'spec'\)"):
        store.list_resources("pool")
    with sqlite3.connect(good) as db:
        db.execute("delete from schema_migrations")
    with pytest.raises(StateError, match=r"is damaged: its record of schema migrations says version 0, but migration 1 "):
        SqlStore.sqlite(good).close()
