"""Flow runs, logs and workers in the SQL store (claims live in sqlclaims.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from buildsys.errors import NotFoundError, StateError
from buildsys.store import sqlhistory
from buildsys.store.base import (
    ACTIVE,
    CANCELLED,
    CANCELLING,
    CRASHED,
    FAILED,
    SCHEDULED,
    FlowRun,
    LogEntry,
    LogLine,
    RunState,
    WorkerInfo,
)
from buildsys.store.dialect import Database, Tx, marks, now, where
from buildsys.store.rows import (
    LOG_COLUMNS,
    RUN_COLUMNS,
    RUN_FIELDS,
    check_json,
    log_from_row,
    read_json,
    run_from_row,
    run_name,
    run_to_row,
    worker_from_row,
)
from buildsys.store.transitions import cancel, check_delete, check_transition, expire, mark, transition

DEFAULT_QUEUE = "default"
_INSERT_RUN = f"INSERT INTO flow_runs ({RUN_COLUMNS}) VALUES ({marks(RUN_FIELDS)})"
_UPDATE_RUN = f"UPDATE flow_runs SET {', '.join(f'{f} = ?' for f in RUN_FIELDS[1:])} WHERE id = ?"
_ACTIVE_LIST = ", ".join(f"'{s}'" for s in sorted(ACTIVE))


def create_run(
    db: Database,
    deployment: str,
    *,
    parameters: Mapping[str, Any] | None,
    job_variables: Mapping[str, Any] | None,
    scheduled_at: float | None,
    queue: str | None,
    name: str | None,
    idempotency_key: str | None,
    auto_scheduled: bool,
    tags: Sequence[str],
) -> FlowRun:
    check_json(dict(parameters or {}), "the run's parameters")
    check_json(dict(job_variables or {}), "the run's job variables")
    with db.tx(write=True) as tx:
        row = tx.one(
            f"SELECT id, spec FROM resources WHERE kind = 'deployment' AND name = ?{tx.for_share()}", (deployment,)
        )
        if row is None:
            raise NotFoundError(
                f"deployment {deployment!r} not found in the state store",
                hint="deployments are named FLOW/DEPLOYMENT; `buildsys apply` creates them",
            )
        deployment_id = str(row[0])
        spec = read_json(row[1], f"the spec of deployment {deployment!r}", "resources", dict)
        if idempotency_key is not None:
            existing = tx.one(
                f"SELECT {RUN_COLUMNS} FROM flow_runs WHERE deployment_id = ? AND idempotency_key = ?",
                (deployment_id, idempotency_key),
            )
            if existing is not None:
                return run_from_row(existing)
        run = _new_run(
            deployment, deployment_id, spec, parameters, job_variables, scheduled_at, queue, name,
            idempotency_key, auto_scheduled, tags,
        )  # fmt: skip
        db.notify(tx)
        if idempotency_key is None:
            insert_run(tx, run)
            return run
        # a concurrent create with the same key may have won: then return that run
        tx.run(_INSERT_RUN + " ON CONFLICT (deployment_id, idempotency_key) DO NOTHING", run_to_row(run))
        if tx.rowcount > 0:
            sqlhistory.record(tx, sqlhistory.entered(None, run, run.created_at))
        stored = tx.one(
            f"SELECT {RUN_COLUMNS} FROM flow_runs WHERE deployment_id = ? AND idempotency_key = ?",
            (deployment_id, idempotency_key),
        )
        assert stored is not None
        return run_from_row(stored)


def _new_run(
    deployment: str,
    deployment_id: str,
    spec: Mapping[str, Any],
    parameters: Mapping[str, Any] | None,
    job_variables: Mapping[str, Any] | None,
    scheduled_at: float | None,
    queue: str | None,
    name: str | None,
    idempotency_key: str | None,
    auto_scheduled: bool,
    tags: Sequence[str],
) -> FlowRun:
    pool = spec.get("work_pool_name")
    if not isinstance(pool, str) or not pool:
        raise StateError(
            f"deployment {deployment!r} has no work pool, so no worker could run it",
            hint="set work_pool.name on the deployment in prefect.yaml and apply",
        )
    created = now()
    flow_name = spec.get("flow_name") or deployment.split("/", 1)[0]
    all_tags = list(dict.fromkeys([*(spec.get("tags") or []), *tags]))
    return FlowRun(
        id=_new_id(),
        name=name or run_name(),
        deployment=deployment,
        deployment_id=deployment_id,
        flow_name=str(flow_name),
        pool=pool,
        queue=queue or spec.get("work_queue_name") or DEFAULT_QUEUE,
        parameters={**(spec.get("parameters") or {}), **(parameters or {})},
        job_variables=dict(job_variables or {}),
        scheduled_at=created if scheduled_at is None else float(scheduled_at),
        created_at=created,
        max_retries=int(spec.get("retries") or 0),
        retry_delay_seconds=float(spec.get("retry_delay_seconds") or 0),
        auto_scheduled=auto_scheduled,
        idempotency_key=idempotency_key,
        tags=tuple(str(t) for t in all_tags),
    )


def load_run(tx: Tx, run_id: str, *, lock: bool = False) -> FlowRun:
    """A run by id, unique id prefix or exact name; NotFoundError otherwise."""
    clause = tx.for_update() if lock else ""
    row = tx.one(f"SELECT {RUN_COLUMNS} FROM flow_runs WHERE id = ?{clause}", (run_id,))
    if row is not None:
        return run_from_row(row)
    if not run_id:
        raise NotFoundError("no flow run id given")
    prefix = run_id.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = tx.run("SELECT id FROM flow_runs WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (prefix,))
    if not rows:
        rows = tx.run("SELECT id FROM flow_runs WHERE name = ? LIMIT 2", (run_id,))
    if len(rows) > 1:
        raise StateError(f"{run_id!r} matches more than one flow run", hint="give more of the id")
    if not rows:
        raise NotFoundError(f"flow run {run_id!r} not found", hint="`buildsys runs ls` lists the runs")
    row = tx.one(f"SELECT {RUN_COLUMNS} FROM flow_runs WHERE id = ?{clause}", (rows[0][0],))
    assert row is not None
    return run_from_row(row)


def list_states(db: Database, run_id: str) -> list[RunState]:
    """The state history of a run named as `load_run` takes it, oldest first."""
    with db.tx() as tx:
        return sqlhistory.states_of(tx, load_run(tx, run_id).id)


class Move(NamedTuple):
    """A stored run and what it becomes; `failed` names the failure (FAILED/CRASHED) that the move
    turned into a retry, so the history keeps it."""

    before: FlowRun
    after: FlowRun
    failed: str | None = None


def insert_run(tx: Tx, run: FlowRun) -> None:
    """A new run, with the state it starts in as the first entry of its history."""
    tx.run(_INSERT_RUN, run_to_row(run))
    sqlhistory.record(tx, sqlhistory.entered(None, run, run.created_at))


def save_runs(tx: Tx, moves: Sequence[Move], moment: float) -> None:
    """The one way a stored run changes: each run's row, and every state it entered to its history."""
    changed = [m for m in moves if m.after != m.before]
    tx.many(_UPDATE_RUN, [(*v[1:], v[0]) for v in (run_to_row(m.after) for m in changed)])
    sqlhistory.record(tx, [s for m in changed for s in sqlhistory.entered(m.before, m.after, moment, failed=m.failed)])


