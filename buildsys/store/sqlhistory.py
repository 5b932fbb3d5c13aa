"""Flow-run state histories in the SQL store: one row per state a run entered, oldest first.

Rows are written only by `sqlruns.insert_run` and `sqlruns.save_runs` (the one way a stored run is
created or changed), in the transaction that moves the run, so a run and its history never disagree.
`entered` decides what a move adds: nothing when the state is unchanged, and for a failed attempt
that is retried, the failure before the "AwaitingRetry" that replaces it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from buildsys.errors import StateError
from buildsys.store.base import STATE_TYPES, FlowRun, RunState
from buildsys.store.dialect import Tx
from buildsys.store.transitions import DEFAULT_NAMES

STATE_COLUMNS = "run_id, seq, ts, state, state_name, message, attempt, worker"
_INSERT = (
    f"INSERT INTO flow_run_states ({STATE_COLUMNS}) VALUES "
    "(?, (SELECT COALESCE(MAX(s.seq), 0) + 1 FROM flow_run_states s WHERE s.run_id = ?), ?, ?, ?, ?, ?, ?)"
)


def entered(before: FlowRun | None, after: FlowRun, moment: float, *, failed: str | None = None) -> list[RunState]:
    """The states a run entered moving from `before` (None: it was just created) to `after`.
    `failed` names the failure (FAILED/CRASHED) that the move turned into a retry, if it did."""
    if before is None:
        return [_state(after, after.created_at)]
    out: list[RunState] = []
    if failed is not None and after.state != failed:
        out.append(
            RunState(after.id, moment, failed, DEFAULT_NAMES[failed], after.state_message, before.attempt, before.worker)
        )
    elif (before.state, before.state_name, before.attempt) == (after.state, after.state_name, after.attempt):
        return []
    out.append(_state(after, moment))
    return out


def _state(run: FlowRun, ts: float) -> RunState:
    return RunState(run.id, ts, run.state, run.state_name, run.state_message, run.attempt, run.worker)


def record(tx: Tx, states: Iterable[RunState]) -> None:
    tx.many(
        _INSERT,
        [(s.run_id, s.run_id, s.ts, s.state, s.name, s.message, s.attempt, s.worker) for s in states],
    )


def forget(tx: Tx, where: str, params: Sequence[Any]) -> None:
    """Drop the histories of the runs `where` (a condition on flow_runs) selects, before they are deleted."""
    tx.run(f"DELETE FROM flow_run_states WHERE run_id IN (SELECT id FROM flow_runs WHERE {where})", params)


def states_of(tx: Tx, run_id: str) -> list[RunState]:
    """The history of the run with this exact id (sqlruns.list_states finds the run first)."""
    rows = tx.run(f"SELECT {STATE_COLUMNS} FROM flow_run_states WHERE run_id = ? ORDER BY seq", (run_id,))
    return [_from_row(r) for r in rows]


def _from_row(row: Sequence[Any]) -> RunState:
    run_id, _, ts, state, name, message, attempt, worker = row
    return RunState(str(run_id), float(ts), str(state), str(name), message, int(attempt), worker)


# --- export and import (snapshot.py) -------------------------------------------------------------


def export_rows(tx: Tx) -> list[dict[str, Any]]:
    rows = tx.run(f"SELECT {STATE_COLUMNS} FROM flow_run_states ORDER BY run_id, seq")
    return [_from_row(r).to_dict() for r in rows]


def import_rows(tx: Tx, items: Sequence[Mapping[str, Any]], run_ids: set[str]) -> None:
    """An export's histories, in their order; each must belong to a run of the export."""
    states = []
    for i, item in enumerate(items):
        try:
            state = RunState.from_dict(item)
        except TypeError as exc:
            raise StateError(f"not a buildsys state export: run_states/{i} is malformed ({exc})") from None
        if state.run_id not in run_ids:
            raise StateError(
                f"the import has a state history entry (run_states/{i}) for flow run {state.run_id!r}, "
                "which it does not contain"
            )
        if state.state not in STATE_TYPES:
            raise StateError(f"not a buildsys state export: run_states/{i} has unknown state {state.state!r}")
        states.append(state)
    record(tx, states)
