"""Flow-run state transitions as pure functions: which moves are allowed, and the record after one.

Rules (Prefect §7.3 with leases): PENDING only from SCHEDULED (a claim; a PENDING run's own worker
may relabel it); RUNNING from PENDING; terminal states from PENDING/RUNNING/CANCELLING (CANCELLED
also from SCHEDULED/PAUSED); CANCELLING only moves to a terminal state; a terminal run never
changes. FAILED/CRASHED with retries left becomes SCHEDULED "AwaitingRetry" (attempt + 1).
"""

from __future__ import annotations

import dataclasses

from buildsys.errors import ConflictError, StateError
from buildsys.store.base import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    CRASHED,
    FAILED,
    PAUSED,
    PENDING,
    RUNNING,
    SCHEDULED,
    STATE_TYPES,
    TERMINAL,
    FlowRun,
)

DEFAULT_LEASE_SECONDS = 30.0

DEFAULT_NAMES = {
    SCHEDULED: "Scheduled",
    PENDING: "Pending",
    RUNNING: "Running",
    COMPLETED: "Completed",
    FAILED: "Failed",
    CANCELLED: "Cancelled",
    CRASHED: "Crashed",
    CANCELLING: "Cancelling",
    PAUSED: "Paused",
}

_ALLOWED: dict[str, frozenset[str]] = {
    SCHEDULED: frozenset({SCHEDULED, PENDING, CANCELLED}),
    PENDING: frozenset({PENDING, RUNNING, SCHEDULED, CANCELLING, *TERMINAL}),
    RUNNING: frozenset({SCHEDULED, PAUSED, CANCELLING, *TERMINAL}),
    PAUSED: frozenset({SCHEDULED, RUNNING, CANCELLING, *TERMINAL}),
    CANCELLING: TERMINAL,
}


def check_transition(run: FlowRun, state: str, worker: str | None) -> None:
    """Raise ConflictError (or StateError for an unknown state) when `run` may not move to `state`."""
    if state not in STATE_TYPES:
        raise StateError(f"unknown flow-run state {state!r}", hint=f"one of: {', '.join(STATE_TYPES)}")
    if run.state in TERMINAL:
        raise ConflictError(
            f"flow run {run.name} ({run.id}) is already {run.state}; a finished run never changes"
        )
    if state not in _ALLOWED.get(run.state, frozenset()):
        raise ConflictError(f"flow run {run.name} ({run.id}) cannot move from {run.state} to {state}")
    if state == PENDING and run.state == PENDING and worker != run.worker:
        raise ConflictError(f"flow run {run.name} ({run.id}) is already PENDING (claimed by {run.worker!r})")
    if worker is not None and run.worker is not None and run.worker != worker:
        raise ConflictError(
            f"flow run {run.name} ({run.id}) is held by worker {run.worker!r}, not {worker!r}"
        )


def transition(
    run: FlowRun,
    state: str,
    now: float,
    *,
    name: str | None = None,
    message: str | None = None,
    worker: str | None = None,
    infrastructure_pid: str | None = None,
    exit_code: int | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> FlowRun:
    """The run after an allowed move to `state` (call check_transition first)."""
    changes: dict[str, object] = {
        "state": state,
        "state_name": name or DEFAULT_NAMES[state],
        "state_message": message,
    }
    if infrastructure_pid is not None:
        changes["infrastructure_pid"] = infrastructure_pid
    if exit_code is not None:
        changes["exit_code"] = exit_code
    if state == PENDING:
        changes["worker"] = worker if worker is not None else run.worker
        changes["lease_expires_at"] = now + lease_seconds
    elif state == RUNNING:
        changes["started_at"] = run.started_at or now
        if run.lease_expires_at is None or run.lease_expires_at < now + lease_seconds:
            changes["lease_expires_at"] = now + lease_seconds
    elif state == SCHEDULED:
        changes.update(worker=None, lease_expires_at=None)
    elif state in TERMINAL:
        changes.update(ended_at=now, lease_expires_at=None)
    moved = dataclasses.replace(run, **changes)  # type: ignore[arg-type]
    if state in (FAILED, CRASHED) and run.state != CANCELLING and run.attempt <= run.max_retries:
        return retry(moved, now)
    return moved


def retry(run: FlowRun, now: float) -> FlowRun:
    """A failed attempt rescheduled: SCHEDULED "AwaitingRetry" after the retry delay."""
    return dataclasses.replace(
        run,
        state=SCHEDULED,
        state_name="AwaitingRetry",
        scheduled_at=now + run.retry_delay_seconds,
        attempt=run.attempt + 1,
        worker=None,
        lease_expires_at=None,
        ended_at=None,
    )


def cancel(run: FlowRun, now: float) -> FlowRun:
    """A cancellation request: unclaimed runs end at once, claimed ones go to CANCELLING."""
    if run.state in TERMINAL:
        raise ConflictError(f"flow run {run.name} ({run.id}) is already {run.state}; nothing to cancel")
    if run.state == CANCELLING:
        return run
    if run.state == SCHEDULED:
        return dataclasses.replace(
            run,
            state=CANCELLED,
            state_name="Cancelled",
            state_message="cancelled before a worker picked it up",
            ended_at=now,
        )
    return dataclasses.replace(run, state=CANCELLING, state_name="Cancelling", state_message="cancellation requested")


def expire(run: FlowRun, now: float) -> FlowRun:
    """A run whose worker stopped renewing its lease."""
    why = f"worker {run.worker!r} stopped renewing its lease"
    if run.state == CANCELLING:
        return dataclasses.replace(
            run, state=CANCELLED, state_name="Cancelled", state_message=why, ended_at=now, lease_expires_at=None
        )
    crashed = dataclasses.replace(
        run, state=CRASHED, state_name="Crashed", state_message=why, ended_at=now, lease_expires_at=None
    )
    return retry(crashed, now) if run.attempt <= run.max_retries else crashed