def save_run(tx: Tx, before: FlowRun, after: FlowRun, moment: float, *, failed: str | None = None) -> None:
    save_runs(tx, [Move(before, after, failed)], moment)


def list_runs(
    db: Database,
    *,
    deployment: str | None,
    pool: str | None,
    states: Sequence[str] | None,
    limit: int,
    offset: int,
) -> list[FlowRun]:
    found = where(("deployment", deployment), ("pool", pool), ("state", states))
    if found is None:
        return []
    clause, params = found
    sql = f"SELECT {RUN_COLUMNS} FROM flow_runs{clause} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
    with db.tx() as tx:
        return [run_from_row(r) for r in tx.run(sql, (*params, max(0, limit), max(0, offset)))]


def set_run_state(db: Database, run_id: str, state: str, **kwargs: Any) -> FlowRun:
    with db.tx(write=True) as tx:
        run = load_run(tx, run_id, lock=True)
        check_transition(run, state, kwargs.get("worker"))
        moment = now()
        moved = transition(run, state, moment, **kwargs)
        save_run(tx, run, moved, moment, failed=state if state in (FAILED, CRASHED) else None)
        db.notify(tx)  # a retry is claimable; a finished run frees a concurrency slot
        return moved


def request_cancel(db: Database, run_id: str) -> FlowRun:
    with db.tx(write=True) as tx:
        run = load_run(tx, run_id, lock=True)
        moment = now()
        moved = cancel(run, moment)
        save_run(tx, run, moved, moment)
        return moved


