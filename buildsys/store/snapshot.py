"""Export and import of a whole SQL store as one JSON document (schemas/state/export.json).

Export reads one consistent snapshot; import checks the document against the schema, then replaces
everything in one transaction. The serial never goes backwards: after an import it is at least one
more than before, so a plan made against the old contents is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from buildsys.errors import StateError
from buildsys.store import sqlengine, sqlhistory
from buildsys.store.base import FlowRun, LogLine
from buildsys.store.base import Resource as StoredResource
from buildsys.store.dialect import Database, Tx, marks
from buildsys.store.rows import (
    LOG_COLUMNS,
    RESOURCE_COLUMNS,
    RUN_COLUMNS,
    RUN_FIELDS,
    dump,
    indexed_columns,
    log_from_row,
    resource_from_row,
    run_from_row,
    run_to_row,
)

EXPORT_VERSION = 1


def export_store(db: Database) -> dict[str, Any]:
    with db.tx() as tx:
        if db.name == "postgresql":
            tx.run("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        serial = tx.one("SELECT serial FROM store_serial WHERE id = 1")
        resources = tx.run(f"SELECT {RESOURCE_COLUMNS} FROM resources ORDER BY kind, name")
        runs = tx.run(f"SELECT {RUN_COLUMNS} FROM flow_runs ORDER BY created_at, id")
        logs = tx.run(f"SELECT {LOG_COLUMNS} FROM logs ORDER BY run_id, seq")
        workers = tx.run("SELECT pool, name, last_heartbeat, type FROM workers ORDER BY pool, name")
        engine = sqlengine.export_rows(tx)
        states = sqlhistory.export_rows(tx)
    return {
        "version": EXPORT_VERSION,
        "serial": int(serial[0]) if serial else 0,
        "resources": [resource_from_row(r).to_dict() for r in resources],
        "runs": [_run_dict(run_from_row(r)) for r in runs],
        "logs": [log_from_row(r).to_dict() for r in logs],
        "run_states": states,
        "workers": [{"pool": p, "name": n, "last_heartbeat": float(h), "type": t} for p, n, h, t in workers],
        **engine,
    }


def _run_dict(run: FlowRun) -> dict[str, Any]:
    data = run.to_dict()
    data["tags"] = list(run.tags)
    return data


def import_store(db: Database, data: Mapping[str, Any]) -> None:
    check_document(data)
    resources = [StoredResource.from_dict(r) for r in data["resources"]]
    runs = [FlowRun.from_dict(r) for r in data["runs"]]
    logs = [LogLine.from_dict(line) for line in data.get("logs", [])]
    _check_references(runs, logs)
    with db.tx(write=True) as tx:
        row = tx.one(f"SELECT serial FROM store_serial WHERE id = 1{tx.for_update()}")
        current = int(row[0]) if row else 0
        for table in ("logs", "flow_run_states", "flow_runs", "applies", "resources", "workers", *sqlengine.EXPORTED_TABLES):
            tx.run(f"DELETE FROM {table}")
        _insert(tx, resources, runs, logs, data.get("workers", []))
        sqlhistory.import_rows(tx, data.get("run_states", []), {r.id for r in runs})
        sqlengine.import_rows(tx, data)
        tx.run("UPDATE store_serial SET serial = ? WHERE id = 1", (max(current + 1, int(data["serial"])),))
        db.notify(tx)


def _insert(
    tx: Tx, resources: list[StoredResource], runs: list[FlowRun], logs: list[LogLine], workers: list[Any]
) -> None:
    tx.many(
        "INSERT INTO resources (kind, name, id, spec, owner, source, created_at, updated_at, serial, pool, "
        "concurrency_limit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                r.kind,
                r.name,
                r.id or _new_id(),
                dump(dict(r.spec)),
                r.owner,
                None if r.source is None else dump(dict(r.source)),
                r.created_at,
                r.updated_at,
                r.serial,
                *indexed_columns(r.kind, r.spec),
            )
            for r in resources
        ],
    )
    last_seq: dict[str, int] = {}
    for line in logs:
        last_seq[line.run_id] = max(last_seq.get(line.run_id, 0), line.seq)
    tx.many(
        f"INSERT INTO flow_runs ({RUN_COLUMNS}, log_seq) VALUES ({marks(RUN_FIELDS)}, ?)",
        [(*run_to_row(r), last_seq.get(r.id, 0)) for r in runs],
    )
    tx.many(
        f"INSERT INTO logs ({LOG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(x.run_id, x.seq, x.ts, x.message, x.stream, x.level, x.logger, x.task_run_id) for x in logs],
    )
    tx.many(
        "INSERT INTO workers (pool, name, last_heartbeat, type) VALUES (?, ?, ?, ?)",
        [(w["pool"], w["name"], w["last_heartbeat"], w.get("type")) for w in workers],
    )


def _check_references(runs: list[FlowRun], logs: list[LogLine]) -> None:
    ids = {r.id for r in runs}
    if len(ids) != len(runs):
        raise StateError("the import has two flow runs with the same id")
    for line in logs:
        if line.run_id not in ids:
            raise StateError(f"the import has log lines for flow run {line.run_id!r}, which it does not contain")


def check_document(data: object) -> None:
    """Raise StateError naming the first problem when `data` is not a valid export document."""
    errors = sorted(validator("export").iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise StateError(
            f"not a buildsys state export: at {where}: {first.message}",
            hint="make one with `buildsys state export`",
        )
    seen: set[tuple[str, str]] = set()
    ids: set[str] = set()
    for res in data["resources"]:  # type: ignore[index]
        key = (res["kind"], res["name"])
        if key in seen:
            raise StateError(f"the import has {key[0]} {key[1]!r} twice")
        if res.get("id") and res["id"] in ids:
            raise StateError(f"the import has two resources with the id {res['id']!r}")
        seen.add(key)
        ids.add(res.get("id", ""))


SCHEMA_NAMES = ("resource", "change", "flow_run", "log_line", "worker", "export")


@cache
def schema(name: str) -> dict[str, Any]:
    """A JSON Schema of schemas/state/ by name (from the installed package or the source tree)."""
    try:
        from importlib.resources import files

        text = files("buildsys.schemas").joinpath("state", f"{name}.json").read_text()
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        text = (Path(__file__).resolve().parents[2] / "schemas" / "state" / f"{name}.json").read_text()
    value: dict[str, Any] = json.loads(text)
    return value


@cache
def validator(name: str) -> Any:
    """A validator for one state schema that resolves references to the others."""
    import jsonschema
    from referencing import Registry, Resource

    registry: Registry[Any] = Registry().with_resources(
        (schema(n)["$id"], Resource.from_contents(schema(n))) for n in SCHEMA_NAMES
    )
    return jsonschema.Draft202012Validator(schema(name), registry=registry)


def _new_id() -> str:
    import uuid  # on first use: with `platform` ~1.5 ms of every plan's start

    return str(uuid.uuid4())
