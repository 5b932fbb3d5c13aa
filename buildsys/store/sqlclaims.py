"""Claiming due flow runs for a worker: one transaction that moves SCHEDULED runs to PENDING under a
lease, honouring paused pools/queues, concurrency limits and queue priorities (Prefect §6.8).

SQLite serialises claims with its write lock. PostgreSQL selects candidates `FOR UPDATE SKIP LOCKED`
so racing workers never see the same run, and takes a per-pool advisory lock only when a
concurrency limit must be counted consistently.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from buildsys.records import NEW_DICT, Record
from buildsys.store.base import ACTIVE, PENDING, SCHEDULED, FlowRun
from buildsys.store.dialect import Database, Tx, marks, now
from buildsys.store.rows import RUN_COLUMNS, read_json, run_from_row
from buildsys.store.sqlruns import Move, ended, record_worker, save_runs

_ACTIVE_LIST = ", ".join(f"'{s}'" for s in sorted(ACTIVE))


_set = object.__setattr__


class PoolRules(Record):
    """What a pool's spec says about delivery: paused, limits, queue priorities."""

    __slots__ = __match_args__ = ("paused", "limit", "priorities", "queue_limits", "paused_queues")
    paused: bool
    limit: int | None
    priorities: Mapping[str, int]
    queue_limits: Mapping[str, int]
    paused_queues: frozenset[str]

    def __init__(
        self,
        paused: bool = False,
        limit: int | None = None,
        priorities: Mapping[str, int] = NEW_DICT,
        queue_limits: Mapping[str, int] = NEW_DICT,
        paused_queues: frozenset[str] = frozenset(),
    ) -> None:
        _set(self, "paused", paused)
        _set(self, "limit", limit)
        _set(self, "priorities", {} if priorities is NEW_DICT else priorities)
        _set(self, "queue_limits", {} if queue_limits is NEW_DICT else queue_limits)
        _set(self, "paused_queues", paused_queues)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> PoolRules:
        if not spec:
            return cls()
        priorities: dict[str, int] = {}
        limits: dict[str, int] = {}
        paused: set[str] = set()
        for index, queue in enumerate(spec.get("queues") or []):
            if not isinstance(queue, Mapping) or not isinstance(queue.get("name"), str):
                continue
            qname = queue["name"]
            priority = queue.get("priority")
            priorities[qname] = priority if isinstance(priority, int) else index + 1
            if isinstance(queue.get("concurrency_limit"), int):
                limits[qname] = queue["concurrency_limit"]
            if queue.get("paused") or queue.get("is_paused"):
                paused.add(qname)
        limit = spec.get("concurrency_limit")
        return cls(
            paused=bool(spec.get("paused") or spec.get("is_paused")),
            limit=limit if isinstance(limit, int) else None,
            priorities=priorities,
            queue_limits=limits,
            paused_queues=frozenset(paused),
        )

    @property
    def has_limits(self) -> bool:
        return self.limit is not None or bool(self.queue_limits)


def claim_runs(
    db: Database,
    pool: str,
    worker: str,
    *,
    queues: Sequence[str] | None,
    limit: int,
    lease_seconds: float,
    wait: float,
) -> list[FlowRun]:
    """Claim now, or wait (polling cheaply) up to `wait` seconds for something to claim.

    Waiting never writes unless a run is due. It wakes when something was committed (SQLite:
    `PRAGMA data_version`; PostgreSQL: LISTEN/NOTIFY, see wakeups.py, or polling a one-row query
    when the listener is down) or when the next scheduled run comes due. A claim that finds only
    blocked runs (paused queue, full limit) backs off.
    """
    deadline = time.monotonic() + max(0.0, wait)
    token = db.change_token() if wait > 0 else None  # before the attempt: no commit slips between
    claimed = claim_once(db, pool, worker, queues, limit, lease_seconds, record=True)
    if claimed or wait <= 0 or limit <= 0:
        return claimed
    interval = db.poll_interval()
    due = next_due(db, pool)
    while time.monotonic() < deadline:
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        fresh = db.change_token()
        if fresh == token and fresh is not None and not (due is not None and due <= now()):
            continue  # nothing was committed anywhere and no scheduled run came due
        token = fresh
        if not _has_due(db, pool):
            due = next_due(db, pool)
            continue
        claimed = claim_once(db, pool, worker, queues, limit, lease_seconds, record=False)
        if claimed:
            return claimed
        interval = min(interval * 2, 0.5)
        due = next_due(db, pool)
    return []


def next_due(db: Database, pool: str) -> float | None:
    """The earliest scheduled time of a future SCHEDULED run of the pool (to wake up for it)."""
    with db.tx() as tx:
        row = tx.one(
            f"SELECT MIN(scheduled_at) FROM flow_runs WHERE pool = ? AND state = '{SCHEDULED}' AND scheduled_at > ?",
            (pool, now()),
        )
    return float(row[0]) if row and row[0] is not None else None


