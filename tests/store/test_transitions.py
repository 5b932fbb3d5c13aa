"""The flow-run state machine and the pool delivery rules as pure functions (no database)."""

from __future__ import annotations

import itertools

import pytest

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
from buildsys.store.sqlclaims import PoolRules, priority_groups
from buildsys.store.transitions import cancel, check_transition, expire, transition

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`

NOW = 1_000_000.0

ALLOWED = {
    SCHEDULED: {SCHEDULED, PENDING, CANCELLED},
    PENDING: {PENDING, RUNNING, SCHEDULED, CANCELLING, *TERMINAL},
    RUNNING: {SCHEDULED, PAUSED, CANCELLING, *TERMINAL},
    PAUSED: {SCHEDULED, RUNNING, CANCELLING, *TERMINAL},
    CANCELLING: set(TERMINAL),
    **{t: set() for t in TERMINAL},
}


def run(state: str = SCHEDULED, **extra: object) -> FlowRun:
    worker = None if state == SCHEDULED else "w1"
    base: dict[str, object] = {
        "id": "r-1", "name": "brave-otter", "deployment": "etl/x", "deployment_id": "d-1", "flow_name": "etl",
        "pool": "local", "queue": "default", "state": state, "worker": worker,
    }  # fmt: skip
    base.update(extra)
    return FlowRun(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("current", "target"), list(itertools.product(STATE_TYPES, STATE_TYPES)))
def test_the_transition_matrix(current: str, target: str) -> None:
    if target in ALLOWED[current]:
        check_transition(run(current), target, "w1")
        return
    with pytest.raises(ConflictError) as err:
        check_transition(run(current), target, "w1")
    if current in TERMINAL:
        assert err.value.message == f"flow run brave-otter (r-1) is already {current}; a finished run never changes"
    else:
        assert err.value.message == f"flow run brave-otter (r-1) cannot move from {current} to {target}"


def test_only_the_holding_worker_moves_a_run() -> None:
    with pytest.raises(ConflictError, match="is held by worker 'w1', not 'w2'"):
        check_transition(run(RUNNING), COMPLETED, "w2")
    check_transition(run(RUNNING), COMPLETED, None)  # the CLI / server acting for a person
    with pytest.raises(StateError, match="unknown flow-run state 'DONE'"):
        check_transition(run(RUNNING), "DONE", "w1")


def test_pending_sets_worker_and_lease_running_sets_start() -> None:
    pending = transition(run(SCHEDULED), PENDING, NOW, worker="w9", lease_seconds=10)
    assert (pending.state, pending.state_name, pending.worker, pending.lease_expires_at) == (
        PENDING, "Pending", "w9", NOW + 10,
    )  # fmt: skip
    running = transition(pending, RUNNING, NOW + 1, name="Booting", infrastructure_pid="77")
    assert (running.state_name, running.started_at, running.infrastructure_pid) == ("Booting", NOW + 1, "77")
    assert running.lease_expires_at == NOW + 1 + 30


def test_terminal_states_end_the_run_and_drop_the_lease() -> None:
    done = transition(run(RUNNING, lease_expires_at=NOW + 5), COMPLETED, NOW, exit_code=0, message="ok")
    assert (done.ended_at, done.lease_expires_at, done.exit_code, done.state_message) == (NOW, None, 0, "ok")


@pytest.mark.parametrize("failure", [FAILED, CRASHED])
def test_failures_retry_while_attempts_are_left(failure: str) -> None:
    first = run(RUNNING, max_retries=2, retry_delay_seconds=15.0)
    retried = transition(first, failure, NOW, message="boom")
    assert (retried.state, retried.state_name, retried.attempt, retried.scheduled_at, retried.worker) == (
        SCHEDULED, "AwaitingRetry", 2, NOW + 15, None,
    )  # fmt: skip
    assert retried.state_message == "boom"
    last = transition(run(RUNNING, attempt=3, max_retries=2), failure, NOW)
    assert (last.state, last.attempt) == (failure, 3)


def test_a_run_being_cancelled_does_not_retry() -> None:
    ended = transition(run(CANCELLING, max_retries=3), FAILED, NOW)
    assert (ended.state, ended.attempt) == (FAILED, 1)


def test_cancel_requests() -> None:
    assert cancel(run(SCHEDULED), NOW).state == CANCELLED
    assert cancel(run(RUNNING), NOW).state == CANCELLING
    assert cancel(run(PENDING), NOW).state == CANCELLING
    cancelling = run(CANCELLING)
    assert cancel(cancelling, NOW) is cancelling
    with pytest.raises(ConflictError, match="already COMPLETED; nothing to cancel"):
        cancel(run(COMPLETED), NOW)


def test_expired_leases() -> None:
    assert (expire(run(RUNNING), NOW).state, expire(run(RUNNING), NOW).ended_at) == (CRASHED, NOW)
    assert expire(run(PENDING, max_retries=1), NOW).state_name == "AwaitingRetry"
    assert expire(run(CANCELLING, max_retries=1), NOW).state == CANCELLED


def test_pool_rules_from_a_spec() -> None:
    rules = PoolRules.from_spec(
        {
            "paused": False,
            "concurrency_limit": 4,
            "queues": [
                {"name": "urgent", "priority": 1, "concurrency_limit": 2},
                {"name": "later"},
                {"name": "held", "priority": 5, "paused": True},
                "not-a-queue",
            ],
        }
    )
    assert rules == PoolRules(
        paused=False,
        limit=4,
        priorities={"urgent": 1, "later": 2, "held": 5},
        queue_limits={"urgent": 2},
        paused_queues=frozenset({"held"}),
    )
    assert PoolRules.from_spec(None) == PoolRules()
    assert PoolRules.from_spec({"is_paused": True}).paused


def test_priority_groups_waterfall_and_filters() -> None:
    rules = PoolRules(priorities={"a": 1, "b": 2, "c": 2, "held": 3}, paused_queues=frozenset({"held"}))
    assert priority_groups(rules, None, {"held"}) == [
        [("queue IN (?)", ["a"])],
        [("queue IN (?, ?)", ["b", "c"])],
        [("(queue IS NULL OR queue NOT IN (?, ?, ?, ?))", ["a", "b", "c", "held"])],
    ]
    assert priority_groups(rules, ["c", "x"], {"held"}) == [
        [("queue IN (?)", ["c"])],
        [
            ("(queue IS NULL OR queue NOT IN (?, ?, ?, ?))", ["a", "b", "c", "held"]),
            ("queue IN (?, ?)", ["c", "x"]),
        ],
    ]
    assert priority_groups(PoolRules(), None, set()) == [[]]
