"""Flow runs for Prefect's engine, workers, client and UI: read, update, delete, set_state (Prefect's
orchestration rules, transitions.decide), filter, subflow and run_deployment creation, task-run
creation."""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Mapping
from typing import Any

from buildsys.errors import NotFoundError
from buildsys.prefectapi.context import ApiError, Call
from buildsys.prefectapi.runscope import scope_of
from buildsys.prefectapi.shapes import flow_run_json, state_json, task_run_json
from buildsys.store.base import ABORT, REJECT, WAIT, Decision, FlowRun, Proposal, Resource, TaskRun
from buildsys.store.dialect import now
from buildsys.timestamps import epoch


def uuid_param(call: Call, name: str = "id") -> str:
    """A path id as Prefect sends it (a UUID); 422 otherwise, as Prefect's server answers."""
    raw = call.path[name]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(422, f"path.{name}: {raw!r} is not a valid UUID") from None


async def load(call: Call, run_id: str) -> FlowRun:
    found = await call.sync(call.store.find_runs, ids=[run_id], limit=1)
    if not found:
        raise ApiError(404, f"flow run {run_id} not found")
    return found[0]


async def pool_of(call: Call, name: str) -> Resource | None:
    return await call.sync(call.store.get_resource, "pool", name) if name else None


async def flow_id_of(call: Call, flow_name: str) -> str:
    known = call.services.known_flows
    if flow_name not in known:
        await call.sync(call.store.ensure_flow, flow_name)
        known.add(flow_name)
    from buildsys.store.sqlengine import flow_id

    return flow_id(flow_name)


async def view(call: Call, run: FlowRun) -> dict[str, Any]:
    return flow_run_json(run, await flow_id_of(call, run.flow_name), await pool_of(call, run.pool))


async def read_flow_run(call: Call) -> Any:
    return await view(call, await load(call, uuid_param(call)))


async def update_flow_run(call: Call) -> Any:
    body = call.body
    prefect = {k: body[k] for k in ("flow_version", "empirical_policy", "labels") if body.get(k) is not None}
    await call.sync(
        call.store.update_run,
        uuid_param(call),
        name=body.get("name"),
        infrastructure_pid=body.get("infrastructure_pid"),
        prefect=prefect,
    )
    return None


async def delete_flow_run(call: Call) -> Any:
    """Prefect's DELETE /flow_runs/{id} (the client's delete_flow_run, the UI): 204, 404 when there
    is no such run. The store's delete_run, as `buildsys runs delete` and the UI's delete: the run
    goes with its logs, state history, task runs and unkeyed artifacts, and a run a worker may still
    hold (PENDING, RUNNING, CANCELLING, PAUSED) is refused with 409 where Prefect deletes it."""
    await call.sync(call.store.delete_run, uuid_param(call))
    return None


async def update_labels(call: Call) -> Any:
    run = await load(call, uuid_param(call))
    labels = {**dict(run.prefect.get("labels") or {}), **call.body}
    await call.sync(call.store.update_run, run.id, prefect={"labels": labels})
    return None


def proposal_of(body: Mapping[str, Any]) -> Proposal:
    state = body["state"]
    details = state.get("state_details") or {}
    return Proposal(
        type=state["type"],
        name=state.get("name"),
        message=state.get("message"),
        force=bool(body.get("force", False)),
        transition_id=details.get("transition_id"),
        scheduled_at=epoch(details.get("scheduled_time")),
    )


async def set_state(call: Call) -> Any:
    run_id = uuid_param(call)
    await load(call, run_id)
    decision = await call.sync(call.store.propose_run_state, run_id, proposal_of(call.body))
    return orchestration_result(decision)


def orchestration_result(decision: Decision) -> dict[str, Any]:
    """Prefect's OrchestrationResult: {status, state, details}."""
    run = decision.run
    if decision.status == WAIT:
        details: dict[str, Any] = {
            "type": "wait_details",
            "delay_seconds": max(1, math.ceil(decision.delay_seconds)),
            "reason": decision.reason,
        }
    elif decision.status in (REJECT, ABORT):
        details = {"type": f"{decision.status.lower()}_details", "reason": decision.reason}
    else:
        details = {"type": "accept_details"}
    if decision.reply_type is not None:
        state = state_json(run, type_=decision.reply_type, name=run.state_name)
    else:
        state = state_json(run)
    return {"status": decision.status, "state": state, "details": details}


# --- filter -------------------------------------------------------------------------------------

_KNOWN = {"id", "parent_task_run_id", "state", "work_pool_name", "operator"}


def _criteria(value: Any) -> bool:
    """Whether a filter part asks for anything (Prefect's clients send every field, mostly null)."""
    if isinstance(value, dict):
        return any(_criteria(v) for k, v in value.items() if k != "operator")
    return value is not None


def _any(part: Any) -> list[str] | None:
    if not isinstance(part, dict):
        return None
    if _criteria({k: v for k, v in part.items() if k != "any_"}):
        raise ApiError(422, "only any_ is supported in flow-run filters here")
    values = part.get("any_")
    return None if values is None else [str(v) for v in values]