def _has_due(db: Database, pool: str) -> bool:
    with db.tx() as tx:
        row = tx.one(
            f"SELECT 1 FROM flow_runs WHERE pool = ? AND state = '{SCHEDULED}' AND scheduled_at <= ? LIMIT 1",
            (pool, now()),
        )
    return row is not None


def claim_once(
    db: Database,
    pool: str,
    worker: str,
    queues: Sequence[str] | None,
    limit: int,
    lease_seconds: float,
    *,
    record: bool,
) -> list[FlowRun]:
    """One claim transaction; `record` also notes the worker as alive (a claim is a heartbeat)."""
    moment = now()
    with db.tx(write=True) as tx:
        if record:
            record_worker(tx, pool, worker, moment)
        if limit <= 0 or (queues is not None and not queues):
            return []
        rules = _pool_rules(tx, pool)
        if rules.paused:
            return []
        if rules.has_limits:
            tx.lock(f"claim:{pool}")
        dep_limits, cancel_new = _deployment_limits(tx, pool)
        if dep_limits:
            tx.lock(f"claim:{pool}")
        room = _room(tx, pool, rules, dep_limits)
        if room.pool is not None and room.pool <= 0:
            return []
        candidates = _candidates(tx, pool, rules, room, queues, limit, moment)
        chosen = _choose(candidates, room, limit)
        _cancel_colliding(tx, pool, rules, room, cancel_new, chosen, moment)
        if not chosen:
            return []
        if not record:
            record_worker(tx, pool, worker, moment)
        lease = moment + lease_seconds
        moves = [
            Move(r, dataclasses.replace(
                r, state=PENDING, state_name="Pending", state_message=None, worker=worker, lease_expires_at=lease
            ))
            for r in chosen
        ]  # fmt: skip
        save_runs(tx, moves, moment)
    return [m.after for m in moves]


def _pool_rules(tx: Tx, pool: str) -> PoolRules:
    row = tx.one("SELECT spec FROM resources WHERE kind = 'pool' AND name = ?", (pool,))
    return PoolRules.from_spec(read_json(row[0], f"the spec of pool {pool!r}", "resources", dict) if row else None)


# every claim runs this: it walks the partial index resources_pool_limited (migration 5), so its
# cost follows the number of limited deployments, not of all the pool's deployments
DEPLOYMENT_LIMITS_SQL = (
    "SELECT name, concurrency_limit, spec FROM resources WHERE kind = 'deployment' AND pool = ? "
    "AND concurrency_limit IS NOT NULL"
)


def _deployment_limits(tx: Tx, pool: str) -> tuple[dict[str, int], frozenset[str]]:
    """Concurrency limits of the pool's deployments, and those whose collision strategy is
    CANCEL_NEW (a run that would exceed the limit is cancelled instead of waiting)."""
    rows = tx.run(DEPLOYMENT_LIMITS_SQL, (pool,))
    limits = {str(name): int(limit) for name, limit, _ in rows}
    cancel_new = frozenset(str(name) for name, _, spec in rows if _collision_strategy(name, spec) == "CANCEL_NEW")
    return limits, cancel_new


def _collision_strategy(name: str, spec_text: str) -> str:
    options = read_json(spec_text, f"the spec of deployment {name!r}", "resources", dict).get("concurrency_options")
    strategy = options.get("collision_strategy") if isinstance(options, Mapping) else None
    return str(strategy).upper() if strategy else "ENQUEUE"


def _cancel_colliding(
    tx: Tx,
    pool: str,
    rules: PoolRules,
    room: _Room,
    cancel_new: frozenset[str],
    chosen: Sequence[FlowRun],
    moment: float,
) -> None:
    """Prefect's CANCEL_NEW: due runs of a deployment that is (now) at its limit are cancelled."""
    taken = Counter(r.deployment for r in chosen)
    full = sorted(d for d in cancel_new if room.deployments.get(d, 1) - taken[d] <= 0)
    if not full:
        return
    chosen_ids = [r.id for r in chosen]
    paused = sorted(rules.paused_queues)
    sql = (
        f"SELECT {RUN_COLUMNS} FROM flow_runs "
        f"WHERE pool = ? AND state = '{SCHEDULED}' AND scheduled_at <= ? AND deployment IN ({marks(full)})"
    )
    params: list[Any] = [pool, moment, *full]
    if chosen_ids:
        sql += f" AND id NOT IN ({marks(chosen_ids)})"
        params.extend(chosen_ids)
    if paused:
        sql += f" AND (queue IS NULL OR queue NOT IN ({marks(paused)}))"
        params.extend(paused)
    why = "the deployment is at its concurrency limit (collision strategy CANCEL_NEW)"
    colliding = [run_from_row(r) for r in tx.run(sql + tx.for_update(), params)]
    save_runs(tx, [Move(r, ended(r, why, moment)) for r in colliding], moment)


