"""buildsys records as the JSON Prefect's clients read (flow runs, states, deployments, pools,
queues, flows, task runs), and Prefect's timestamps and ids back into buildsys values. Pure."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from buildsys.store.base import RUNNING, SCHEDULED, TERMINAL, Artifact, FlowRun, Resource, TaskRun

QUEUE_NAMESPACE = uuid.UUID("0f4e2f5b-8f0c-4c59-9d0e-55a1c1f3b7d2")
STATE_NAMESPACE = uuid.UUID("a3c8d9e4-1b2f-4e6a-8c7d-9e0f1a2b3c4d")
DEFAULT_QUEUE = "default"


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def queue_id(pool_id: str, queue: str) -> str:
    return str(uuid.uuid5(QUEUE_NAMESPACE, f"{pool_id}/{queue}"))


def state_id(run: FlowRun) -> str:
    """Stable while the run stays in one state; new when it moves."""
    key = f"{run.id}/{run.state}/{run.state_name}/{run.attempt}/{run.run_count}"
    return str(uuid.uuid5(STATE_NAMESPACE, key))


def state_ts(run: FlowRun) -> float:
    if run.state in TERMINAL and run.ended_at is not None:
        return run.ended_at
    if run.state == RUNNING and run.started_at is not None:
        return run.started_at
    return run.created_at


def state_json(run: FlowRun, *, type_: str | None = None, name: str | None = None) -> dict[str, Any]:
    kind = type_ or run.state
    details: dict[str, Any] = {"flow_run_id": run.id}
    if kind == SCHEDULED:
        details["scheduled_time"] = iso(run.scheduled_at)
    if run.prefect.get("transition_id"):
        details["transition_id"] = run.prefect["transition_id"]
    return {
        "id": state_id(run),
        "type": kind,
        "name": name or run.state_name,
        "timestamp": iso(state_ts(run)),
        "message": run.state_message,
        "data": None,
        "state_details": details,
    }


def flow_run_json(run: FlowRun, flow_id: str, pool: Resource | None) -> dict[str, Any]:
    policy = run.prefect.get("empirical_policy")
    total = (run.ended_at or 0.0) - run.started_at if run.started_at and run.ended_at else 0.0
    return {
        "id": run.id,
        "created": iso(run.created_at),
        "updated": iso(max(run.created_at, run.started_at or 0.0, run.ended_at or 0.0)),
        "name": run.name,
        "flow_id": flow_id,
        "state_id": state_id(run),
        "deployment_id": run.deployment_id or None,
        "deployment_version": None,
        "work_queue_name": run.queue,
        "flow_version": run.prefect.get("flow_version"),
        "parameters": dict(run.parameters),
        "idempotency_key": run.idempotency_key,
        "context": {},
        "empirical_policy": policy if isinstance(policy, Mapping) else {},
        "tags": list(run.tags),
        "labels": dict(run.prefect.get("labels") or {}),
        "parent_task_run_id": run.parent_task_run_id,
        "run_count": run.run_count,
        "expected_start_time": iso(run.scheduled_at),
        "next_scheduled_start_time": iso(run.scheduled_at) if run.state == SCHEDULED else None,
        "start_time": iso(run.started_at),
        "end_time": iso(run.ended_at),
        "total_run_time": total,
        "estimated_run_time": total,
        "estimated_start_time_delta": 0.0,
        "auto_scheduled": run.auto_scheduled,
        "infrastructure_document_id": None,
        "infrastructure_pid": run.infrastructure_pid,
        "created_by": None,
        "work_queue_id": queue_id(pool.id, run.queue or DEFAULT_QUEUE) if pool is not None else None,
        "work_pool_id": pool.id if pool is not None else None,
        "work_pool_name": run.pool or None,
        "state": state_json(run),
        "job_variables": dict(run.job_variables),
        "state_type": run.state,
        "state_name": run.state_name,
    }


def flow_json(flow_id: str, name: str) -> dict[str, Any]:
    return {"id": flow_id, "created": None, "updated": None, "name": name, "tags": [], "labels": {}}


def deployment_json(dep: Resource, flow_id: str, pool: Resource | None) -> dict[str, Any]:
    spec = dep.spec
    queue = spec.get("work_queue_name") or DEFAULT_QUEUE
    return {
        "id": dep.id,
        "created": iso(dep.created_at),
        "updated": iso(dep.updated_at),
        "name": spec.get("name") or dep.name.split("/", 1)[-1],
        "version": None if spec.get("version") is None else str(spec.get("version")),
        "description": spec.get("description"),
        "flow_id": flow_id,
        "concurrency_limit": spec.get("concurrency_limit"),
        "paused": bool(spec.get("paused")),
        "schedules": [],
        "job_variables": dict(spec.get("job_variables") or {}),
        "parameters": dict(spec.get("parameters") or {}),
        "pull_steps": list(spec.get("pull_steps") or []) or None,
        "tags": list(spec.get("tags") or []),
        "labels": {},
        "work_queue_name": queue,
        "last_polled": None,
        "parameter_openapi_schema": spec.get("parameter_schema"),
        "path": None,
        "entrypoint": spec.get("entrypoint"),
        "storage_document_id": None,
        "infrastructure_document_id": None,
        "created_by": None,
        "updated_by": None,
        "work_queue_id": queue_id(pool.id, queue) if pool is not None else None,
        "enforce_parameter_schema": bool(spec.get("enforce_parameter_schema")),
        "work_pool_name": spec.get("work_pool_name"),
        "status": "READY",
    }


def pool_json(pool: Resource, template: Mapping[str, Any]) -> dict[str, Any]:
    spec = pool.spec
    return {
        "id": pool.id,
        "created": iso(pool.created_at),
        "updated": iso(pool.updated_at),
        "name": pool.name,
        "description": spec.get("description"),
        "type": spec.get("type") or "process",
        "base_job_template": dict(template),
        "is_paused": bool(spec.get("paused")),
        "concurrency_limit": spec.get("concurrency_limit"),
        "status": "PAUSED" if spec.get("paused") else "READY",
        "storage_configuration": {
            "bundle_upload_step": None,
            "bundle_execution_step": None,
            "default_result_storage_block_id": None,
        },
        "default_queue_id": queue_id(pool.id, DEFAULT_QUEUE),
    }


def queues_of(pool: Resource) -> list[dict[str, Any]]:
    """The pool's queues as Prefect's WorkQueue objects ("default" always exists)."""
    declared = [q for q in pool.spec.get("queues") or [] if isinstance(q, Mapping) and isinstance(q.get("name"), str)]
    if not any(q["name"] == DEFAULT_QUEUE for q in declared):
        declared.append({"name": DEFAULT_QUEUE, "priority": len(declared) + 1})
    out = []
    for index, q in enumerate(declared):
        priority = q.get("priority")
        out.append(
            {
                "id": queue_id(pool.id, q["name"]),
                "created": iso(pool.created_at),
                "updated": iso(pool.updated_at),
                "name": q["name"],
                "description": q.get("description") or "",
                "is_paused": bool(q.get("paused")),
                "concurrency_limit": q.get("concurrency_limit"),
                "priority": priority if isinstance(priority, int) and priority > 0 else index + 1,
                "work_pool_id": pool.id,
                "work_pool_name": pool.name,
                "filter": None,
                "last_polled": None,
                "status": "PAUSED" if q.get("paused") else "READY",
            }
        )
    return out


def task_run_json(task: TaskRun) -> dict[str, Any]:
    state = {
        "id": str(uuid.uuid5(STATE_NAMESPACE, f"{task.id}/{task.state_ts}")),
        "type": task.state,
        "name": task.state_name,
        "timestamp": iso(task.state_ts),
        "message": task.state_message,
        "data": None,
        "state_details": {"flow_run_id": task.flow_run_id, "task_run_id": task.id},
    }
    return {
        "id": task.id,
        "created": iso(task.created_at),
        "updated": iso(task.state_ts),
        "name": task.name,
        "flow_run_id": task.flow_run_id,
        "task_key": task.task_key,
        "dynamic_key": task.dynamic_key,
        "cache_key": None,
        "cache_expiration": None,
        "task_version": None,
        "empirical_policy": {},
        "tags": list(task.tags),
        "labels": {},
        "state_id": state["id"],
        "task_inputs": {},
        "state_type": task.state,
        "state_name": task.state_name,
        "run_count": task.run_count,
        "flow_run_run_count": 0,
        "expected_start_time": iso(task.created_at),
        "start_time": iso(task.started_at),
        "end_time": iso(task.ended_at),
        "total_run_time": (task.ended_at - task.started_at) if task.started_at and task.ended_at else 0.0,
        "state": state,
    }


def artifact_json(a: Artifact) -> dict[str, Any]:
    return {
        "id": a.id,
        "created": iso(a.created_at),
        "updated": iso(a.created_at),
        "key": a.key,
        "type": a.type,
        "description": a.description,
        "data": a.data,
        "metadata_": None,
        "flow_run_id": a.flow_run_id,
        "task_run_id": a.task_run_id,
    }