def mark_run(db: Database, run_id: str, state: str, *, message: str | None, force: bool) -> FlowRun:
    with db.tx(write=True) as tx:
        run = load_run(tx, run_id, lock=True)
        moment = now()
        moved = mark(run, state, moment, message=message, force=force)
        save_run(tx, run, moved, moment, failed=state if state in (FAILED, CRASHED) else None)
        db.notify(tx)  # a retry is claimable; a finished run frees a concurrency slot
        return moved


def delete_run(db: Database, run_id: str) -> FlowRun:
    """The run and what belongs to it only (Prefect's cascade): its logs, state history, task runs
    and unkeyed artifacts; a subflow run started from one of its task runs loses that parent link.
    Artifacts with a key stay: they are that key's history, as Prefect keeps them."""
    with db.tx(write=True) as tx:
        run = load_run(tx, run_id, lock=True)
        check_delete(run)
        rid = (run.id,)
        tx.run(
            "UPDATE flow_runs SET parent_task_run_id = NULL WHERE parent_task_run_id IN "
            "(SELECT id FROM task_runs WHERE flow_run_id = ?)",
            rid,
        )
        tx.run("DELETE FROM task_runs WHERE flow_run_id = ?", rid)
        tx.run("DELETE FROM artifacts WHERE flow_run_id = ? AND key IS NULL", rid)
        tx.run("DELETE FROM logs WHERE run_id = ?", rid)
        tx.run("DELETE FROM flow_run_states WHERE run_id = ?", rid)
        tx.run("DELETE FROM flow_runs WHERE id = ?", rid)
        return run


def expire_leases(db: Database, at: float | None) -> list[FlowRun]:
    moment = now() if at is None else at
    with db.tx(write=True) as tx:
        rows = tx.run(
            f"SELECT {RUN_COLUMNS} FROM flow_runs WHERE state IN ({_ACTIVE_LIST}) "
            f"AND lease_expires_at IS NOT NULL AND lease_expires_at < ?{tx.for_update(skip_locked=True)}",
            (moment,),
        )
        runs = [run_from_row(r) for r in rows]
        moves = [Move(r, expire(r, moment), None if r.state == CANCELLING else CRASHED) for r in runs]
        save_runs(tx, moves, moment)
        if moves:
            db.notify(tx)
        return [m.after for m in moves]


def heartbeat(db: Database, pool: str, worker: str, run_ids: Sequence[str], lease_seconds: float) -> list[str]:
    moment = now()
    with db.tx(write=True) as tx:
        record_worker(tx, pool, worker, moment)
        if not run_ids:
            return []
        tx.run(
            f"UPDATE flow_runs SET lease_expires_at = ? WHERE id IN ({marks(run_ids)}) AND worker = ? "
            f"AND state IN ({_ACTIVE_LIST})",
            (moment + lease_seconds, *run_ids, worker),
        )
        rows = tx.run(f"SELECT id FROM flow_runs WHERE id IN ({marks(run_ids)}) AND state = ?", (*run_ids, CANCELLING))
    found = {str(r[0]) for r in rows}
    return [rid for rid in run_ids if rid in found]