async def filter_flow_runs(call: Call) -> Any:
    body = call.body
    for section in ("flows", "deployments", "work_pools", "work_pool_queues", "task_runs"):
        if _criteria(body.get(section)):
            raise ApiError(422, f"filtering flow runs by {section} is not supported by buildsys")
    runs_filter = body.get("flow_runs") or {}
    unknown = sorted(k for k, v in runs_filter.items() if k not in _KNOWN and _criteria(v))
    if unknown:
        raise ApiError(422, f"filtering flow runs by {unknown[0]} is not supported by buildsys")
    state = runs_filter.get("state") or {}
    pools = _any(runs_filter.get("work_pool_name"))
    if pools is not None and len(pools) != 1:
        raise ApiError(422, "filter by exactly one work_pool_name")
    limit = body.get("limit")
    offset = int(body.get("offset") or 0)
    ids = _any(runs_filter.get("id"))
    runs = await call.sync(
        call.store.find_runs,
        ids=None if ids is None else [_uuid_or_blank(i) for i in ids],
        parent_task_run_ids=_any(runs_filter.get("parent_task_run_id")),
        states=_any(state.get("type")),
        state_names=_any(state.get("name")),
        pool=pools[0] if pools else None,
        limit=(200 if limit is None else int(limit)) + offset,
    )
    if call.run_key is not None:  # a run's key sees its own runs only
        scope = scope_of(call)
        runs = [r for r in runs if await scope.may_read(r.id)]
    return [await view(call, r) for r in runs[offset:]]


def _uuid_or_blank(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value


# --- creating runs: subflows, run_deployment -----------------------------------------------------


async def create_flow_run(call: Call) -> Any:
    """A subflow (or a flow called outside a deployment): the engine runs it itself."""
    body = call.body
    flow_name = await call.sync(call.store.get_flow, body["flow_id"])
    if flow_name is None:
        raise ApiError(404, f"flow {body['flow_id']} not found (create it with POST /flows/)")
    prefect = {k: body[k] for k in ("flow_version", "empirical_policy", "labels") if body.get(k) is not None}
    run = await call.sync(
        call.store.create_subflow_run,
        flow_name,
        parent_task_run_id=body.get("parent_task_run_id"),
        parameters=body.get("parameters") or {},
        name=body.get("name"),
        tags=body.get("tags") or (),
        prefect=prefect,
    )
    return await view(call, run)


async def create_deployment_run(call: Call) -> Any:
    """POST /deployments/{id}/create_flow_run: a buildsys run of the deployment (its default
    parameters merged under the given ones), claimed by a worker like any other."""
    dep = await call.sync(call.store.get_resource_by_id, "deployment", uuid_param(call))
    if dep is None:
        raise ApiError(404, f"deployment {call.path['id']} not found")
    body = call.body
    state = body.get("state") or {}
    scheduled = epoch((state.get("state_details") or {}).get("scheduled_time"))
    run = await call.sync(
        call.store.create_run,
        dep.name,
        parameters=body.get("parameters") or {},
        job_variables=body.get("job_variables") or {},
        scheduled_at=scheduled if scheduled is not None and scheduled > now() else None,
        queue=body.get("work_queue_name"),
        name=body.get("name"),
        idempotency_key=body.get("idempotency_key"),
        tags=tuple(body.get("tags") or ()),
    )
    if body.get("parent_task_run_id"):
        run = await call.sync(call.store.set_run_parent, run.id, body["parent_task_run_id"])
    return await view(call, run)


async def create_task_run(call: Call) -> Any:
    """The engine's stand-in task run for a subflow or run_deployment call (ordinary tasks are
    reported through events/in)."""
    body = call.body
    state = body.get("state") or {}
    moment = now()
    task = TaskRun(
        id=body.get("id") or str(uuid.uuid4()),
        flow_run_id=body.get("flow_run_id") or "",
        name=body.get("name") or str(body.get("task_key") or "") or "task",
        task_key=str(body.get("task_key") or ""),
        dynamic_key=str(body.get("dynamic_key") or ""),
        state=state.get("type") or "PENDING",
        state_name=state.get("name") or "Pending",
        state_message=state.get("message"),
        state_ts=moment,
        created_at=moment,
        tags=tuple(body.get("tags") or ()),
        history=({"type": state.get("type") or "PENDING", "name": state.get("name") or "Pending", "ts": moment},),
    )
    if task.flow_run_id:
        with contextlib.suppress(NotFoundError):  # run_deployment outside a flow run: nothing to attach to
            task = await call.sync(call.store.record_task_run, task)
    return task_run_json(task)


async def read_task_run(call: Call) -> Any:
    task = await call.sync(call.store.get_task_run, uuid_param(call))
    if task is None:
        raise ApiError(404, f"task run {call.path['id']} not found")
    return task_run_json(task)
