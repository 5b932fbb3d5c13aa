"""The store contract: what every StateStore transport must do, as tests over the protocol only.

A transport's test module subclasses `StoreContract` and provides two fixtures, `store` and
`other_store` (two new, empty, independent stores per test), e.g.::

    class TestSqliteContract(StoreContract):
        @pytest.fixture
        def store(self, tmp_path): ...

Nothing here touches the database directly, so the same tests run against the HTTP transport.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from buildsys.errors import ConflictError, NotFoundError, StateError
from buildsys.store.base import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    CRASHED,
    FAILED,
    PENDING,
    RUNNING,
    SCHEDULED,
    Change,
    FlowRun,
    StateStore,
)

SOURCE = {"commit": "abc123", "ref": "main", "file": "prefect.yaml", "dirty": False}


def pool_spec(**extra: Any) -> dict[str, Any]:
    return {"type": "process", "description": "", "concurrency_limit": None, "paused": False, "queues": [], **extra}


def deployment_spec(name: str = "nightly", flow: str = "etl", **extra: Any) -> dict[str, Any]:
    return {
        "flow_name": flow,
        "name": name,
        "entrypoint": "flows/etl.py:etl",
        "work_pool_name": "local",
        "parameters": {"n": 1, "mode": "full"},
        "tags": ["team-a"],
        **extra,
    }


def create(kind: str, name: str, spec: Mapping[str, Any], owner: str | None = "proj") -> Change:
    return Change("create", kind, name, dict(spec), owner, SOURCE)


def seed(store: StateStore, pool: Mapping[str, Any] | None = None, **deployments: Mapping[str, Any]) -> int:
    """A pool "local" plus deployments etl/<name> (each with the given extra spec fields)."""
    changes = [create("pool", "local", pool_spec(**(pool or {})))]
    changes += [create("deployment", f"etl/{name}", deployment_spec(name, **extra)) for name, extra in deployments.items()]
    return store.apply(changes, expected_serial=None)


def names(runs: list[FlowRun]) -> list[str]:
    return [r.name for r in runs]


class StoreContract:
    """Every transport passes these. Subclasses provide the `store` fixture."""

    # --- desired state ---------------------------------------------------------------------
    def test_it_is_a_state_store(self, store: StateStore) -> None:
        assert isinstance(store, StateStore)
        assert isinstance(store.url, str) and store.url

    def test_a_new_store_is_empty_at_serial_zero(self, store: StateStore) -> None:
        assert store.serial() == 0
        assert store.list_resources() == []
        assert store.get_resource("pool", "local") is None

    def test_apply_creates_resources_and_bumps_the_serial_by_one(self, store: StateStore) -> None:
        before = time.time()
        serial = store.apply(
            [create("pool", "local", pool_spec()), create("deployment", "etl/nightly", deployment_spec())],
            expected_serial=0,
        )
        assert serial == 1
        assert store.serial() == 1
        pool = store.get_resource("pool", "local")
        assert pool is not None
        assert (pool.kind, pool.name, dict(pool.spec), pool.owner, dict(pool.source or {}), pool.serial) == (
            "pool", "local", pool_spec(), "proj", SOURCE, 1,
        )  # fmt: skip
        assert pool.id
        assert before <= pool.created_at == pool.updated_at <= time.time()
        deployment = store.get_resource("deployment", "etl/nightly")
        assert deployment is not None and deployment.id != pool.id
        assert dict(deployment.spec) == deployment_spec()

    def test_list_resources_sorted_and_by_kind(self, store: StateStore) -> None:
        store.apply(
            [
                create("deployment", "etl/b", deployment_spec("b")),
                create("variable", "region", {"value": "eu-west-1"}),
                create("deployment", "etl/a", deployment_spec("a")),
                create("pool", "local", pool_spec()),
            ],
            expected_serial=0,
        )
        assert [(r.kind, r.name) for r in store.list_resources()] == [
            ("deployment", "etl/a"), ("deployment", "etl/b"), ("pool", "local"), ("variable", "region"),
        ]  # fmt: skip
        assert [r.name for r in store.list_resources("deployment")] == ["etl/a", "etl/b"]
        assert [dict(r.spec) for r in store.list_resources("variable")] == [{"value": "eu-west-1"}]
        with pytest.raises(StateError, match="unknown resource kind 'flow'"):
            store.list_resources("flow")

    def test_empty_apply_changes_nothing(self, store: StateStore) -> None:
        seed(store)
        assert store.apply([], expected_serial=1) == 1
        assert store.apply([], expected_serial=None) == 1
        assert store.serial() == 1

    def test_stale_serial_is_refused_and_nothing_is_written(self, store: StateStore) -> None:
        seed(store)
        store.apply([create("variable", "a", {"value": 1})], expected_serial=1)
        with pytest.raises(ConflictError) as err:
            store.apply([create("variable", "b", {"value": 2})], expected_serial=1)
        assert err.value.message == "the store changed since the plan was made (serial 2, plan was made at 1)"
        assert store.get_resource("variable", "b") is None
        assert store.serial() == 2

    def test_create_of_an_existing_resource_writes_nothing(self, store: StateStore) -> None:
        seed(store)
        with pytest.raises(ConflictError) as err:
            store.apply(
                [create("variable", "fresh", {"value": 1}), create("pool", "local", pool_spec(paused=True))],
                expected_serial=1,
            )
        assert err.value.message == "cannot create pool 'local': it already exists in the store"
        assert store.get_resource("variable", "fresh") is None
        pool = store.get_resource("pool", "local")
        assert pool is not None and pool.spec["paused"] is False
        assert store.serial() == 1

    @pytest.mark.parametrize("action", ["update", "delete"])
    def test_update_or_delete_of_a_missing_resource_writes_nothing(self, store: StateStore, action: str) -> None:
        seed(store)
        with pytest.raises(ConflictError) as err:
            store.apply(
                [create("variable", "fresh", {"value": 1}), Change(action, "deployment", "etl/gone", {"x": 1})],
                expected_serial=1,
            )
        assert err.value.message == f"cannot {action} deployment 'etl/gone': it is not in the store"
        assert store.get_resource("variable", "fresh") is None
        assert store.serial() == 1

    def test_malformed_change_sets_are_refused(self, store: StateStore) -> None:
        with pytest.raises(StateError, match="appears more than once"):
            store.apply([create("variable", "a", {"value": 1}), create("variable", "a", {"value": 2})], expected_serial=0)
        with pytest.raises(StateError, match="unknown change action"):
            store.apply([Change("upsert", "variable", "a", {"value": 1})], expected_serial=0)
        with pytest.raises(StateError, match="unknown resource kind 'secret'"):
            store.apply([Change("create", "secret", "a", {"value": 1})], expected_serial=0)
        with pytest.raises(StateError, match="carries no spec"):
            store.apply([Change("create", "variable", "a")], expected_serial=0)
        assert store.serial() == 0
        assert store.list_resources() == []

    def test_update_and_delete(self, store: StateStore) -> None:
        seed(store, nightly={})
        original = store.get_resource("deployment", "etl/nightly")
        assert original is not None
        serial = store.apply(
            [
                Change("update", "deployment", "etl/nightly", deployment_spec(description="new"), "proj", SOURCE),
                Change("delete", "pool", "local"),
            ],
            expected_serial=1,
        )
        assert serial == 2
        updated = store.get_resource("deployment", "etl/nightly")
        assert updated is not None
        assert (updated.id, updated.created_at, updated.serial) == (original.id, original.created_at, 2)
        assert updated.updated_at >= original.updated_at
        assert updated.spec["description"] == "new"
        assert store.get_resource("pool", "local") is None

    def test_every_apply_bumps_the_serial_by_exactly_one(self, store: StateStore) -> None:
        for i in range(5):
            changes = [create("variable", f"v{i}-{j}", {"value": j}) for j in range(i + 1)]
            assert store.apply(changes, expected_serial=i) == i + 1
        assert store.serial() == 5
        assert len(store.list_resources("variable")) == 15

    def test_concurrent_applies_never_lose_an_update(self, store: StateStore) -> None:
        """Threads increment one variable with read-modify-apply; conflicts are retried."""
        seed(store)
        store.apply([create("variable", "counter", {"value": 0})], expected_serial=None)
        per_thread, threads = 10, 4
        conflicts: list[int] = []

        def bump() -> None:
            done = 0
            while done < per_thread:
                serial = store.serial()
                current = store.get_resource("variable", "counter")
                assert current is not None
                change = Change("update", "variable", "counter", {"value": current.spec["value"] + 1})
                try:
                    store.apply([change], expected_serial=serial)
                    done += 1
                except ConflictError:
                    conflicts.append(1)

        workers = [threading.Thread(target=bump) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(60)
        counter = store.get_resource("variable", "counter")
        assert counter is not None and counter.spec["value"] == per_thread * threads
        assert store.serial() == 2 + per_thread * threads

    # --- flow runs -------------------------------------------------------------------------
    def test_create_run_takes_defaults_from_the_deployment(self, store: StateStore) -> None:
        seed(store, nightly={"work_queue_name": "batch", "retries": 2, "retry_delay_seconds": 5})
        before = time.time()
        run = store.create_run("etl/nightly", parameters={"n": 5, "extra": True}, tags=["adhoc", "team-a"])
        deployment = store.get_resource("deployment", "etl/nightly")
        assert deployment is not None
        assert (run.deployment, run.deployment_id, run.flow_name, run.pool, run.queue) == (
            "etl/nightly", deployment.id, "etl", "local", "batch",
        )  # fmt: skip
        assert dict(run.parameters) == {"n": 5, "mode": "full", "extra": True}
        assert (run.state, run.state_name, run.attempt, run.max_retries, run.retry_delay_seconds) == (
            SCHEDULED, "Scheduled", 1, 2, 5.0,
        )  # fmt: skip
        assert run.tags == ("team-a", "adhoc")
        assert run.name and run.id and run.worker is None and not run.auto_scheduled
        assert before <= run.created_at <= run.scheduled_at <= time.time()
        assert store.get_run(run.id) == run

    def test_create_run_queue_defaults_to_default_and_can_be_overridden(self, store: StateStore) -> None:
        seed(store, nightly={})
        assert store.create_run("etl/nightly").queue == "default"
        run = store.create_run("etl/nightly", queue="urgent", name="my-run", job_variables={"env": {"A": "1"}})
        assert (run.queue, run.name, dict(run.job_variables)) == ("urgent", "my-run", {"env": {"A": "1"}})

    def test_create_run_of_an_unknown_deployment(self, store: StateStore) -> None:
        seed(store)
        with pytest.raises(NotFoundError, match="deployment 'etl/missing' not found"):
            store.create_run("etl/missing")

    def test_idempotency_key_returns_the_existing_run(self, store: StateStore) -> None:
        seed(store, nightly={}, hourly={})
        first = store.create_run("etl/nightly", idempotency_key="k1", parameters={"n": 2})
        again = store.create_run("etl/nightly", idempotency_key="k1", parameters={"n": 3})
        other = store.create_run("etl/hourly", idempotency_key="k1")
        assert again == first
        assert other.id != first.id
        assert len(store.list_runs()) == 2

    def test_get_run_by_unique_prefix(self, store: StateStore) -> None:
        seed(store, nightly={})
        run = store.create_run("etl/nightly")
        assert store.get_run(run.id[:8]).id == run.id
        assert store.get_run(run.name).id == run.id
        with pytest.raises(NotFoundError, match="flow run 'nope' not found"):
            store.get_run("nope")

    def test_list_runs_newest_first_with_filters(self, store: StateStore) -> None:
        seed(store, nightly={}, hourly={})
        made = [store.create_run("etl/nightly" if i % 2 else "etl/hourly", name=f"r{i}") for i in range(6)]
        assert names(store.list_runs()) == ["r5", "r4", "r3", "r2", "r1", "r0"]
        assert names(store.list_runs(deployment="etl/nightly")) == ["r5", "r3", "r1"]
        assert names(store.list_runs(limit=2, offset=1)) == ["r4", "r3"]
        store.claim_runs("local", "w1", limit=1)
        assert names(store.list_runs(states=[PENDING])) == ["r0"]
        assert names(store.list_runs(pool="other")) == []
        assert len(made) == 6

    def test_claim_moves_due_runs_to_pending_under_a_lease(self, store: StateStore) -> None:
        seed(store, nightly={})
        run = store.create_run("etl/nightly")
        store.create_run("etl/nightly", scheduled_at=time.time() + 3600, name="later")
        before = time.time()
        claimed = store.claim_runs("local", "w1", limit=5, lease_seconds=60)
        assert [r.id for r in claimed] == [run.id]
        got = claimed[0]
        assert (got.state, got.state_name, got.worker) == (PENDING, "Pending", "w1")
        assert got.lease_expires_at is not None and before + 60 <= got.lease_expires_at <= time.time() + 60
        assert store.get_run(run.id) == got
        assert store.claim_runs("local", "w2", limit=5) == []
        assert store.claim_runs("other-pool", "w2") == []

    def test_claim_order_follows_queue_priority_then_schedule(self, store: StateStore) -> None:
        queues = [{"name": "low", "priority": 3}, {"name": "urgent", "priority": 1}, {"name": "normal", "priority": 2}]
        seed(store, pool_spec(queues=queues), nightly={})
        now = time.time()
        for name, queue, offset in [
            ("undeclared", "misc", -50), ("low", "low", -40), ("normal-late", "normal", -10),
            ("normal-early", "normal", -20), ("urgent", "urgent", -1),
        ]:  # fmt: skip
            store.create_run("etl/nightly", name=name, queue=queue, scheduled_at=now + offset)
        claimed = store.claim_runs("local", "w1", limit=10)
        assert names(claimed) == ["urgent", "normal-early", "normal-late", "low", "undeclared"]

    def test_claim_limit_and_queue_filter(self, store: StateStore) -> None:
        seed(store, nightly={})
        now = time.time()
        for i, queue in enumerate(["a", "b", "a", "b"]):
            store.create_run("etl/nightly", name=f"{queue}{i}", queue=queue, scheduled_at=now - 10 + i)
        assert names(store.claim_runs("local", "w1", queues=["b"], limit=1)) == ["b1"]
        assert names(store.claim_runs("local", "w1", queues=["b"], limit=5)) == ["b3"]
        assert names(store.claim_runs("local", "w1", limit=5)) == ["a0", "a2"]

    def test_paused_pool_and_paused_queue_deliver_nothing(self, store: StateStore) -> None:
        seed(store, pool_spec(paused=True, queues=[{"name": "held", "priority": 1, "paused": True}]), nightly={})
        store.create_run("etl/nightly", name="in-held", queue="held")
        store.create_run("etl/nightly", name="in-default")
        assert store.claim_runs("local", "w1", limit=5) == []
        store.apply(
            [Change("update", "pool", "local", pool_spec(queues=[{"name": "held", "priority": 1, "paused": True}]))],
            expected_serial=None,
        )
        assert names(store.claim_runs("local", "w1", limit=5)) == ["in-default"]

    def test_pool_concurrency_limit(self, store: StateStore) -> None:
        seed(store, pool_spec(concurrency_limit=2), nightly={})
        runs = [store.create_run("etl/nightly", name=f"r{i}", scheduled_at=time.time() - 10 + i) for i in range(4)]
        assert names(store.claim_runs("local", "w1", limit=5)) == ["r0", "r1"]
        assert store.claim_runs("local", "w1", limit=5) == []
        store.set_run_state(runs[0].id, RUNNING, worker="w1")
        assert store.claim_runs("local", "w1", limit=5) == []
        store.set_run_state(runs[0].id, COMPLETED, worker="w1")
        assert names(store.claim_runs("local", "w1", limit=5)) == ["r2"]

    def test_queue_concurrency_limit(self, store: StateStore) -> None:
        seed(store, pool_spec(queues=[{"name": "small", "priority": 1, "concurrency_limit": 1}]), nightly={})
        now = time.time()
        store.create_run("etl/nightly", name="s1", queue="small", scheduled_at=now - 3)
        store.create_run("etl/nightly", name="s2", queue="small", scheduled_at=now - 2)
        store.create_run("etl/nightly", name="d1", scheduled_at=now - 1)
        assert names(store.claim_runs("local", "w1", limit=5)) == ["s1", "d1"]
        assert store.claim_runs("local", "w1", limit=5) == []

    def test_deployment_concurrency_limit(self, store: StateStore) -> None:
        seed(store, nightly={"concurrency_limit": 1}, hourly={})
        now = time.time()
        first = store.create_run("etl/nightly", name="n1", scheduled_at=now - 4)
        store.create_run("etl/nightly", name="n2", scheduled_at=now - 3)
        store.create_run("etl/hourly", name="h1", scheduled_at=now - 2)
        assert names(store.claim_runs("local", "w1", limit=5)) == ["n1", "h1"]
        assert store.claim_runs("local", "w1", limit=5) == []
        store.set_run_state(first.id, CRASHED, worker="w1")
        assert names(store.claim_runs("local", "w1", limit=5)) == ["n2"]

    def test_deployment_limit_with_cancel_new_cancels_the_runs_that_collide(self, store: StateStore) -> None:
        options = {"collision_strategy": "CANCEL_NEW"}
        seed(store, nightly={"concurrency_limit": 1, "concurrency_options": options}, hourly={})
        now = time.time()
        store.create_run("etl/nightly", name="n1", scheduled_at=now - 4)
        store.create_run("etl/nightly", name="n2", scheduled_at=now - 3)
        store.create_run("etl/hourly", name="h1", scheduled_at=now - 2)
        store.create_run("etl/nightly", name="n3", scheduled_at=now + 3600)
        assert names(store.claim_runs("local", "w1", limit=5)) == ["n1", "h1"]
        states = {r.name: (r.state, r.state_message) for r in store.list_runs()}
        assert states == {
            "n1": (PENDING, None),
            "n2": (CANCELLED, "the deployment is at its concurrency limit (collision strategy CANCEL_NEW)"),
            "h1": (PENDING, None),
            "n3": (SCHEDULED, None),
        }

    def test_claim_with_wait_picks_up_a_run_created_meanwhile(self, store: StateStore) -> None:
        seed(store, nightly={})
        result: list[list[FlowRun]] = []
        returned_at: list[float] = []

        def claim() -> None:
            result.append(store.claim_runs("local", "w1", wait=10))
            returned_at.append(time.time())

        waiter = threading.Thread(target=claim)
        waiter.start()
        run = store.create_run("etl/nightly")
        waiter.join(15)
        assert [[r.id for r in got] for got in result] == [[run.id]]
        assert returned_at[0] - run.created_at < 5.0  # woke for it, long before the 10 s deadline

    def test_claim_with_wait_returns_empty_at_the_deadline(self, store: StateStore) -> None:
        seed(store, nightly={})
        start = time.monotonic()
        assert store.claim_runs("local", "w1", wait=0.3) == []
        assert 0.3 <= time.monotonic() - start < 5.0

    def test_heartbeat_renews_leases_and_reports_cancellations(self, store: StateStore) -> None:
        seed(store, nightly={})
        a = store.create_run("etl/nightly", name="a")
        b = store.create_run("etl/nightly", name="b")
        store.claim_runs("local", "w1", limit=2, lease_seconds=5)
        assert store.heartbeat("local", "w1", [a.id, b.id], lease_seconds=120) == []
        lease = store.get_run(a.id).lease_expires_at
        assert lease is not None and lease >= time.time() + 100
        store.request_cancel(b.id)
        assert store.heartbeat("local", "w1", [a.id, b.id]) == [b.id]
        assert [(w.name, w.pool, w.status) for w in store.list_workers()] == [("w1", "local", "ONLINE")]
        assert store.list_workers("other") == []

    def test_run_lifecycle_to_completed(self, store: StateStore) -> None:
        seed(store, nightly={})
        run = store.create_run("etl/nightly")
        store.claim_runs("local", "w1")
        running = store.set_run_state(run.id, RUNNING, worker="w1", infrastructure_pid="4242")
        assert (running.state, running.state_name, running.infrastructure_pid) == (RUNNING, "Running", "4242")
        assert running.started_at is not None
        done = store.set_run_state(run.id, COMPLETED, worker="w1", exit_code=0, message="all good")
        assert (done.state, done.state_name, done.state_message, done.exit_code) == (COMPLETED, "Completed", "all good", 0)
        assert done.ended_at is not None and done.lease_expires_at is None and done.is_terminal
        assert store.get_run(run.id) == done

    def test_transition_rules(self, store: StateStore) -> None:
        seed(store, nightly={})
        run = store.create_run("etl/nightly", name="r")
        with pytest.raises(ConflictError, match="cannot move from SCHEDULED to RUNNING"):
            store.set_run_state(run.id, RUNNING)
        pending = store.set_run_state(run.id, PENDING, worker="w1")
        assert (pending.state, pending.worker) == (PENDING, "w1")
        with pytest.raises(ConflictError, match="already PENDING"):
            store.set_run_state(run.id, PENDING, worker="w2")
        with pytest.raises(ConflictError, match="is held by worker 'w1', not 'w2'"):
            store.set_run_state(run.id, RUNNING, worker="w2")
        store.set_run_state(run.id, RUNNING, worker="w1")
        with pytest.raises(ConflictError, match="cannot move from RUNNING to PENDING"):
            store.set_run_state(run.id, PENDING, worker="w1")
        store.request_cancel(run.id)
        with pytest.raises(ConflictError, match="cannot move from CANCELLING to RUNNING"):
            store.set_run_state(run.id, RUNNING, worker="w1")
        store.set_run_state(run.id, CANCELLED, worker="w1")
        for state in (SCHEDULED, RUNNING, COMPLETED):
            with pytest.raises(ConflictError, match=r"is already CANCELLED; a finished run never changes"):
                store.set_run_state(run.id, state)
        with pytest.raises(StateError, match="unknown flow-run state 'DONE'"):
            store.set_run_state(store.create_run("etl/nightly").id, "DONE")

    def test_failure_with_retries_left_is_rescheduled(self, store: StateStore) -> None:
        seed(store, nightly={"retries": 1, "retry_delay_seconds": 30})
        run = store.create_run("etl/nightly")
        store.claim_runs("local", "w1")
        store.set_run_state(run.id, RUNNING, worker="w1")
        before = time.time()
        retried = store.set_run_state(run.id, FAILED, worker="w1", message="boom")
        assert (retried.state, retried.state_name, retried.attempt, retried.worker) == (
            SCHEDULED, "AwaitingRetry", 2, None,
        )  # fmt: skip
        assert before + 30 <= retried.scheduled_at <= time.time() + 30
        assert store.claim_runs("local", "w1") == []  # not due yet
        store.set_run_state(run.id, PENDING, worker="w1")
        store.set_run_state(run.id, RUNNING, worker="w1")
        final = store.set_run_state(run.id, FAILED, worker="w1", message="boom again")
        assert (final.state, final.attempt, final.state_message) == (FAILED, 2, "boom again")

    def test_request_cancel(self, store: StateStore) -> None:
        seed(store, nightly={})
        waiting = store.create_run("etl/nightly", name="waiting", scheduled_at=time.time() + 60)
        cancelled = store.request_cancel(waiting.id)
        assert (cancelled.state, cancelled.state_name) == (CANCELLED, "Cancelled")
        assert cancelled.ended_at is not None
        active = store.create_run("etl/nightly", name="active")
        store.claim_runs("local", "w1")
        store.set_run_state(active.id, RUNNING, worker="w1")
        assert store.request_cancel(active.id).state == CANCELLING
        assert store.request_cancel(active.id).state == CANCELLING
        with pytest.raises(ConflictError, match="is already CANCELLED; nothing to cancel"):
            store.request_cancel(waiting.id)

    def test_a_final_state_set_by_hand_and_a_run_deleted(self, store: StateStore) -> None:
        seed(store, nightly={}, retried={"retries": 1})
        run = store.create_run("etl/nightly")
        store.claim_runs("local", "w1")
        store.set_run_state(run.id, RUNNING, worker="w1")
        with pytest.raises(StateError, match="set by hand only to a final state"):
            store.mark_run(run.id, SCHEDULED, force=True)
        failed = store.mark_run(run.id, FAILED, message="stuck")
        assert (failed.state, failed.state_message, failed.ended_at is not None) == (FAILED, "stuck", True)
        with pytest.raises(ConflictError, match="replaced only when forced"):
            store.mark_run(run.id, COMPLETED)
        with pytest.raises(ConflictError, match="is already FAILED"):
            store.mark_run(run.id, FAILED, force=True)
        done = store.mark_run(run.id, COMPLETED, message="checked by hand", force=True)
        assert (done.state, done.state_name, done.state_message) == (COMPLETED, "Completed", "checked by hand")
        assert [(s.state, s.message) for s in store.list_run_states(run.id)][-2:] == [
            (FAILED, "stuck"), (COMPLETED, "checked by hand")]
        waiting = store.create_run("etl/nightly", scheduled_at=time.time() + 60)
        with pytest.raises(ConflictError, match="cannot move from SCHEDULED to COMPLETED"):
            store.mark_run(waiting.id, COMPLETED)
        assert store.mark_run(waiting.id, COMPLETED, force=True).state == COMPLETED
        # the API's rules without force: a failure with retries left is retried; forced, it stays
        again = store.create_run("etl/retried")
        store.claim_runs("local", "w1")
        assert store.mark_run(again.id, FAILED).state_name == "AwaitingRetry"
        store.claim_runs("local", "w1")
        assert store.mark_run(again.id, FAILED, force=True).state == FAILED
        with pytest.raises(NotFoundError):
            store.mark_run("no-such-run", FAILED)

        # delete: a run with its logs and states, never one that may still be running
        run, other = store.create_run("etl/nightly"), store.create_run("etl/nightly")
        store.claim_runs("local", "w1", limit=2)
        store.set_run_state(run.id, RUNNING, worker="w1")
        store.append_logs(run.id, [(1.0, "stdout", "one")])
        store.append_logs(other.id, [(1.0, "stdout", "kept")])
        with pytest.raises(ConflictError, match="is RUNNING: a run that may still be running is not deleted"):
            store.delete_run(run.id)
        store.set_run_state(run.id, COMPLETED, worker="w1")
        gone = store.delete_run(run.id[:10])  # a unique prefix names it, as everywhere
        assert (gone.id, gone.state) == (run.id, COMPLETED)
        for call in (store.get_run, store.list_run_states, store.read_logs, store.delete_run):
            with pytest.raises(NotFoundError):
                call(run.id)
        assert run.id not in [r.id for r in store.list_runs()] and other.id in [r.id for r in store.list_runs()]
        assert [x.message for x in store.read_logs(other.id)] == ["kept"]
        scheduled = store.create_run("etl/nightly", scheduled_at=time.time() + 60)
        assert store.delete_run(scheduled.id).state == SCHEDULED  # nobody holds it yet

    def test_expired_leases_crash_or_retry(self, store: StateStore) -> None:
        seed(store, once={}, twice={"retries": 1}, stopping={})
        runs = {name: store.create_run(f"etl/{name}", name=name) for name in ("once", "twice", "stopping")}
        store.claim_runs("local", "w1", limit=3, lease_seconds=10)
        store.set_run_state(runs["stopping"].id, RUNNING, worker="w1")
        store.request_cancel(runs["stopping"].id)
        assert store.expire_leases() == []
        expired = {r.name: r for r in store.expire_leases(now=time.time() + 3600)}
        assert {n: (r.state, r.state_name, r.attempt) for n, r in expired.items()} == {
            "once": (CRASHED, "Crashed", 1),
            "twice": (SCHEDULED, "AwaitingRetry", 2),
            "stopping": (CANCELLED, "Cancelled", 1),
        }
        assert expired["once"].state_message == "worker 'w1' stopped renewing its lease"
        assert {n: store.get_run(r.id) for n, r in expired.items()} == expired

    def test_changing_a_deployment_drops_its_future_auto_scheduled_runs(self, store: StateStore) -> None:
        seed(store, nightly={}, hourly={})
        now = time.time()
        keep = {
            "manual": store.create_run("etl/nightly", name="manual", scheduled_at=now + 60),
            "past-auto": store.create_run("etl/nightly", name="past-auto", scheduled_at=now - 60, auto_scheduled=True),
            "other": store.create_run("etl/hourly", name="other", scheduled_at=now + 60, auto_scheduled=True),
        }
        store.create_run("etl/nightly", name="future-auto", scheduled_at=now + 60, auto_scheduled=True)
        store.apply([Change("update", "deployment", "etl/nightly", deployment_spec(version="2"))], expected_serial=None)
        assert sorted(names(store.list_runs())) == sorted(keep)
        store.apply([Change("delete", "deployment", "etl/nightly")], expected_serial=None)
        after = {r.name: r.state for r in store.list_runs()}
        assert after == {"manual": CANCELLED, "past-auto": CANCELLED, "other": SCHEDULED}
        assert store.get_run(keep["manual"].id).state_message == "its deployment was deleted"

    # --- logs and workers ------------------------------------------------------------------
    def test_logs_are_numbered_per_run(self, store: StateStore) -> None:
        seed(store, nightly={})
        a = store.create_run("etl/nightly")
        b = store.create_run("etl/nightly")
        assert store.append_logs(a.id, [(1.0, "stdout", "one"), (2.0, "stderr", "two")]) == 2
        assert store.append_logs(b.id, [(3.0, "worker", "b-one")]) == 1
        assert store.append_logs(a.id, [(4.0, "stdout", "three")]) == 3
        assert store.append_logs(a.id, []) == 3
        lines = store.read_logs(a.id)
        assert [(x.seq, x.ts, x.stream, x.message) for x in lines] == [
            (1, 1.0, "stdout", "one"), (2, 2.0, "stderr", "two"), (3, 4.0, "stdout", "three"),
        ]  # fmt: skip
        assert [x.message for x in store.read_logs(a.id, after=1, limit=1)] == ["two"]
        assert [x.message for x in store.read_logs(b.id)] == ["b-one"]
        with pytest.raises(NotFoundError):
            store.append_logs("no-such-run", [(1.0, "stdout", "x")])
        with pytest.raises(NotFoundError):
            store.read_logs("no-such-run")

    # --- state history ---------------------------------------------------------------------
    def test_the_state_history_keeps_every_state_a_run_entered(self, store: StateStore) -> None:
        seed(store, nightly={"retries": 1})
        run = store.create_run("etl/nightly")
        for state, message in ((None, None), (RUNNING, None), (FAILED, "boom"), (None, None), (RUNNING, None), (COMPLETED, None)):
            if state is None:
                assert [r.id for r in store.claim_runs("local", "w1")] == [run.id]
            else:
                store.set_run_state(run.id, state, message=message, worker="w1")
        states = store.list_run_states(run.id[:8])
        assert [(s.run_id, s.state, s.name, s.attempt, s.worker, s.message) for s in states] == [
            (run.id, SCHEDULED, "Scheduled", 1, None, None),
            (run.id, PENDING, "Pending", 1, "w1", None),
            (run.id, RUNNING, "Running", 1, "w1", None),
            (run.id, FAILED, "Failed", 1, "w1", "boom"),  # the failed attempt, then its retry
            (run.id, SCHEDULED, "AwaitingRetry", 2, None, "boom"),
            (run.id, PENDING, "Pending", 2, "w1", None),
            (run.id, RUNNING, "Running", 2, "w1", None),
            (run.id, COMPLETED, "Completed", 2, "w1", None),
        ]
        assert states[0].ts == run.created_at
        assert [s.ts for s in states] == sorted(s.ts for s in states)
        assert states[-1].ts == store.get_run(run.id).ended_at

        cancelled, crashed = store.create_run("etl/nightly"), store.create_run("etl/nightly")
        store.request_cancel(cancelled.id)
        store.claim_runs("local", "w2")
        store.expire_leases(now=time.time() + 3600)  # w2 stopped renewing: crashed, then retried
        assert [(s.state, s.name) for s in store.list_run_states(cancelled.id)] == [
            (SCHEDULED, "Scheduled"), (CANCELLED, "Cancelled"),
        ]  # fmt: skip
        assert [(s.state, s.name, s.attempt) for s in store.list_run_states(crashed.id)] == [
            (SCHEDULED, "Scheduled", 1), (PENDING, "Pending", 1), (CRASHED, "Crashed", 1), (SCHEDULED, "AwaitingRetry", 2),
        ]  # fmt: skip
        with pytest.raises(NotFoundError):
            store.list_run_states("no-such-run")

    # --- housekeeping ----------------------------------------------------------------------
    def test_export_import_round_trip(self, store: StateStore, other_store: StateStore) -> None:
        seed(store, nightly={"retries": 1})
        store.apply([create("variable", "region", {"value": "eu"})], expected_serial=None)
        run = store.create_run("etl/nightly", tags=["x"])
        store.claim_runs("local", "w1")
        store.append_logs(run.id, [(1.0, "stdout", "hello")])
        exported = store.export()
        assert (exported["version"], exported["serial"]) == (1, 2)
        assert [(r["kind"], r["name"]) for r in exported["resources"]] == [
            ("deployment", "etl/nightly"), ("pool", "local"), ("variable", "region"),
        ]  # fmt: skip
        assert [r["id"] for r in exported["runs"]] == [run.id]
        other_store.import_(exported)
        assert other_store.export() == exported
        assert other_store.get_run(run.id) == store.get_run(run.id)
        assert other_store.append_logs(run.id, [(2.0, "stdout", "more")]) == 2

    def test_import_replaces_everything_and_never_lowers_the_serial(self, store: StateStore) -> None:
        seed(store, nightly={})
        snapshot = store.export()
        for i in range(3):
            store.apply([create("variable", f"v{i}", {"value": i})], expected_serial=None)
        store.create_run("etl/nightly")
        store.import_(snapshot)
        assert store.serial() == 5
        assert [r.name for r in store.list_resources()] == ["etl/nightly", "local"]
        assert store.list_runs() == []

    def test_import_of_a_bad_document_changes_nothing(self, store: StateStore) -> None:
        seed(store, nightly={})
        with pytest.raises(StateError, match=r"not a buildsys state export: at resources/0: 'spec' is a required property"):
            store.import_({"version": 1, "serial": 3, "resources": [{"kind": "pool", "name": "x"}], "runs": []})
        with pytest.raises(StateError, match="not a buildsys state export: at version: 1 was expected"):
            store.import_({"version": 7, "serial": 3, "resources": [], "runs": []})
        twice = {"kind": "variable", "name": "v", "spec": {"value": 1}}
        with pytest.raises(StateError, match="the import has variable 'v' twice"):
            store.import_({"version": 1, "serial": 3, "resources": [twice, twice], "runs": []})
        same_id = [{**twice, "id": "x"}, {**twice, "name": "w", "id": "x"}]
        with pytest.raises(StateError, match="the import has two resources with the id 'x'"):
            store.import_({"version": 1, "serial": 3, "resources": same_id, "runs": []})
        assert store.serial() == 1
        assert len(store.list_resources()) == 2

    def test_import_gives_ids_to_resources_without_one(self, store: StateStore) -> None:
        resources = [{"kind": "variable", "name": n, "spec": {"value": n}} for n in ("a", "b")]
        store.import_({"version": 1, "serial": 0, "resources": resources, "runs": []})
        ids = [r.id for r in store.list_resources()]
        assert len(set(ids)) == 2 and all(ids)
        assert store.serial() == 1
