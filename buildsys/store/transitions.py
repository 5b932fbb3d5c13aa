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
    ABORT,
    ACCEPT,
    CANCELLED,
    CANCELLING,
    COMPLETED,
    CRASHED,
    FAILED,
    PAUSED,
    PENDING,
    REJECT,
    RUNNING,
    SCHEDULED,
    STATE_TYPES,
    TERMINAL,
    WAIT,
    Decision,
    FlowRun,
    Proposal,
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
    retries: bool = True,
) -> FlowRun:
    """The run after an allowed move to `state` (call check_transition first). With `retries`
    False a failure stays a failure even with retries left (a state forced by hand)."""
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
    if retries and state in (FAILED, CRASHED) and run.state != CANCELLING and run.attempt <= run.max_retries:
        return retry(moved, now)
    return moved


# --- what a person does to a run by hand (the UI's Change state and Delete; the API's mark/DELETE) -

BY_HAND = (COMPLETED, FAILED, CANCELLED, CRASHED)  # the states a run may be given by hand
HELD = frozenset({PENDING, RUNNING, CANCELLING, PAUSED})  # a worker or a flow process may hold it


def mark(run: FlowRun, state: str, now: float, *, message: str | None = None, force: bool = False) -> FlowRun:
    """The run after a person set its state by hand (Prefect's "Change state"): only a final
    state. Without `force` the API's rules apply (check_transition: a finished run never changes; a
    FAILED run with retries left is retried); `force` also replaces a final state with another one
    (as Prefect's `force=True` skips its orchestration rules) and never retries."""
    if state not in STATE_TYPES:
        raise StateError(f"unknown flow-run state {state!r}", hint=f"one of: {', '.join(BY_HAND)}")
    if state not in BY_HAND:
        raise StateError(
            f"a run's state is set by hand only to a final state ({', '.join(BY_HAND)}), not {state}",
            hint="to run it again, retry it; to stop it, cancel it",
        )
    if run.state == state:
        raise ConflictError(f"flow run {run.name} ({run.id}) is already {state}")
    if not force:
        if run.state in TERMINAL:
            raise ConflictError(
                f"flow run {run.name} ({run.id}) has already finished ({run.state}); "
                "a finished run's state is replaced only when forced",
                hint="force it (the form's Force box; the API's \"force\": true)",
            )
        check_transition(run, state, None)
        return transition(run, state, now, message=message)
    return transition(run, state, now, message=message, retries=False)


def check_delete(run: FlowRun) -> None:
    """ConflictError when a run may not be deleted: while a worker or its flow may still hold it
    (Prefect deletes such a run anyway and its process reports to a run that is gone)."""
    if run.state in HELD:
        raise ConflictError(
            f"flow run {run.name} ({run.id}) is {run.state}: a run that may still be running is not deleted",
            hint="cancel it first, and delete it once it has ended",
        )


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


# --- Prefect's orchestration of flow-run states (what /prefect/api's set_state answers) -----------
#
# Prefect's engine and workers propose states and obey the answer: ACCEPT, REJECT (here is the
# state the run is in instead), ABORT (stop), WAIT (propose again after a delay). The rules below
# are Prefect's core flow policy as its clients rely on it, on top of the moves above:
#   * a finished run never changes (ABORT);
#   * out of CANCELLING only CANCELLED is accepted (REJECT anything else, even forced);
#   * PENDING is refused (ABORT) for a run already PENDING, RUNNING, CANCELLING or CANCELLED, except
#     that the first PENDING of a run a Prefect worker was handed (claimed for it) is acknowledged;
#   * PENDING or RUNNING before the run's scheduled time is told to WAIT;
#   * FAILED with engine retries left (empirical_policy.retries, counted by run_count) is REJECTED
#     with an "AwaitingRetry" state: the engine runs the flow again in the same process, so the run
#     stays held by its worker (stored as RUNNING "AwaitingRetry" until the retry starts);
#   * a repeated proposal with the transition id already accepted is accepted again, unchanged.

AWAITING_RETRY = "AwaitingRetry"
PREFECT_WORKER_PREFIX = "prefect-worker:"  # runs handed to Prefect's own workers are held by this