@dataclass
class _Room:
    """Free slots left: in the pool, per queue and per deployment (None = unlimited)."""

    pool: int | None
    queues: dict[str, int]
    deployments: dict[str, int]


def _room(tx: Tx, pool: str, rules: PoolRules, dep_limits: Mapping[str, int]) -> _Room:
    pool_room: int | None = None
    queue_room: dict[str, int] = {}
    if rules.has_limits:
        rows = tx.run(
            f"SELECT queue, COUNT(*) FROM flow_runs WHERE pool = ? AND state IN ({_ACTIVE_LIST}) GROUP BY queue",
            (pool,),
        )
        by_queue = {q: int(n) for q, n in rows}
        if rules.limit is not None:
            pool_room = rules.limit - sum(by_queue.values())
        queue_room = {q: lim - by_queue.get(q, 0) for q, lim in rules.queue_limits.items()}
    dep_room: dict[str, int] = {}
    if dep_limits:
        names = list(dep_limits)
        rows = tx.run(
            f"SELECT deployment, COUNT(*) FROM flow_runs WHERE deployment IN ({marks(names)}) "
            f"AND state IN ({_ACTIVE_LIST}) GROUP BY deployment",
            names,
        )
        active = {d: int(n) for d, n in rows}
        dep_room = {d: lim - active.get(d, 0) for d, lim in dep_limits.items()}
    return _Room(pool_room, queue_room, dep_room)


def _candidates(
    tx: Tx,
    pool: str,
    rules: PoolRules,
    room: _Room,
    queues: Sequence[str] | None,
    limit: int,
    moment: float,
) -> list[FlowRun]:
    """Due runs in delivery order: queue priority groups one after another (a waterfall), each in
    scheduled order, so every query walks an index instead of sorting all due runs."""
    blocked = rules.paused_queues | {q for q, n in room.queues.items() if n <= 0}
    full = sorted(d for d, n in room.deployments.items() if n <= 0)
    fetch = limit + 50 if rules.has_limits or room.deployments else limit
    found: list[FlowRun] = []
    for group in priority_groups(rules, queues, blocked):
        if len(found) >= fetch:
            break
        where = [f"pool = ? AND state = '{SCHEDULED}' AND scheduled_at <= ?"]
        params: list[Any] = [pool, moment]
        for clause, values in group:
            where.append(clause)
            params.extend(values)
        if full:
            where.append(f"deployment NOT IN ({marks(full)})")
            params.extend(full)
        sql = (
            f"SELECT {RUN_COLUMNS} FROM flow_runs WHERE {' AND '.join(where)} "
            f"ORDER BY scheduled_at, created_at LIMIT ?{tx.for_update(skip_locked=True)}"
        )
        found.extend(run_from_row(r) for r in tx.run(sql, (*params, fetch - len(found))))
    return found


Clause = tuple[str, Sequence[Any]]


def priority_groups(
    rules: PoolRules, queues: Sequence[str] | None, blocked: frozenset[str] | set[str]
) -> list[list[Clause]]:
    """WHERE clauses per priority level (1 first), then one for every queue the pool does not declare."""
    wanted = None if queues is None else set(queues)
    by_priority: dict[int, list[str]] = {}
    for name, priority in rules.priorities.items():
        if name not in blocked and (wanted is None or name in wanted):
            by_priority.setdefault(priority, []).append(name)
    groups: list[list[Clause]] = [
        [(f"queue IN ({marks(names)})", sorted(names))] for _, names in sorted(by_priority.items())
    ]
    rest: list[Clause] = []
    declared_or_blocked = sorted(set(rules.priorities) | set(blocked))
    if declared_or_blocked:
        rest.append((f"(queue IS NULL OR queue NOT IN ({marks(declared_or_blocked)}))", declared_or_blocked))
    if wanted is not None:
        rest.append((f"queue IN ({marks(sorted(wanted))})", sorted(wanted)))
    groups.append(rest)
    return groups


def _choose(candidates: Sequence[FlowRun], room: _Room, limit: int) -> list[FlowRun]:
    """Walk candidates in delivery order, taking those that still fit every limit."""
    chosen: list[FlowRun] = []
    pool_left = room.pool
    queues = dict(room.queues)
    deployments = dict(room.deployments)
    for run in candidates:
        if len(chosen) >= limit or (pool_left is not None and pool_left <= 0):
            break
        if run.queue in queues and queues[run.queue] <= 0:
            continue
        if run.deployment in deployments and deployments[run.deployment] <= 0:
            continue
        chosen.append(run)
        if pool_left is not None:
            pool_left -= 1
        if run.queue in queues:
            queues[run.queue] -= 1
        if run.deployment in deployments:
            deployments[run.deployment] -= 1
    return chosen
