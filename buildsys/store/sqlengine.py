"""What Prefect's engine records in the SQL store: its flow-run state proposals, subflow runs, task
runs, artifacts, concurrency leases for tagged tasks and flows (written through /prefect/api)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from buildsys.errors import NotFoundError, StateError
from buildsys.store.base import (
    PENDING,
    REJECT,
    TERMINAL,
    Artifact,
    ConcurrencyLimit,
    Decision,
    FlowRun,
    Proposal,
    Resource,
    TaskRun,
)
from buildsys.store.dialect import Database, Tx, marks, now, where
from buildsys.store.rows import (
    RESOURCE_COLUMNS,
    RUN_COLUMNS,
    check_json,
    dump,
    read_json,
    resource_from_row,
    run_from_row,
    run_name,
)
from buildsys.store.sqlruns import insert_run, load_run, save_run
from buildsys.store.transitions import decide

FLOW_NAMESPACE = "6b1f4a52-5c1e-4a8e-9b7e-2f0c6d1e9a10"  # flow ids: uuid5 names in it (`flow_id`)
TASK_COLUMNS = (
    "id, flow_run_id, name, task_key, dynamic_key, state, state_name, state_message, state_ts, "
    "created_at, started_at, ended_at, run_count, cached, tags, history"
)
ARTIFACT_COLUMNS = "id, flow_run_id, task_run_id, key, type, description, data, created_at"
MAX_HISTORY = 200  # states kept per task run (a task retried forever must not grow without end)


def flow_id(name: str) -> str:
    """A flow's id: the same for the same name in every store and process."""
    import uuid  # on first use: with `platform` ~1.5 ms of every plan's start

    return str(uuid.uuid5(uuid.UUID(FLOW_NAMESPACE), name))


# --- flow runs ---------------------------------------------------------------------------------


def propose(db: Database, run_id: str, proposal: Proposal) -> Decision:
    with db.tx(write=True) as tx:
        run = load_run(tx, run_id, lock=True)
        moment = now()
        decision = decide(run, proposal, moment)
        if decision.run != run:
            # an engine retry is REJECTed with "AwaitingRetry": the history keeps the failure first
            retried = decision.status == REJECT and decision.reply_type is not None
            save_run(tx, run, decision.run, moment, failed=proposal.type if retried else None)
            db.notify(tx)
        return decision


def update_run(
    db: Database,
    run_id: str,
    *,
    name: str | None,
    infrastructure_pid: str | None,
    prefect: Mapping[str, Any] | None,
) -> FlowRun:
    with db.tx(write=True) as tx:
        run = load_run(tx, run_id, lock=True)
        changes: dict[str, Any] = {}
        if name:
            changes["name"] = name
        if infrastructure_pid is not None:
            changes["infrastructure_pid"] = infrastructure_pid
        if prefect:
            check_json(dict(prefect), "the flow run's Prefect fields")
            changes["prefect"] = {**run.prefect, **prefect}
        moved = dataclasses.replace(run, **changes)
        save_run(tx, run, moved, now())
        return moved


def create_subflow_run(
    db: Database,
    flow_name: str,
    *,
    parent_task_run_id: str | None,
    parameters: Mapping[str, Any],
    name: str | None,
    tags: Sequence[str],
    prefect: Mapping[str, Any],
) -> FlowRun:
    """A flow run the engine starts itself (a subflow): no deployment or pool, never claimed."""
    check_json(dict(parameters), "the run's parameters")
    check_json(dict(prefect), "the flow run's Prefect fields")
    moment = now()
    run = FlowRun(
        id=_new_id(),
        name=name or run_name(),
        deployment="",
        deployment_id="",
        flow_name=flow_name,
        pool="",
        queue=None,
        parameters=dict(parameters),
        state=PENDING,
        state_name="Pending",
        scheduled_at=moment,
        created_at=moment,
        tags=tuple(dict.fromkeys(str(t) for t in tags)),
        parent_task_run_id=parent_task_run_id,
        prefect=dict(prefect),
    )
    with db.tx(write=True) as tx:
        _ensure_flow(tx, flow_name, moment)
        insert_run(tx, run)
    return run


def set_parent(db: Database, run_id: str, parent_task_run_id: str | None) -> FlowRun:
    with db.tx(write=True) as tx:
        before = load_run(tx, run_id, lock=True)
        run = dataclasses.replace(before, parent_task_run_id=parent_task_run_id)
        save_run(tx, before, run, now())
        return run


