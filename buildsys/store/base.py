"""The state-store protocol: one interface, several transports (SQLite file, PostgreSQL, HTTP).

Desired-state resources (pools, deployments, variables) are generic records with a JSON `spec`,
changed only through `apply` (one transaction guarded by the store's serial). Flow runs, logs and
workers are operational records with their own calls. Every record converts to and from plain JSON
(`to_dict` / `from_dict`) so the HTTP transport carries exactly the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple, Protocol, Self, TypeVar, runtime_checkable

from buildsys.records import Record

# Resource kinds, in the order apply writes them (pools before deployments; deletions run reversed).
KINDS = ("variable", "pool", "deployment")

# Flow-run state types (Prefect's enum); the state *name* is a free label on top.
SCHEDULED = "SCHEDULED"
PENDING = "PENDING"
RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
CRASHED = "CRASHED"
CANCELLING = "CANCELLING"
PAUSED = "PAUSED"
STATE_TYPES = (SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, CRASHED, CANCELLING, PAUSED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, CRASHED})
ACTIVE = frozenset({PENDING, RUNNING, CANCELLING})  # count against concurrency limits

T = TypeVar("T")
_set = object.__setattr__


class _Record:
    """JSON round-tripping for the frozen records below: Records (`buildsys.records`) and the
    dataclasses that `dataclasses.replace` is used on (runs, task runs, artifacts), alike: the
    fields as `dataclasses.asdict` gives them; back by a call of the class with the known keys,
    lists made tuples where the field is a tuple."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        if isinstance(self, Record):
            names: tuple[str, ...] = self.__match_args__
            return {name: _plain(getattr(self, name)) for name in names}
        return asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        names, tuples = _shape(cls)
        kwargs = {k: v for k, v in data.items() if k in names}
        for name in tuples:
            if isinstance(kwargs.get(name), list):
                kwargs[name] = tuple(kwargs[name])
        make: Callable[..., Self] = cls
        return make(**kwargs)


_shapes: dict[type, tuple[frozenset[str], tuple[str, ...]]] = {}


def _shape(cls: type) -> tuple[frozenset[str], tuple[str, ...]]:
    """A record class's field names, and those annotated as tuples (JSON gives them as lists)."""
    found = _shapes.get(cls)
    if found is None:
        if issubclass(cls, Record):
            names: tuple[str, ...] = cls.__match_args__
            types = {n: cls.__annotations__[n] for n in names}
        else:
            types = {f.name: f.type for f in fields(cls)}  # type: ignore[arg-type]
        found = _shapes[cls] = (frozenset(types), tuple(n for n, t in types.items() if "tuple" in str(t)))
    return found


