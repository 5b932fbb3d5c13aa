"""The SQL state store: one implementation for a SQLite file and for PostgreSQL.

Desired state changes only through `apply`, which validates the whole change set, then writes it in
one transaction serialised on the one-row serial table (SQLite: BEGIN IMMEDIATE; PostgreSQL:
SELECT … FOR UPDATE). Dialect differences live in dialect.py, runs in sqlruns.py / sqlclaims.py.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from buildsys.errors import ConflictError, StateError
from buildsys.printable import printable
from buildsys.storable import resource_name_problem
from buildsys.store import sqlapplies, sqlclaims, sqlengine, sqlruns
from buildsys.store.base import (
    KINDS,
    AppliedChanges,
    Artifact,
    Change,
    ConcurrencyLimit,
    Decision,
    FlowRun,
    LogEntry,
    LogLine,
    Proposal,
    Resource,
    RunState,
    TaskRun,
    WorkerInfo,
)
from buildsys.store.dialect import Database, PostgresDatabase, SqliteDatabase, Tx, marks, now
from buildsys.store.migrations import migrate
from buildsys.store.rows import (
    RESOURCE_COLUMNS,
    DamagedRecord,
    SharedSpecs,
    check_json,
    dump,
    indexed_columns,
    resource_from_row,
)
from buildsys.store.snapshot import export_store, import_store
from buildsys.store.transitions import DEFAULT_LEASE_SECONDS

ACTIONS = ("create", "update", "delete")
_LISTED_NAMES = 500  # deployments named in a listing's query (more: every row read, the others left undecoded)
C = TypeVar("C", bound=type)


def _naming_the_store(cls: C) -> C:
    """Every public call of the store: a damaged record's error also says which store holds it
    (the file, or the database's URL without its password)."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, _located(member))
    return cls


def _located(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(self: SqlStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except DamagedRecord as exc:
            raise exc.located(self.where) from None

    return call


@_naming_the_store
class SqlStore:
    """The StateStore protocol over SQL (see base.StateStore for the semantics of each call)."""

    def __init__(self, db: Database, where: str) -> None:
        self._db = db
        self.url = db.url
        self.where = where  # how messages name this store (path or redacted URL)
        self.schema_version = migrate(db, where)

    @classmethod
    def sqlite(cls, path: str | Path) -> SqlStore:
        """Open (creating it and its parent directories if needed) a SQLite state file."""
        p = Path(path)
        return cls(SqliteDatabase(p), str(p))

    @classmethod
    def postgres(cls, url: str) -> SqlStore:
        db = PostgresDatabase(url)
        return cls(db, db.display_url)

    lists_known_specs = True  # `list_resources(known=...)`: see `reconcile.snapshot`

    @property
    def dialect(self) -> str:
        """"sqlite" or "postgresql"."""
        return self._db.name

    # --- desired state ---------------------------------------------------------------------
    def serial(self) -> int:
        with self._db.tx() as tx:
            return _serial(tx)

    def list_resources(
        self, kind: str | None = None, *, known: Mapping[str, Any] | None = None,
        deployments: Collection[str] | None = None,
    ) -> list[Resource]:
        """`known`: spec texts whose values the caller holds (see `SharedSpecs`): a row with one of
        them is given that value instead of decoding its text (a plan's desired specs: ~all rows).
        `deployments`: of the deployments, only those with these names (resources of every other
        kind all): a plan of some deployments reads no other (`reconcile.snapshot`)."""
        sql = f"SELECT {RESOURCE_COLUMNS} FROM resources"
        params: tuple[str, ...] = ()
        if kind is not None:
            _check_kind(kind)
            sql, params = sql + " WHERE kind = ?", (kind,)
        chosen = None if deployments is None else set(deployments)
        if chosen is not None and kind is None and len(chosen) <= _LISTED_NAMES:
            names = sorted(chosen)
            sql, params = sql + f" WHERE kind <> ? OR name IN ({marks(names)})", ("deployment", *names)
        with self._db.tx() as tx:
            rows = tx.run(sql + " ORDER BY kind, name", params)
        read_spec = SharedSpecs(known)
        if chosen is not None:
            return [resource_from_row(r, read_spec) for r in rows if r[0] != "deployment" or r[1] in chosen]
        return [resource_from_row(r, read_spec) for r in rows]

    def get_resource(self, kind: str, name: str) -> Resource | None:
        _check_kind(kind)
        with self._db.tx() as tx:
            row = tx.one(f"SELECT {RESOURCE_COLUMNS} FROM resources WHERE kind = ? AND name = ?", (kind, name))
        return resource_from_row(row) if row else None

    def apply(self, changes: Sequence[Change], *, expected_serial: int | None) -> int:
        changes = list(changes)
        _check_shapes(changes)
        with self._db.tx(write=True) as tx:
            current = _serial(tx, lock=True)
            if expected_serial is not None and expected_serial != current:
                raise ConflictError(
                    f"the store changed since the plan was made (serial {current}, plan was made at "
                    f"{expected_serial})",
                    hint="run `buildsys plan` again and apply the new plan",
                )
            if not changes:
                return current
            existing = _existing_ids(tx, changes)
            _check_existence(changes, existing)
            new_serial = current + 1
            old = sqlapplies.before(tx, changes)
            _write(tx, changes, existing, new_serial)
            sqlapplies.record(tx, new_serial, now(), changes, old, planned=expected_serial is not None)
            tx.run("UPDATE store_serial SET serial = ? WHERE id = 1", (new_serial,))
            self._db.notify(tx)  # an unpaused pool or a raised limit can make runs claimable
            return new_serial

    # --- flow runs -------------------------------------------------------------------------
    def create_run(
        self,
        deployment: str,
        *,
        parameters: Mapping[str, Any] | None = None,
        job_variables: Mapping[str, Any] | None = None,
        scheduled_at: float | None = None,
        queue: str | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
        auto_scheduled: bool = False,
        tags: Sequence[str] = (),
    ) -> FlowRun:
        return sqlruns.create_run(
            self._db, deployment, parameters=parameters, job_variables=job_variables,
            scheduled_at=scheduled_at, queue=queue, name=name, idempotency_key=idempotency_key,
            auto_scheduled=auto_scheduled, tags=tags,
        )  # fmt: skip

    def get_run(self, run_id: str) -> FlowRun:
        with self._db.tx() as tx:
            return sqlruns.load_run(tx, run_id)

    def list_runs(
        self,
        *,
        deployment: str | None = None,
        pool: str | None = None,
        states: Sequence[str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[FlowRun]:
        return sqlruns.list_runs(
            self._db, deployment=deployment, pool=pool, states=states, limit=limit, offset=offset
        )

    def claim_runs(
        self,
        pool: str,
        worker: str,
        *,
        queues: Sequence[str] | None = None,
        limit: int = 1,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        wait: float = 0.0,
    ) -> list[FlowRun]:
        return sqlclaims.claim_runs(
            self._db, pool, worker, queues=queues, limit=limit, lease_seconds=lease_seconds, wait=wait
        )

    def wakeup_token(self) -> object | None:
        """A value that changes whenever any process commits something that can make runs
        claimable, when the database tells that without a query (PostgreSQL's LISTEN/NOTIFY);
        None when it cannot (SQLite: a waiting claim has to look). The first call may start the
        listener (a blocking connect)."""
        return self._db.change_token() if self._db.name == "postgresql" else None

    def next_due(self, pool: str) -> float | None:
        """When the pool's next future SCHEDULED run comes due (epoch seconds), or None."""
        return sqlclaims.next_due(self._db, pool)

    def heartbeat(
        self, pool: str, worker: str, run_ids: Sequence[str], *, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> list[str]:
        return sqlruns.heartbeat(self._db, pool, worker, list(run_ids), lease_seconds)

    def set_run_state(
        self,
        run_id: str,
        state: str,
        *,
        name: str | None = None,
        message: str | None = None,
        worker: str | None = None,
        infrastructure_pid: str | None = None,
        exit_code: int | None = None,
    ) -> FlowRun:
        return sqlruns.set_run_state(
            self._db, run_id, state, name=name, message=message, worker=worker,
            infrastructure_pid=infrastructure_pid, exit_code=exit_code,
        )  # fmt: skip

    def request_cancel(self, run_id: str) -> FlowRun:
        return sqlruns.request_cancel(self._db, run_id)

    def mark_run(self, run_id: str, state: str, *, message: str | None = None, force: bool = False) -> FlowRun:
        return sqlruns.mark_run(self._db, run_id, state, message=message, force=force)

    def delete_run(self, run_id: str) -> FlowRun:
        return sqlruns.delete_run(self._db, run_id)

    def list_run_states(self, run_id: str) -> list[RunState]:
        return sqlruns.list_states(self._db, run_id)

    def list_applies(self, limit: int = 20) -> list[AppliedChanges]:
        return sqlapplies.list_applies(self._db, limit)

    def list_writes_of(self, kind: str, name: str, limit: int = 20) -> list[tuple[AppliedChanges, Mapping[str, Any]]]:
        return sqlapplies.writes_of(self._db, kind, name, limit)

    def expire_leases(self, *, now: float | None = None) -> list[FlowRun]:
        return sqlruns.expire_leases(self._db, now)

    # --- logs and workers ------------------------------------------------------------------
    def append_logs(self, run_id: str, lines: Sequence[tuple[float, str, str] | LogEntry]) -> int:
        return sqlruns.append_logs(self._db, run_id, list(lines))

    def read_logs(self, run_id: str, *, after: int = 0, limit: int = 1000) -> list[LogLine]:
        return sqlruns.read_logs(self._db, run_id, after, limit)

    def list_workers(self, pool: str | None = None) -> list[WorkerInfo]:
        return sqlruns.list_workers(self._db, pool)

    # --- what Prefect's engine records (EngineRecords; see sqlengine.py) -------------------
    def list_task_runs(self, flow_run_id: str) -> list[TaskRun]:
        return sqlengine.list_task_runs(self._db, flow_run_id)

    def list_artifacts(self, *, flow_run_id: str | None = None, key: str | None = None) -> list[Artifact]:
        return sqlengine.list_artifacts(self._db, flow_run_id=flow_run_id, key=key)

    def list_concurrency_limits(self) -> list[ConcurrencyLimit]:
        return sqlengine.list_limits(self._db)

    def set_concurrency_limit(self, name: str, limit: int | None) -> ConcurrencyLimit | None:
        return sqlengine.set_limit(self._db, name, limit)

    def propose_run_state(self, run_id: str, proposal: Proposal) -> Decision:
        return sqlengine.propose(self._db, run_id, proposal)

    def update_run(
        self,
        run_id: str,
        *,
        name: str | None = None,
        infrastructure_pid: str | None = None,
        prefect: Mapping[str, Any] | None = None,
    ) -> FlowRun:
        return sqlengine.update_run(self._db, run_id, name=name, infrastructure_pid=infrastructure_pid, prefect=prefect)

    def create_subflow_run(
        self,
        flow_name: str,
        *,
        parent_task_run_id: str | None,
        parameters: Mapping[str, Any],
        name: str | None = None,
        tags: Sequence[str] = (),
        prefect: Mapping[str, Any] | None = None,
    ) -> FlowRun:
        return sqlengine.create_subflow_run(
            self._db, flow_name, parent_task_run_id=parent_task_run_id, parameters=parameters, name=name,
            tags=tags, prefect=prefect or {},
        )  # fmt: skip

    def set_run_parent(self, run_id: str, parent_task_run_id: str | None) -> FlowRun:
        return sqlengine.set_parent(self._db, run_id, parent_task_run_id)

    def find_runs(
        self,
        *,
        ids: Sequence[str] | None = None,
        parent_task_run_ids: Sequence[str] | None = None,
        states: Sequence[str] | None = None,
        state_names: Sequence[str] | None = None,
        pool: str | None = None,
        limit: int = 200,
    ) -> list[FlowRun]:
        return sqlengine.find_runs(
            self._db, ids=ids, parent_task_run_ids=parent_task_run_ids, states=states, state_names=state_names,
            pool=pool, limit=limit,
        )  # fmt: skip

    def record_task_run(self, task_run: TaskRun) -> TaskRun:
        return sqlengine.record_task_run(self._db, task_run)

    def get_task_run(self, task_run_id: str) -> TaskRun | None:
        return sqlengine.get_task_run(self._db, task_run_id)

    def create_artifact(self, artifact: Artifact) -> Artifact:
        return sqlengine.create_artifact(self._db, artifact)

    def acquire_slots(
        self, names: Sequence[str], slots: int, lease_seconds: float, holder: Mapping[str, Any] | None = None
    ) -> tuple[str | None, list[ConcurrencyLimit]]:
        return sqlengine.acquire(self._db, names, slots, lease_seconds, holder)

    def renew_slots(self, lease_id: str, lease_seconds: float) -> bool:
        return sqlengine.renew(self._db, lease_id, lease_seconds)

    def release_slots(self, lease_id: str) -> bool:
        return sqlengine.release(self._db, lease_id)

    def ensure_flow(self, name: str) -> str:
        return sqlengine.ensure_flow(self._db, name)

    def get_flow(self, flow_id: str) -> str | None:
        return sqlengine.get_flow(self._db, flow_id)

    def get_resource_by_id(self, kind: str, resource_id: str) -> Resource | None:
        _check_kind(kind)
        return sqlengine.resource_by_id(self._db, kind, resource_id)

    # --- housekeeping ----------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        return export_store(self._db)

    def import_(self, data: Mapping[str, Any]) -> None:
        import_store(self._db, data)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqlStore({self.where!r})"


def _serial(tx: Tx, *, lock: bool = False) -> int:
    row = tx.one(f"SELECT serial FROM store_serial WHERE id = 1{tx.for_update() if lock else ''}")
    if row is None:
        raise StateError("the state store has no serial row; it was damaged outside buildsys")
    return int(row[0])


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise StateError(f"unknown resource kind {kind!r}", hint=f"one of: {', '.join(KINDS)}")


def _check_shapes(changes: Sequence[Change]) -> None:
    """Everything about the change set that needs no database: actions, kinds, specs, duplicates."""
    seen: set[tuple[str, str]] = set()
    for change in changes:
        label = f"{change.action} {change.kind} {change.name!r}"
        if change.action not in ACTIONS:
            raise StateError(f"unknown change action in {label}", hint=f"one of: {', '.join(ACTIONS)}")
        _check_kind(change.kind)
        if not isinstance(change.name, str) or not change.name:
            raise StateError(f"a {change.kind} change has no name")
        problem = resource_name_problem(change.kind, change.name) if change.action == "create" else None
        if problem:
            raise StateError(f"{change.kind} '{printable(change.name, one_line=True)}': the name {problem}")
        if change.action != "delete" and not isinstance(change.spec, Mapping):
            raise StateError(f"{label}: the change carries no spec")
        check_json(change.spec, f"the spec of {change.kind} {change.name!r}")
        check_json(change.source, f"the source of {change.kind} {change.name!r}")
        key = (change.kind, change.name)
        if key in seen:
            raise StateError(f"{change.kind} {change.name!r} appears more than once in one apply")
        seen.add(key)


def _existing_ids(tx: Tx, changes: Sequence[Change]) -> dict[tuple[str, str], tuple[str, float]]:
    """(kind, name) → (id, created_at) of the resources the change set touches that exist."""
    found: dict[tuple[str, str], tuple[str, float]] = {}
    for kind in KINDS:
        names = [c.name for c in changes if c.kind == kind]
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            rows = tx.run(
                f"SELECT name, id, created_at FROM resources WHERE kind = ? "
                f"AND name IN ({marks(chunk)})",
                (kind, *chunk),
            )
            found.update({(kind, str(n)): (str(i), float(c)) for n, i, c in rows})
    return found


def _check_existence(changes: Sequence[Change], existing: Mapping[tuple[str, str], object]) -> None:
    for change in changes:
        there = (change.kind, change.name) in existing
        if change.action == "create" and there:
            raise ConflictError(
                f"cannot create {change.kind} {change.name!r}: it already exists in the store",
                hint="someone created it since the plan was made; plan again",
            )
        if change.action != "create" and not there:
            raise ConflictError(
                f"cannot {change.action} {change.kind} {change.name!r}: it is not in the store",
                hint="someone deleted it since the plan was made; plan again",
            )


def _write(
    tx: Tx, changes: Sequence[Change], existing: Mapping[tuple[str, str], tuple[str, float]], serial: int
) -> None:
    """Pools before deployments; deletions last, in reverse kind order."""
    moment = now()
    order = {kind: i for i, kind in enumerate(KINDS)}
    writes = sorted((c for c in changes if c.action != "delete"), key=lambda c: order[c.kind])
    deletes = sorted((c for c in changes if c.action == "delete"), key=lambda c: -order[c.kind])
    inserts, updates = [], []
    for c in writes:
        spec = dict(c.spec or {})
        pool, limit = indexed_columns(c.kind, spec)
        source = None if c.source is None else dump(dict(c.source))
        if c.action == "create":
            inserts.append((c.kind, c.name, _new_id(), dump(spec), c.owner, source, moment, moment, serial, pool, limit))
        else:
            updates.append((dump(spec), c.owner, source, moment, serial, pool, limit, c.kind, c.name))
    tx.many(
        "INSERT INTO resources (kind, name, id, spec, owner, source, created_at, updated_at, serial, pool, "
        "concurrency_limit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        inserts,
    )
    tx.many(
        "UPDATE resources SET spec = ?, owner = ?, source = ?, updated_at = ?, serial = ?, pool = ?, "
        "concurrency_limit = ? WHERE kind = ? AND name = ?",
        updates,
    )
    tx.many("DELETE FROM resources WHERE kind = ? AND name = ?", [(c.kind, c.name) for c in deletes])
    sqlruns.prune_deployment_runs(
        tx,
        [c.name for c in writes if c.kind == "deployment" and c.action == "update"],
        [c.name for c in deletes if c.kind == "deployment"],
        moment,
    )


def _new_id() -> str:
    """A new resource's id (uuid imported here: with `platform` ~1.5 ms of every plan's start)."""
    import uuid

    return str(uuid.uuid4())