def find_runs(
    db: Database,
    *,
    ids: Sequence[str] | None,
    parent_task_run_ids: Sequence[str] | None,
    states: Sequence[str] | None,
    state_names: Sequence[str] | None,
    pool: str | None,
    limit: int,
) -> list[FlowRun]:
    found = where(
        ("id", ids),
        ("parent_task_run_id", parent_task_run_ids),
        ("state", states),
        ("state_name", state_names),
        ("pool", pool),
    )
    if found is None:
        return []
    clause, params = found
    with db.tx() as tx:
        rows = tx.run(
            f"SELECT {RUN_COLUMNS} FROM flow_runs{clause} ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, max(0, limit)),
        )
    return [run_from_row(r) for r in rows]


# --- task runs ---------------------------------------------------------------------------------


def merge_task_run(old: TaskRun | None, new: TaskRun) -> TaskRun:
    """A reported task run merged into what was recorded: its state history grows; the current
    state is the latest reported one (reports may arrive out of order); identity fields stay."""
    if old is None:
        return new
    seen = {(h.get("type"), h.get("name"), h.get("ts")) for h in old.history}
    history = [*old.history, *(h for h in new.history if (h.get("type"), h.get("name"), h.get("ts")) not in seen)]
    history.sort(key=lambda h: float(h.get("ts") or 0.0))
    latest = new if new.state_ts >= old.state_ts else old
    return dataclasses.replace(
        latest,
        id=old.id,
        flow_run_id=old.flow_run_id,
        created_at=min(old.created_at, new.created_at) if new.created_at else old.created_at,
        started_at=_first(old.started_at, new.started_at),
        ended_at=latest.ended_at if latest.state in TERMINAL else None,
        run_count=max(old.run_count, new.run_count),
        cached=old.cached or new.cached,
        tags=tuple(dict.fromkeys([*old.tags, *new.tags])),
        history=tuple(history[-MAX_HISTORY:]),
    )


def _first(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return min(values) if values else None


def record_task_run(db: Database, task_run: TaskRun) -> TaskRun:
    check_json(list(task_run.history), "the task run's state history")
    with db.tx(write=True) as tx:
        if tx.one("SELECT 1 FROM flow_runs WHERE id = ?", (task_run.flow_run_id,)) is None:
            raise NotFoundError(f"flow run {task_run.flow_run_id!r} not found; cannot record task run {task_run.name!r}")
        row = tx.one(f"SELECT {TASK_COLUMNS} FROM task_runs WHERE id = ?{tx.for_update()}", (task_run.id,))
        old = _task_from_row(row) if row else None
        if old is not None and old.flow_run_id != task_run.flow_run_id:
            raise StateError(f"task run {task_run.id} belongs to flow run {old.flow_run_id}, not {task_run.flow_run_id}")
        merged = merge_task_run(old, task_run)
        values = _task_to_row(merged)
        if old is None:
            tx.run(f"INSERT INTO task_runs ({TASK_COLUMNS}) VALUES ({marks(values)})", values)
        else:
            columns = TASK_COLUMNS.split(", ")[1:]
            tx.run(f"UPDATE task_runs SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?", (*values[1:], values[0]))
        return merged


def get_task_run(db: Database, task_run_id: str) -> TaskRun | None:
    with db.tx() as tx:
        row = tx.one(f"SELECT {TASK_COLUMNS} FROM task_runs WHERE id = ?", (task_run_id,))
    return _task_from_row(row) if row else None


def list_task_runs(db: Database, flow_run_id: str) -> list[TaskRun]:
    with db.tx() as tx:
        rows = tx.run(f"SELECT {TASK_COLUMNS} FROM task_runs WHERE flow_run_id = ? ORDER BY created_at, id", (flow_run_id,))
    return [_task_from_row(r) for r in rows]


def _task_to_row(t: TaskRun) -> tuple[Any, ...]:
    return (
        t.id, t.flow_run_id, t.name, t.task_key, t.dynamic_key, t.state, t.state_name, t.state_message,
        t.state_ts, t.created_at, t.started_at, t.ended_at, t.run_count, int(t.cached), dump(list(t.tags)),
        dump([dict(h) for h in t.history]),
    )  # fmt: skip


def _task_from_row(row: tuple[Any, ...]) -> TaskRun:
    (tid, frid, name, key, dyn, state, sname, msg, sts, created, started, ended, count, cached, tags, history) = row
    return TaskRun(
        id=tid, flow_run_id=frid, name=name, task_key=key, dynamic_key=dyn, state=state, state_name=sname,
        state_message=msg, state_ts=float(sts), created_at=float(created),
        started_at=None if started is None else float(started), ended_at=None if ended is None else float(ended),
        run_count=int(count), cached=bool(cached),
        tags=tuple(read_json(tags, f"the tags of task run {tid}", "task_runs", list)),
        history=tuple(read_json(history, f"the history of task run {tid}", "task_runs", list)),
    )  # fmt: skip


# --- artifacts ---------------------------------------------------------------------------------


def create_artifact(db: Database, artifact: Artifact) -> Artifact:
    check_json(artifact.data, "the artifact's data")
    stored = dataclasses.replace(artifact, id=artifact.id or _new_id(), created_at=artifact.created_at or now())
    with db.tx(write=True) as tx:
        tx.run(
            f"INSERT INTO artifacts ({ARTIFACT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                stored.id, stored.flow_run_id, stored.task_run_id, stored.key, stored.type, stored.description,
                dump(stored.data), stored.created_at,
            ),
        )  # fmt: skip
    return stored


