"""A damaged state file gives one clear error naming what is wrong and what to do, never a
traceback; an empty file is never silently taken as a new store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from buildsys.errors import StateError
from buildsys.store import open_store
from buildsys.store.base import Change
from buildsys.store.sql import SqlStore


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
        f"the state store is damaged: the spec of variable 'region' is {spec!r}, not a JSON object"
    )
    assert "buildsys state export" in (err.value.hint or "")