def record_worker(tx: Tx, pool: str, worker: str, moment: float) -> None:
    tx.run(
        "INSERT INTO workers (pool, name, last_heartbeat) VALUES (?, ?, ?) "
        "ON CONFLICT (pool, name) DO UPDATE SET last_heartbeat = excluded.last_heartbeat",
        (pool, worker, moment),
    )


def list_workers(db: Database, pool: str | None) -> list[WorkerInfo]:
    sql = "SELECT pool, name, last_heartbeat, type FROM workers"
    params: tuple[Any, ...] = ()
    if pool is not None:
        sql, params = sql + " WHERE pool = ?", (pool,)
    with db.tx() as tx:
        rows = tx.run(sql + " ORDER BY pool, name", params)
    moment = now()
    return [worker_from_row(r, moment) for r in rows]


def append_logs(db: Database, run_id: str, lines: Sequence[tuple[float, str, str] | LogEntry]) -> int:
    entries = [line if isinstance(line, LogEntry) else LogEntry(*line) for line in lines]
    with db.tx(write=True) as tx:
        row = tx.one(
            "UPDATE flow_runs SET log_seq = log_seq + ? WHERE id = ? RETURNING log_seq", (len(lines), run_id)
        )
        if row is None:
            raise NotFoundError(f"flow run {run_id!r} not found; cannot append logs to it")
        last = int(row[0])
        first = last - len(lines) + 1
        tx.many(
            f"INSERT INTO logs ({LOG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (run_id, first + i, float(e.ts), str(e.message), str(e.stream), e.level, e.logger, e.task_run_id)
                for i, e in enumerate(entries)
            ],
        )
        return last


def read_logs(db: Database, run_id: str, after: int, limit: int) -> list[LogLine]:
    with db.tx() as tx:
        rows = tx.run(
            f"SELECT {LOG_COLUMNS} FROM logs WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (run_id, after, max(0, limit)),
        )
        if not rows and tx.one("SELECT 1 FROM flow_runs WHERE id = ?", (run_id,)) is None:
            raise NotFoundError(f"flow run {run_id!r} not found", hint="`buildsys runs ls` lists the runs")
    return [log_from_row(r) for r in rows]


def prune_deployment_runs(tx: Tx, updated: Sequence[str], deleted: Sequence[str], moment: float) -> None:
    """Prefect §8.1: a changed deployment loses its future auto-scheduled never-started runs (the
    scheduler makes new ones); a deleted one also has its other scheduled runs cancelled."""
    names = [*updated, *deleted]
    if not names:
        return
    for chunk in _chunks(names, 500):
        doomed = (
            f"deployment IN ({marks(chunk)}) AND state = '{SCHEDULED}' "
            "AND auto_scheduled = 1 AND started_at IS NULL AND attempt = 1 "
            "AND state_name NOT IN ('AwaitingConcurrencySlot', 'AwaitingRetry') AND scheduled_at >= ?"
        )
        sqlhistory.forget(tx, doomed, (*chunk, moment))
        tx.run(f"DELETE FROM flow_runs WHERE {doomed}", (*chunk, moment))
    for chunk in _chunks(list(deleted), 500):
        rows = tx.run(
            f"SELECT {RUN_COLUMNS} FROM flow_runs WHERE deployment IN ({marks(chunk)}) AND state = '{SCHEDULED}'"
            f"{tx.for_update()}",
            chunk,
        )
        runs = [run_from_row(r) for r in rows]
        save_runs(tx, [Move(r, ended(r, "its deployment was deleted", moment)) for r in runs], moment)


def ended(run: FlowRun, why: str, moment: float) -> FlowRun:
    """A run cancelled before any worker took it."""
    import dataclasses

    return dataclasses.replace(run, state=CANCELLED, state_name="Cancelled", state_message=why, ended_at=moment)


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _new_id() -> str:
    import uuid  # on first use: with `platform` ~1.5 ms of every plan's start

    return str(uuid.uuid4())