def list_artifacts(db: Database, *, flow_run_id: str | None, key: str | None, limit: int = 1000) -> list[Artifact]:
    clause, params = where(("flow_run_id", flow_run_id), ("key", key)) or ("", [])
    with db.tx() as tx:
        rows = tx.run(f"SELECT {ARTIFACT_COLUMNS} FROM artifacts{clause} ORDER BY created_at, id LIMIT ?", (*params, limit))
    return [
        Artifact(id=a, flow_run_id=f, task_run_id=t, key=k, type=ty, description=d, data=read_json(data, f"the data of artifact {a}", "artifacts"), created_at=float(c))
        for a, f, t, k, ty, d, data, c in rows
    ]


# --- concurrency limits and leases -------------------------------------------------------------


def list_limits(db: Database, names: Sequence[str] | None = None) -> list[ConcurrencyLimit]:
    with db.tx() as tx:
        return _limits(tx, names, now())


def _limits(tx: Tx, names: Sequence[str] | None, moment: float) -> list[ConcurrencyLimit]:
    found = where(("name", names))
    if found is None:
        return []
    clause, params = found
    rows = tx.run(f"SELECT name, id, slot_limit, created_at FROM concurrency_limits{clause} ORDER BY name", params)
    active: dict[str, Any] = dict(
        tx.run("SELECT name, SUM(slots) FROM concurrency_slots WHERE expires_at > ? GROUP BY name", (moment,))
    )
    return [
        ConcurrencyLimit(name=n, id=i, limit=int(lim), active_slots=int(active.get(n) or 0), created_at=float(c))
        for n, i, lim, c in rows
    ]


def set_limit(db: Database, name: str, limit: int | None) -> ConcurrencyLimit | None:
    if not name:
        raise StateError("a concurrency limit needs a name (tagged tasks use tag:<tag>)")
    if limit is not None and not 0 <= limit <= 2**31:
        raise StateError(f"concurrency limit {name!r}: {limit} is not between 0 and 2147483648")
    moment = now()
    with db.tx(write=True) as tx:
        if limit is None:
            tx.run("DELETE FROM concurrency_limits WHERE name = ?", (name,))
            return None
        tx.run(
            "INSERT INTO concurrency_limits (name, id, slot_limit, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET slot_limit = excluded.slot_limit",
            (name, _new_id(), limit, moment),
        )
        return _limits(tx, [name], moment)[0]


def acquire(
    db: Database, names: Sequence[str], slots: int, lease_seconds: float, holder: Mapping[str, Any] | None
) -> tuple[str | None, list[ConcurrencyLimit]]:
    """Take `slots` of every limit among `names` that exists, all or none. Names without a limit
    are not limited. Returns (lease id, the limits) or (None, the limits) when one is full."""
    moment = now()
    with db.tx(write=True) as tx:
        for name in sorted(set(names)):
            tx.lock(f"concurrency:{name}")
        limits = _limits(tx, sorted(set(names)), moment)
        if any(lim.active_slots + slots > lim.limit for lim in limits):
            return None, limits
        lease = _new_id()
        tx.many(
            "INSERT INTO concurrency_slots (lease_id, name, slots, expires_at, holder) VALUES (?, ?, ?, ?, ?)",
            # one row per limit taken, and one (name "") that keeps the lease renewable when none is
            [
                (lease, name, slots, moment + lease_seconds, dump(holder) if holder else None)
                for name in ["", *(lim.name for lim in limits)]
            ],
        )
        tx.run("DELETE FROM concurrency_slots WHERE expires_at <= ?", (moment - 3600,))
        return lease, limits