def _plain(value: Any) -> Any:
    """A field's value as `dataclasses.asdict` copies it: dicts, lists and tuples rebuilt, anything
    else deep-copied (the scalars JSON holds are their own copies)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if isinstance(value, dict):
        return kind((_plain(k), _plain(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return kind(_plain(v) for v in value)
    import copy

    return copy.deepcopy(value)


class Resource(_Record, Record):
    """A desired-state resource as stored.

    kind  "pool" | "deployment" | "variable"
    name  pool name, "<flow name>/<deployment name>", or variable name (identity within the kind)
    spec  the resource's fields as applied (JSON). Spec keys by kind:
          pool:       type, description, base_job_template, concurrency_limit, paused,
                      queues: [{name, priority, concurrency_limit, description, paused}]
          deployment: flow_name, name, entrypoint, description, version, tags, parameters,
                      parameter_schema, enforce_parameter_schema, work_pool_name, work_queue_name,
                      job_variables, pull_steps, schedules, paused, concurrency_limit,
                      concurrency_options, triggers, retries, retry_delay_seconds
          variable:   value
    owner the project identity that created it (prune deletes only its own); None = unowned
    source where it came from: {"commit": sha|None, "ref": str|None, "file": str, "dirty": bool}
    """

    __slots__ = __match_args__ = (
        "kind", "name", "spec", "owner", "source", "id", "created_at", "updated_at", "serial",
    )
    kind: str
    name: str
    spec: Mapping[str, Any]
    owner: str | None
    source: Mapping[str, Any] | None
    id: str  # stable id assigned by the store at create
    created_at: float
    updated_at: float
    serial: int  # store serial of the last change to this resource

    def __init__(
        self,
        kind: str,
        name: str,
        spec: Mapping[str, Any],
        owner: str | None = None,
        source: Mapping[str, Any] | None = None,
        id: str = "",
        created_at: float = 0.0,
        updated_at: float = 0.0,
        serial: int = 0,
    ) -> None:
        _set(self, "kind", kind)
        _set(self, "name", name)
        _set(self, "spec", spec)
        _set(self, "owner", owner)
        _set(self, "source", source)
        _set(self, "id", id)
        _set(self, "created_at", created_at)
        _set(self, "updated_at", updated_at)
        _set(self, "serial", serial)


class Change(_Record, Record):
    """One write of an apply: create / update (full new spec) / delete."""

    __slots__ = __match_args__ = ("action", "kind", "name", "spec", "owner", "source")
    action: str  # "create" | "update" | "delete"
    kind: str
    name: str
    spec: Mapping[str, Any] | None
    owner: str | None
    source: Mapping[str, Any] | None

    def __init__(
        self,
        action: str,
        kind: str,
        name: str,
        spec: Mapping[str, Any] | None = None,
        owner: str | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> None:
        _set(self, "action", action)
        _set(self, "kind", kind)
        _set(self, "name", name)
        _set(self, "spec", spec)
        _set(self, "owner", owner)
        _set(self, "source", source)


class AppliedChanges(_Record, Record):
    """One apply as a store with transactions keeps it: the serial it made, when, and each change
    as {action, kind, name, owner, source, before, after} (the specs before and after; both left
    out when the apply was too large to keep them)."""

    __slots__ = __match_args__ = ("serial", "applied_at", "changes")
    serial: int
    applied_at: float
    changes: tuple[Mapping[str, Any], ...]

    def __init__(
        self,
        serial: int,
        applied_at: float,
        changes: tuple[Mapping[str, Any], ...] = (),
    ) -> None:
        _set(self, "serial", serial)
        _set(self, "applied_at", applied_at)
        _set(self, "changes", changes)


@dataclass(frozen=True)
class FlowRun(_Record):
    """A flow run: created by `run`, by schedules or by the API; claimed by a worker under a lease."""

    id: str
    name: str
    deployment: str  # "<flow>/<deployment>" (resource name)
    deployment_id: str
    flow_name: str
    pool: str
    queue: str | None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    job_variables: Mapping[str, Any] = field(default_factory=dict)  # the run's own overrides
    state: str = SCHEDULED
    state_name: str = "Scheduled"
    state_message: str | None = None
    scheduled_at: float = 0.0  # epoch seconds; claimable when <= now
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    worker: str | None = None
    lease_expires_at: float | None = None
    attempt: int = 1
    max_retries: int = 0
    retry_delay_seconds: float = 0.0
    infrastructure_pid: str | None = None
    auto_scheduled: bool = False
    idempotency_key: str | None = None
    tags: tuple[str, ...] = ()
    exit_code: int | None = None
    # Prefect's engine: the task run a subflow or `run_deployment` run was started from, how many
    # times the engine entered RUNNING, and what it sent that buildsys keeps as it is
    # (flow_version, empirical_policy {retries, retry_delay}, labels).
    parent_task_run_id: str | None = None
    run_count: int = 0
    prefect: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL


class RunState(_Record, Record):
    """One state a flow run entered, as its state history keeps it (oldest first): the first is
    the state it was created in; a failed attempt that is retried keeps its FAILED/CRASHED state
    before the SCHEDULED "AwaitingRetry" that follows it."""

    __slots__ = __match_args__ = ("run_id", "ts", "state", "name", "message", "attempt", "worker")
    run_id: str
    ts: float  # when the run entered the state (epoch seconds)
    state: str  # the state type (SCHEDULED … PAUSED)
    name: str  # the state's name ("AwaitingRetry", "Late", …)
    message: str | None
    attempt: int
    worker: str | None  # who held the run in this state (None when unclaimed)

    def __init__(
        self,
        run_id: str,
        ts: float,
        state: str,
        name: str,
        message: str | None = None,
        attempt: int = 1,
        worker: str | None = None,
    ) -> None:
        _set(self, "run_id", run_id)
        _set(self, "ts", ts)
        _set(self, "state", state)
        _set(self, "name", name)
        _set(self, "message", message)
        _set(self, "attempt", attempt)
        _set(self, "worker", worker)


# The answers to a state a Prefect client proposes for a run (EngineRecords.propose_run_state;
# the rules that choose one are transitions.decide).
ACCEPT, REJECT, ABORT, WAIT = "ACCEPT", "REJECT", "ABORT", "WAIT"


class Proposal(Record):
    """A state a Prefect client proposes for a flow run."""

    __slots__ = __match_args__ = ("type", "name", "message", "force", "transition_id", "scheduled_at")
    type: str
    name: str | None
    message: str | None
    force: bool
    transition_id: str | None
    scheduled_at: float | None  # a SCHEDULED proposal's scheduled time

    def __init__(
        self,
        type: str,
        name: str | None = None,
        message: str | None = None,
        force: bool = False,
        transition_id: str | None = None,
        scheduled_at: float | None = None,
    ) -> None:
        _set(self, "type", type)
        _set(self, "name", name)
        _set(self, "message", message)
        _set(self, "force", force)
        _set(self, "transition_id", transition_id)
        _set(self, "scheduled_at", scheduled_at)


class Decision(Record):
    """The answer to a Proposal and the run after it (unchanged unless it moved)."""

    __slots__ = __match_args__ = ("status", "run", "reason", "delay_seconds", "reply_type")
    status: str
    run: FlowRun
    reason: str | None
    delay_seconds: float
    # a REJECT's state for the client when it is not the stored one (the retry's SCHEDULED)
    reply_type: str | None

    def __init__(
        self,
        status: str,
        run: FlowRun,
        reason: str | None = None,
        delay_seconds: float = 0.0,
        reply_type: str | None = None,
    ) -> None:
        _set(self, "status", status)
        _set(self, "run", run)
        _set(self, "reason", reason)
        _set(self, "delay_seconds", delay_seconds)
        _set(self, "reply_type", reply_type)

    @property
    def moved(self) -> bool:
        return self.status == ACCEPT or (self.status == REJECT and self.reply_type is not None)


class LogLine(_Record, Record):
    __slots__ = __match_args__ = (
        "run_id", "seq", "ts", "message", "stream", "level", "logger", "task_run_id",
    )
    run_id: str
    seq: int  # increasing per run, assigned by the store (1-based)
    ts: float
    message: str
    stream: str  # stdout | stderr | worker | prefect (a record sent by Prefect's logger)
    level: int | None  # logging level of a Prefect record (20 INFO, 40 ERROR …)
    logger: str | None  # the logger's name, e.g. prefect.task_runs
    task_run_id: str | None

    def __init__(
        self,
        run_id: str,
        seq: int,
        ts: float,
        message: str,
        stream: str = "stdout",
        level: int | None = None,
        logger: str | None = None,
        task_run_id: str | None = None,
    ) -> None:
        _set(self, "run_id", run_id)
        _set(self, "seq", seq)
        _set(self, "ts", ts)
        _set(self, "message", message)
        _set(self, "stream", stream)
        _set(self, "level", level)
        _set(self, "logger", logger)
        _set(self, "task_run_id", task_run_id)


class LogEntry(NamedTuple):
    """A log line to append: (ts, stream, message) plus, for Prefect records, level/logger/task."""

    ts: float
    stream: str
    message: str
    level: int | None = None
    logger: str | None = None
    task_run_id: str | None = None


@dataclass(frozen=True)
class TaskRun(_Record):
    """A task run of a flow run, as Prefect's engine reported it (events/in or POST /task_runs/).

    history holds every state it reported, oldest first: {"type", "name", "ts", "message"}.
    """

    id: str
    flow_run_id: str
    name: str
    task_key: str = ""
    dynamic_key: str = ""
    state: str = PENDING
    state_name: str = "Pending"
    state_message: str | None = None
    state_ts: float = 0.0  # when the current state was entered
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    run_count: int = 0
    cached: bool = False
    tags: tuple[str, ...] = ()
    history: tuple[Mapping[str, Any], ...] = ()

    @property
    def attempts(self) -> int:
        return max(self.run_count, 1 if self.started_at is not None else 0)


@dataclass(frozen=True)
class Artifact(_Record):
    """A result a run published (Prefect's create_markdown_artifact and friends)."""

    id: str
    flow_run_id: str | None
    task_run_id: str | None = None
    key: str | None = None
    type: str | None = None
    description: str | None = None
    data: Any = None
    created_at: float = 0.0


class ConcurrencyLimit(_Record, Record):
    """At most `limit` slots of `name` held at once (tagged tasks take "tag:<tag>")."""

    __slots__ = __match_args__ = ("name", "limit", "active_slots", "id", "created_at")
    name: str
    limit: int
    active_slots: int
    id: str
    created_at: float

    def __init__(
        self,
        name: str,
        limit: int,
        active_slots: int = 0,
        id: str = "",
        created_at: float = 0.0,
    ) -> None:
        _set(self, "name", name)
        _set(self, "limit", limit)
        _set(self, "active_slots", active_slots)
        _set(self, "id", id)
        _set(self, "created_at", created_at)


class WorkerInfo(_Record, Record):
    __slots__ = __match_args__ = ("name", "pool", "last_heartbeat", "status", "type")
    name: str
    pool: str
    last_heartbeat: float
    status: str  # ONLINE | OFFLINE
    type: str | None

    def __init__(
        self,
        name: str,
        pool: str,
        last_heartbeat: float,
        status: str = "ONLINE",
        type: str | None = None,
    ) -> None:
        _set(self, "name", name)
        _set(self, "pool", pool)
        _set(self, "last_heartbeat", last_heartbeat)
        _set(self, "status", status)
        _set(self, "type", type)


@runtime_checkable
class StateStore(Protocol):
    """What every transport implements. All times are epoch seconds (float)."""

    url: str

    # --- desired state ---------------------------------------------------------------------
    def serial(self) -> int:
        """The store's serial: increases by one on every apply that changes anything."""
        ...

    def list_resources(self, kind: str | None = None) -> list[Resource]: ...

    def get_resource(self, kind: str, name: str) -> Resource | None: ...

    def apply(self, changes: Sequence[Change], *, expected_serial: int | None) -> int:
        """Apply all changes in one transaction, or none.

        Raises ConflictError if expected_serial is given and the serial moved, or if a create
        targets an existing resource / an update or delete a missing one. Returns the new serial
        (unchanged when `changes` is empty). Updating a deployment deletes its future
        auto-scheduled, never-started SCHEDULED runs (the scheduler makes new ones, Prefect §8.1);
        deleting one also cancels its other SCHEDULED runs. StateError for a malformed change set
        (unknown action/kind, missing spec, a resource twice, values that are not plain JSON).
        """
        ...

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
        """Create a SCHEDULED run of a deployment (NotFoundError if unknown; StateError if it has
        no work pool). With an idempotency key already used for that deployment, return the
        existing run instead. Pool, queue ("default" when the spec names none), retries and
        parameters (spec ∪ given) come from the deployment's spec; tags are spec tags ∪ given."""
        ...

    def get_run(self, run_id: str) -> FlowRun:
        """NotFoundError when missing; a unique prefix of the id, or the run's exact name, is accepted."""
        ...

    def list_runs(
        self,
        *,
        deployment: str | None = None,
        pool: str | None = None,
        states: Sequence[str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[FlowRun]:
        """Newest first."""
        ...

    def claim_runs(
        self,
        pool: str,
        worker: str,
        *,
        queues: Sequence[str] | None = None,
        limit: int = 1,
        lease_seconds: float = 30.0,
        wait: float = 0.0,
    ) -> list[FlowRun]:
        """Atomically move up to `limit` due SCHEDULED runs of the pool to PENDING for `worker`.

        Respects paused pool/queues, pool/queue/deployment concurrency limits (PENDING + RUNNING +
        CANCELLING count), queue priority (1 first), then scheduled time. Never hands one run to two
        workers. With `wait` > 0, waits up to that many seconds for a run before returning [].
        """
        ...

    def heartbeat(
        self, pool: str, worker: str, run_ids: Sequence[str], *, lease_seconds: float = 30.0
    ) -> list[str]:
        """Record the worker as alive and renew the leases of its runs.

        Returns the ids among `run_ids` whose cancellation was requested (state CANCELLING).
        """
        ...

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
        """Validated state transition (ConflictError when not allowed: a terminal run never
        restarts; PENDING only from SCHEDULED; a worker may only move its own runs). When a run
        moves to FAILED/CRASHED with retries left, it is rescheduled (SCHEDULED "AwaitingRetry",
        attempt + 1, after retry_delay_seconds) and that new state is returned."""
        ...

    def list_run_states(self, run_id: str) -> list[RunState]:
        """Every state the run has entered, oldest first (NotFoundError when the run is missing;
        runs created before the store kept histories have none)."""
        ...

    def request_cancel(self, run_id: str) -> FlowRun:
        """SCHEDULED (unclaimed) → CANCELLED at once; PENDING/RUNNING → CANCELLING; terminal →
        unchanged (ConflictError)."""
        ...

    def mark_run(self, run_id: str, state: str, *, message: str | None = None, force: bool = False) -> FlowRun:
        """A final state (COMPLETED, FAILED, CANCELLED, CRASHED) set by a person, recorded in the
        run's history like any other move (transitions.mark): without `force`, the moves
        set_run_state allows (ConflictError for a finished run; a failure with retries left is
        retried); with it, a finished run's state is replaced too, and a failure is never retried.
        StateError for any other state."""
        ...

    def delete_run(self, run_id: str) -> FlowRun:
        """Delete a run with its logs, state history and task runs (and its artifacts that have no
        key); returns it as it was. ConflictError while a worker may hold it (PENDING, RUNNING,
        CANCELLING, PAUSED): cancel it first."""
        ...

    def expire_leases(self, *, now: float | None = None) -> list[FlowRun]:
        """Runs whose lease expired (worker died): CRASHED, or rescheduled if retries are left."""
        ...

    # --- logs and workers ------------------------------------------------------------------
    def append_logs(self, run_id: str, lines: Sequence[tuple[float, str, str] | LogEntry]) -> int:
        """Append (ts, stream, message) lines or LogEntry records; returns the last seq."""
        ...

    def read_logs(self, run_id: str, *, after: int = 0, limit: int = 1000) -> list[LogLine]: ...

    def list_workers(self, pool: str | None = None) -> list[WorkerInfo]: ...

    # --- what Prefect's engine recorded (written through the Prefect-compatible API) --------
    def list_task_runs(self, flow_run_id: str) -> list[TaskRun]:
        """The run's task runs, in the order they were created."""
        ...

    def list_artifacts(self, *, flow_run_id: str | None = None, key: str | None = None) -> list[Artifact]:
        """Artifacts of one run or with one key, oldest first."""
        ...

    def list_concurrency_limits(self) -> list[ConcurrencyLimit]: ...

    def set_concurrency_limit(self, name: str, limit: int | None) -> ConcurrencyLimit | None:
        """Create or change a limit (None deletes it; returns None then)."""
        ...

    # --- housekeeping ----------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """Everything as JSON: {"version", "serial", "resources", "runs", "logs", "workers"}
        (schemas/state/export.json)."""
        ...

    def import_(self, data: Mapping[str, Any]) -> None:
        """Replace the contents with an export (one transaction; StateError naming the first
        problem when the document is invalid). The serial never goes backwards: it becomes
        max(current + 1, the export's serial), so plans made before the import are refused."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ApplyHistory(Protocol):
    """A store that keeps what its last applies wrote (the SQL stores; the UI's Plans page)."""

    def list_applies(self, limit: int = 20) -> list[AppliedChanges]:
        """The newest applies first."""
        ...

    def list_writes_of(self, kind: str, name: str, limit: int = 20) -> list[tuple[AppliedChanges, Mapping[str, Any]]]:
        """The newest applies that wrote one resource, each with its change of it (as in `changes`)."""
        ...


@runtime_checkable
class StepwiseStore(Protocol):
    """A store that cannot apply a change set in one transaction (a real Prefect server).

    The reconciler then checks every resource a plan touches before the first write, writes the
    changes one at a time in the plan's order, and stops at the first failure, saying what was
    written. Such a store also has its own normal form (`normalise`: what it would store for a
    desired spec, given what it stores now), and resources it holds without an owner were made
    outside buildsys: plans leave them alone unless imported.
    """

    def normalise(self, kind: str, spec: Mapping[str, Any], stored: Mapping[str, Any] | None) -> Mapping[str, Any]: ...

    def plan_resources(self, owner: str, deployments: Collection[str]) -> list[Resource]:
        """What a plan of project `owner` declaring `deployments` (names) is made against: every
        pool and variable, and of the deployments only those it declares or owns (the other
        projects' deployments on a shared server are not read: a plan never touches them)."""
        ...

    def changed_since(self, before: Mapping[str, Any] | None, current: Resource | None) -> str | None:
        """Why a resource is no longer as a plan saw it (`before` = its spec then, None = absent);
        None when it is unchanged."""
        ...

    def apply_change(self, change: Change, current: Resource | None) -> None:
        """Write one change, given the resource as it is now (None = absent)."""
        ...

    def serve_refusal(self, pool: str) -> str:
        """What to say to `buildsys worker start` (the store's runs are served by other workers)."""
        ...


@runtime_checkable
class EngineRecords(Protocol):
    """What /prefect/api writes for Prefect's engine and workers, beyond StateStore. Only the
    database stores (SQLite, PostgreSQL) have it: Prefect's clients talk to the server that owns the
    database (`buildsys server`'s /prefect/api, or the worker's own API over the file store)."""

    def propose_run_state(self, run_id: str, proposal: Proposal) -> Decision:
        """Prefect's orchestration rules (transitions.decide) applied in one transaction."""
        ...

    def update_run(
        self,
        run_id: str,
        *,
        name: str | None = None,
        infrastructure_pid: str | None = None,
        prefect: Mapping[str, Any] | None = None,
    ) -> FlowRun:
        """Rename a run, note its process, or merge Prefect's own fields into `prefect`."""
        ...

    def create_subflow_run(
        self,
        flow_name: str,
        *,
        parent_task_run_id: str | None,
        parameters: Mapping[str, Any],
        name: str | None = None,
        tags: Sequence[str] = (),
        prefect: Mapping[str, Any] | None = None,
    ) -> FlowRun: ...

    def set_run_parent(self, run_id: str, parent_task_run_id: str | None) -> FlowRun: ...

    def find_runs(
        self,
        *,
        ids: Sequence[str] | None = None,
        parent_task_run_ids: Sequence[str] | None = None,
        states: Sequence[str] | None = None,
        state_names: Sequence[str] | None = None,
        pool: str | None = None,
        limit: int = 200,
    ) -> list[FlowRun]: ...

    def record_task_run(self, task_run: TaskRun) -> TaskRun:
        """Create or update a task run; its state history is merged (see sqlengine.merge_task_run)."""
        ...

    def get_task_run(self, task_run_id: str) -> TaskRun | None: ...

    def create_artifact(self, artifact: Artifact) -> Artifact: ...

    def acquire_slots(
        self, names: Sequence[str], slots: int, lease_seconds: float, holder: Mapping[str, Any] | None = None
    ) -> tuple[str | None, list[ConcurrencyLimit]]:
        """A lease on `slots` of each existing limit among `names`; (None, limits) when one is full."""
        ...

    def renew_slots(self, lease_id: str, lease_seconds: float) -> bool: ...

    def release_slots(self, lease_id: str) -> bool: ...

    def ensure_flow(self, name: str) -> str:
        """The flow's id (created on first use)."""
        ...

    def get_flow(self, flow_id: str) -> str | None:
        """The name of the flow with this id."""
        ...

    def get_resource_by_id(self, kind: str, resource_id: str) -> Resource | None: ...