def decide(run: FlowRun, proposal: Proposal, now: float) -> Decision:
    """Prefect's answer to `proposal` for `run` (pure; the store saves `decision.run` if it moved)."""
    kind = proposal.type
    if kind not in STATE_TYPES:
        raise StateError(f"unknown flow-run state {kind!r}", hint=f"one of: {', '.join(STATE_TYPES)}")
    if proposal.transition_id and run.prefect.get("transition_id") == proposal.transition_id:
        return Decision(ACCEPT, run)
    if run.state in TERMINAL:
        return Decision(ABORT, run, f"the run has already finished ({run.state})")
    if run.state == CANCELLING and kind != CANCELLED:
        return Decision(REJECT, run, "the run is being cancelled; only CANCELLED is accepted")
    early = _too_early(run, kind, now)
    if early is not None:
        return early
    if kind == PENDING:
        return _pending(run, proposal, now)
    if kind == RUNNING:
        return _running(run, proposal, now)
    if kind == FAILED and run.state == RUNNING and not proposal.force:
        retried = _engine_retry(run, proposal, now)
        if retried is not None:
            return retried
    if kind == CANCELLING:
        return Decision(ACCEPT, _mark(cancel(run, now), proposal))
    return Decision(ACCEPT, _mark(_move(run, proposal, now), proposal))


def _too_early(run: FlowRun, kind: str, now: float) -> Decision | None:
    if kind not in (PENDING, RUNNING) or run.state != SCHEDULED or run.scheduled_at <= now + 0.5:
        return None
    delay = run.scheduled_at - now
    return Decision(WAIT, run, f"the run is scheduled to start in {delay:.0f} s", delay_seconds=delay)


def _pending(run: FlowRun, proposal: Proposal, now: float) -> Decision:
    handed = (run.worker or "").startswith(PREFECT_WORKER_PREFIX) and run.state == PENDING
    if handed and not run.prefect.get("acknowledged"):
        acknowledged = dataclasses.replace(run, prefect={**run.prefect, "acknowledged": True})
        return Decision(ACCEPT, _mark(acknowledged, proposal))
    if run.state in (PENDING, RUNNING, CANCELLING, CANCELLED):
        return Decision(ABORT, run, f"the run is already {run.state}")
    return Decision(ACCEPT, _mark(_move(run, proposal, now), proposal))


def _running(run: FlowRun, proposal: Proposal, now: float) -> Decision:
    if run.state == RUNNING and run.state_name != AWAITING_RETRY:
        return Decision(ABORT, run, "the run is already RUNNING")
    if run.state_name == AWAITING_RETRY and run.scheduled_at > now + 0.5:
        delay = run.scheduled_at - now
        return Decision(WAIT, run, f"the retry starts in {delay:.0f} s", delay_seconds=delay)
    moved = _move(run, proposal, now)
    moved = dataclasses.replace(moved, run_count=run.run_count + 1)
    return Decision(ACCEPT, _mark(moved, proposal))


def _move(run: FlowRun, proposal: Proposal, now: float) -> FlowRun:
    """An accepted move, with the buildsys bookkeeping of `transition` (lease, times, retries).
    Prefect's engine may end a run that never reached RUNNING (bad parameters), and a run started by
    hand has no worker to renew a lease, so it gets none."""
    if proposal.type == RUNNING and run.state_name == AWAITING_RETRY:
        run = dataclasses.replace(run, state=PENDING)  # the retry starts again from here
    moved = transition(run, proposal.type, now, name=proposal.name, message=proposal.message)
    if proposal.type == SCHEDULED and proposal.scheduled_at is not None:
        moved = dataclasses.replace(moved, scheduled_at=proposal.scheduled_at)
    if moved.worker is None and moved.state in (PENDING, RUNNING):
        moved = dataclasses.replace(moved, lease_expires_at=None)
    return moved


def _engine_retry(run: FlowRun, proposal: Proposal, now: float) -> Decision | None:
    policy = run.prefect.get("empirical_policy")
    retries = policy.get("retries") if isinstance(policy, dict) else None
    if not isinstance(retries, int) or isinstance(retries, bool) or run.run_count > retries:
        return None
    delay = _retry_delay(policy.get("retry_delay") if isinstance(policy, dict) else None, run.run_count)
    waiting = dataclasses.replace(
        run,
        state_name=AWAITING_RETRY,
        state_message=proposal.message,
        scheduled_at=now + delay,
    )
    reason = f"retry {run.run_count} of {retries}" + (f" in {delay:g} s" if delay else "")
    return Decision(REJECT, _mark(waiting, proposal), reason, reply_type=SCHEDULED)


def _retry_delay(value: object, run_count: int) -> float:
    if isinstance(value, list) and value:
        value = value[min(run_count - 1, len(value) - 1)]
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(min(value, 86_400 * 366))
    return 0.0


def _mark(run: FlowRun, proposal: Proposal) -> FlowRun:
    if not proposal.transition_id:
        return run
    return dataclasses.replace(run, prefect={**run.prefect, "transition_id": proposal.transition_id})