def renew(db: Database, lease_id: str, lease_seconds: float) -> bool:
    with db.tx(write=True) as tx:
        tx.run(
            "UPDATE concurrency_slots SET expires_at = ? WHERE lease_id = ? AND expires_at > ?",
            (now() + lease_seconds, lease_id, now()),
        )
        return tx.rowcount > 0


def release(db: Database, lease_id: str) -> bool:
    with db.tx(write=True) as tx:
        tx.run("DELETE FROM concurrency_slots WHERE lease_id = ?", (lease_id,))
        return tx.rowcount > 0


# --- flows and resources by id -----------------------------------------------------------------


def ensure_flow(db: Database, name: str) -> str:
    with db.tx() as tx:
        if tx.one("SELECT 1 FROM flows WHERE name = ?", (name,)) is not None:
            return flow_id(name)
    with db.tx(write=True) as tx:
        return _ensure_flow(tx, name, now())


def _ensure_flow(tx: Tx, name: str, moment: float) -> str:
    fid = flow_id(name)
    tx.run("INSERT INTO flows (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING", (fid, name, moment))
    return fid


def get_flow(db: Database, fid: str) -> str | None:
    with db.tx() as tx:
        row = tx.one("SELECT name FROM flows WHERE id = ?", (fid,))
    return None if row is None else str(row[0])


def resource_by_id(db: Database, kind: str, rid: str) -> Resource | None:
    with db.tx() as tx:
        row = tx.one(f"SELECT {RESOURCE_COLUMNS} FROM resources WHERE kind = ? AND id = ?", (kind, rid))
    return resource_from_row(row) if row else None


# --- export and import (snapshot.py) -------------------------------------------------------------

EXPORTED_TABLES = ("task_runs", "artifacts", "concurrency_slots", "concurrency_limits")


def export_rows(tx: Tx) -> dict[str, Any]:
    tasks = [_task_from_row(r) for r in tx.run(f"SELECT {TASK_COLUMNS} FROM task_runs ORDER BY flow_run_id, created_at, id")]
    artifacts = tx.run(f"SELECT {ARTIFACT_COLUMNS} FROM artifacts ORDER BY created_at, id")
    limits = tx.run("SELECT name, slot_limit FROM concurrency_limits ORDER BY name")
    return {
        "task_runs": [{**t.to_dict(), "tags": list(t.tags), "history": [dict(h) for h in t.history]} for t in tasks],
        "artifacts": [
            Artifact(id=a, flow_run_id=f, task_run_id=t, key=k, type=ty, description=d, data=read_json(data, f"the data of artifact {a}", "artifacts"),
                     created_at=float(c)).to_dict()
            for a, f, t, k, ty, d, data, c in artifacts
        ],
        "concurrency_limits": [{"name": n, "limit": int(lim)} for n, lim in limits],
    }


def import_rows(tx: Tx, data: Mapping[str, Any]) -> None:
    """Task runs, artifacts and limits of an export (the flow runs are already in)."""
    try:
        tasks = [TaskRun.from_dict(t) for t in data.get("task_runs", [])]
        artifacts = [Artifact.from_dict(a) for a in data.get("artifacts", [])]
    except TypeError as exc:
        raise StateError(f"not a buildsys state export: a task run or artifact is malformed ({exc})") from None
    tx.many(f"INSERT INTO task_runs ({TASK_COLUMNS}) VALUES ({marks(TASK_COLUMNS.split(', '))})",
            [_task_to_row(t) for t in tasks])
    tx.many(
        f"INSERT INTO artifacts ({ARTIFACT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(a.id, a.flow_run_id, a.task_run_id, a.key, a.type, a.description, dump(a.data), a.created_at) for a in artifacts],
    )
    moment = now()
    tx.many(
        "INSERT INTO concurrency_limits (name, id, slot_limit, created_at) VALUES (?, ?, ?, ?)",
        [(x["name"], _new_id(), int(x["limit"]), moment) for x in data.get("concurrency_limits", [])],
    )


def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())
