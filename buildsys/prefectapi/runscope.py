"""What a per-run key (the worker's EmbeddedApi) may touch: its own flow run and what hangs off it.

A key issued for run A may write A, the subflow runs A's engine started (no deployment: the same
engine process runs them), their task runs, logs and artifacts, and read those plus the runs A
started with `run_deployment` (which another worker runs, under its own key). It may read what the
engine reads to label its events (flows, deployments, pools, queues), take and release concurrency
slots, and read and write variables (a flow's `Variable.set`; variables belong to the project, not
to a run). Everything else, above all any call about another run, is refused with 403, and calls
Prefect's engine never makes with a run key (claiming runs, worker heartbeats, creating or deleting
concurrency limits, reading other runs' artifacts) are refused outright.

Server tokens (`buildsys server`) are not bound to a run and are not checked here.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from buildsys.prefectapi.context import ApiError, Call, Services
from buildsys.store.base import FlowRun

Guard = Callable[[Call], Awaitable[None]]

MAX_DEPTH = 64  # subflows nested deeper than this are not followed (no cycles can loop forever)


@dataclass
class RunScope:
    """The runs a key bound to `run_id` may read and write, worked out on demand and remembered
    for one request or one websocket."""

    services: Services
    run_id: str
    _read: dict[str, bool] = field(default_factory=dict)
    _write: dict[str, bool] = field(default_factory=dict)

    async def _run(self, run_id: str) -> FlowRun | None:
        found = await self.services.run(self.services.store.find_runs, ids=[run_id], limit=1)
        return found[0] if found else None

    async def _parent_run(self, run: FlowRun) -> str | None:
        if not run.parent_task_run_id:
            return None
        task = await self.services.run(self.services.store.get_task_run, run.parent_task_run_id)
        return task.flow_run_id if task is not None else None

    async def _walk(self, run_id: str, *, write: bool) -> bool:
        """Whether the chain of parents from `run_id` reaches the key's run (for a write: through
        subflow runs only)."""
        memo = self._write if write else self._read
        if run_id in memo:
            return memo[run_id]
        seen: list[str] = []
        current: str | None = run_id
        allowed = False
        while current is not None and len(seen) < MAX_DEPTH and current not in seen:
            if current == self.run_id:
                allowed = True
                break
            if current in memo:
                allowed = memo[current]
                break
            seen.append(current)
            run = await self._run(current)
            if run is None or (write and run.deployment_id):
                break
            current = await self._parent_run(run)
        for visited in seen:
            memo[visited] = allowed
        return allowed

    async def may_read(self, run_id: str) -> bool:
        return await self._walk(run_id, write=False)

    async def may_write(self, run_id: str) -> bool:
        return await self._walk(run_id, write=True)

    async def require_write(self, run_id: str | None, what: str) -> None:
        if run_id is None or not await self.may_write(str(run_id)):
            raise ApiError(403, f"this run's key may not {what} of flow run {run_id} (it is bound to flow run {self.run_id})")

    async def require_read(self, run_id: str | None, what: str) -> None:
        if run_id is None or not await self.may_read(str(run_id)):
            raise ApiError(403, f"this run's key may not read {what} of flow run {run_id} (it is bound to flow run {self.run_id})")

    async def task_run_owner(self, task_run_id: str) -> str | None:
        task = await self.services.run(self.services.store.get_task_run, task_run_id)
        return task.flow_run_id if task is not None else None

    async def require_task_write(self, task_run_id: object, what: str) -> None:
        """A task run named by the caller (a parent of a new run, an artifact's task) must belong
        to a run this key may write; a task run not recorded yet is refused too."""
        if task_run_id is None:
            return
        await self.require_write(await self.task_run_owner(str(task_run_id)), what)


def scope_of(call: Call) -> RunScope:
    assert call.run_key is not None
    return RunScope(call.services, call.run_key)


# --- guards: one per endpoint a run key may call ------------------------------------------------


async def anything(call: Call) -> None:
    """Calls about no run (version, flows, deployments, pools, variables, slots)."""


async def write_path_run(call: Call) -> None:
    run_id = _uuid(call.path.get("id"))
    if run_id is not None:
        await scope_of(call).require_write(run_id, "change the state or fields")


async def read_path_run(call: Call) -> None:
    run_id = _uuid(call.path.get("id"))
    if run_id is not None:
        await scope_of(call).require_read(run_id, "the record")


async def read_path_task(call: Call) -> None:
    task_id = _uuid(call.path.get("id"))
    if task_id is None:
        return
    scope = scope_of(call)
    owner = await scope.task_run_owner(task_id)
    if owner is not None:  # an unknown task run is the handler's 404
        await scope.require_read(owner, "a task run")


async def write_body_run(call: Call) -> None:
    """POST /task_runs/: the task run's flow run."""
    await scope_of(call).require_write(call.body.get("flow_run_id"), "add task runs")


async def write_body_parent(call: Call) -> None:
    """POST /flow_runs/ (a subflow) and POST /deployments/{id}/create_flow_run: the task run the
    new run is started from must be one of this key's runs (a subflow needs one)."""
    parent = call.body.get("parent_task_run_id")
    if parent is None and "flow_id" in call.body:
        raise ApiError(403, f"this run's key may only create subflow runs of flow run {call.run_key} (parent_task_run_id is required)")
    await scope_of(call).require_task_write(parent, "start a run from a task run")


async def write_logs(call: Call) -> None:
    scope = scope_of(call)
    for run_id in _distinct(record.get("flow_run_id") for record in call.body):
        if run_id is not None:
            await scope.require_write(run_id, "write logs")


async def write_artifact(call: Call) -> None:
    scope = scope_of(call)
    run_id = call.body.get("flow_run_id")
    if run_id is None and call.body.get("task_run_id") is None:
        raise ApiError(403, f"this run's key may only create artifacts of flow run {call.run_key}")
    if run_id is not None:
        await scope.require_write(run_id, "create artifacts")
    await scope.require_task_write(call.body.get("task_run_id"), "create artifacts")


def _uuid(value: str | None) -> str | None:
    """A path id as a UUID; None when it is not one (the handler answers 422)."""
    try:
        return str(uuid.UUID(value)) if value is not None else None
    except ValueError:
        return None


def _distinct(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))
