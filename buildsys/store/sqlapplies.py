"""What each apply wrote, kept by the SQL store in the apply's own transaction: every change with
the spec before and after, so the UI of `buildsys server` (which has no project) can show the last
plans as `plan` printed them. The newest KEEP applies are kept; an apply of more than
MAX_SPECS changes keeps only what it did to which resource, not the specs."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from buildsys.store.base import AppliedChanges, Change
from buildsys.store.dialect import Database, Tx
from buildsys.store.rows import read_json

KEEP = 200
MAX_SPECS = 500


def before(tx: Tx, changes: Sequence[Change]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """The stored specs of the resources the changes update or delete (read before the writes)."""
    touched = [c for c in changes if c.action != "create"]
    if len(changes) > MAX_SPECS or not touched:
        return {}
    found: dict[tuple[str, str], Mapping[str, Any]] = {}
    for start in range(0, len(touched), 500):
        chunk = touched[start : start + 500]
        marks = " OR ".join("(kind = ? AND name = ?)" for _ in chunk)
        rows = tx.run(f"SELECT kind, name, spec FROM resources WHERE {marks}", [v for c in chunk for v in (c.kind, c.name)])
        found.update({(str(k), str(n)): read_json(s, f"the spec of {k} {n!r}", "resources", dict) for k, n, s in rows})
    return found


def record(
    tx: Tx,
    serial: int,
    moment: float,
    changes: Sequence[Change],
    old: Mapping[tuple[str, str], Mapping[str, Any]],
    *,
    planned: bool,
) -> None:
    """`planned`: the apply was made against the serial a plan was made at (`buildsys apply`,
    `deploy`, an API client sending `expected_serial`), not a single edit (a pause, a variable);
    a change whose source says `edited` (a pool edited in the UI) is an edit too."""
    with_specs = len(changes) <= MAX_SPECS
    items = []
    for c in changes:
        item: dict[str, Any] = {"action": c.action, "kind": c.kind, "name": c.name, "owner": c.owner,
                                "source": dict(c.source) if c.source is not None else None,
                                "planned": planned and not (c.source or {}).get("edited")}
        if with_specs:
            item["before"] = dict(old[(c.kind, c.name)]) if (c.kind, c.name) in old else None
            item["after"] = dict(c.spec) if c.spec is not None and c.action != "delete" else None
        items.append(item)
    # keys in the order the plan gave them (not sorted, as `dump` does), so fields read as `plan` listed them
    text = json.dumps(items, separators=(",", ":"), ensure_ascii=False)
    tx.run("INSERT INTO applies (serial, applied_at, changes) VALUES (?, ?, ?)", (serial, moment, text))
    tx.run("DELETE FROM applies WHERE serial <= ?", (serial - KEEP,))


def list_applies(db: Database, limit: int) -> list[AppliedChanges]:
    with db.tx() as tx:
        rows = tx.run("SELECT serial, applied_at, changes FROM applies ORDER BY serial DESC LIMIT ?", (max(0, limit),))
    return [AppliedChanges(int(s), float(at), tuple(json.loads(text))) for s, at, text in rows]


def writes_of(db: Database, kind: str, name: str, limit: int) -> list[tuple[AppliedChanges, Mapping[str, Any]]]:
    """The newest kept applies that wrote one resource, newest first, each with its change of it.
    The JSON text is searched for the change's `"kind":…,"name":…` first, so only those are read."""
    needle = json.dumps({"kind": kind, "name": name}, separators=(",", ":"), ensure_ascii=False)[1:-1]
    pattern = "%" + needle.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
    found: list[tuple[AppliedChanges, Mapping[str, Any]]] = []
    with db.tx() as tx:
        rows = tx.run(
            "SELECT serial, applied_at, changes FROM applies WHERE changes LIKE ? ESCAPE '!' ORDER BY serial DESC LIMIT ?",
            (pattern, max(0, limit)),
        )
    for s, at, text in rows:
        applied = AppliedChanges(int(s), float(at), tuple(json.loads(text)))
        change = next((c for c in applied.changes if c.get("kind") == kind and c.get("name") == name), None)
        if change is not None:
            found.append((applied, change))
    return found
