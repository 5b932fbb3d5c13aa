"""The route table of the Prefect-compatible API: method, path (relative to PREFECT_API_URL),
handler, token scope, body schema, and what a per-run key may do there (runscope; none: refused).
See docs/prefect-api.md for what each serves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from buildsys.prefectapi import flowruns as fr
from buildsys.prefectapi import records as rec
from buildsys.prefectapi import resources as res
from buildsys.prefectapi import runscope as rs
from buildsys.prefectapi.context import Call
from buildsys.prefectapi.runscope import Guard
from buildsys.prefectapi.tokens import APPLY, READ, WRITE

Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    scope: str = READ
    body: str | None = None  # a schema of bodies.SCHEMAS
    status: int = 200
    run_key: Guard | None = None  # what a per-run key may do here (runscope); None: refused to one


ENDPOINTS: tuple[Endpoint, ...] = (
    # admin
    Endpoint("GET", "/admin/version", res.version, run_key=rs.anything),
    Endpoint("GET", "/admin/storage", res.storage, run_key=rs.anything),
    Endpoint("GET", "/csrf-token", res.csrf_token, run_key=rs.anything),
    Endpoint("GET", "/health", res.health, run_key=rs.anything),
    # flow runs
    Endpoint("GET", "/flow_runs/{id}", fr.read_flow_run, run_key=rs.read_path_run),
    Endpoint("PATCH", "/flow_runs/{id}", fr.update_flow_run, WRITE, "FlowRunUpdate", run_key=rs.write_path_run),
    Endpoint("DELETE", "/flow_runs/{id}", fr.delete_flow_run, APPLY),  # as `buildsys runs delete`; never a run's key
    Endpoint("POST", "/flow_runs/{id}/set_state", fr.set_state, WRITE, "SetState", status=201, run_key=rs.write_path_run),
    Endpoint("PATCH", "/flow_runs/{id}/labels", fr.update_labels, WRITE, "Labels", run_key=rs.write_path_run),
    Endpoint("POST", "/flow_runs/filter", fr.filter_flow_runs, READ, "FlowRunFilter", run_key=rs.anything),
    Endpoint("POST", "/flow_runs/", fr.create_flow_run, WRITE, "FlowRunCreate", status=201, run_key=rs.write_body_parent),
    Endpoint("POST", "/task_runs/", fr.create_task_run, WRITE, "TaskRunCreate", status=201, run_key=rs.write_body_run),
    Endpoint("GET", "/task_runs/{id}", fr.read_task_run, run_key=rs.read_path_task),
    # flows and deployments
    Endpoint("POST", "/flows/", res.create_flow, WRITE, "FlowCreate", status=201, run_key=rs.anything),
    Endpoint("GET", "/flows/name/{name}", res.read_flow_by_name, run_key=rs.anything),
    Endpoint("GET", "/flows/{id}", res.read_flow, run_key=rs.anything),
    Endpoint("GET", "/deployments/name/{flow}/{name}", res.read_deployment_by_name, run_key=rs.anything),
    Endpoint("GET", "/deployments/{id}", res.read_deployment, run_key=rs.anything),
    Endpoint("POST", "/deployments/{id}/create_flow_run", fr.create_deployment_run, WRITE, "DeploymentRun", status=201, run_key=rs.write_body_parent),
    # work pools and queues
    Endpoint("GET", "/work_pools/{name}", res.read_pool, run_key=rs.anything),
    Endpoint("POST", "/work_pools/{name}/queues/filter", res.filter_queues, READ, "Filter", run_key=rs.anything),
    Endpoint("GET", "/work_pools/{name}/queues/{queue}", res.read_pool_queue, run_key=rs.anything),
    Endpoint("POST", "/work_pools/{name}/get_scheduled_flow_runs", res.scheduled_runs, WRITE, "Scheduled"),
    Endpoint("POST", "/work_pools/{name}/workers/heartbeat", res.worker_heartbeat, WRITE, "Heartbeat"),
    Endpoint("POST", "/work_pools/{name}/workers/filter", res.filter_workers, READ, "Filter"),
    Endpoint("GET", "/work_queues/{id}", res.read_queue, run_key=rs.anything),
    # logs, variables, artifacts
    Endpoint("POST", "/logs/", rec.create_logs, WRITE, "Logs", status=201, run_key=rs.write_logs),
    Endpoint("GET", "/variables/name/{name}", res.read_variable, run_key=rs.anything),
    Endpoint("PATCH", "/variables/name/{name}", res.update_variable, WRITE, "VariableUpdate", run_key=rs.anything),
    Endpoint("DELETE", "/variables/name/{name}", res.delete_variable, WRITE, run_key=rs.anything),
    Endpoint("POST", "/variables/", res.create_variable, WRITE, "VariableCreate", status=201, run_key=rs.anything),
    Endpoint("POST", "/variables/filter", res.filter_variables, READ, "Filter", run_key=rs.anything),
    Endpoint("POST", "/artifacts/", rec.create_artifact, WRITE, "ArtifactCreate", status=201, run_key=rs.write_artifact),
    Endpoint("POST", "/artifacts/filter", rec.filter_artifacts, READ, "ArtifactFilter"),
    # concurrency limits (tagged tasks take "tag:<tag>")
    Endpoint("POST", "/v2/concurrency_limits/increment-with-lease", rec.increment_with_lease, WRITE, "Increment", run_key=rs.anything),
    Endpoint("POST", "/v2/concurrency_limits/decrement-with-lease", rec.decrement_with_lease, WRITE, "LeaseRef", run_key=rs.anything),
    Endpoint("POST", "/v2/concurrency_limits/leases/{id}/renew", rec.renew_lease, WRITE, "Renew", run_key=rs.anything),
    Endpoint("POST", "/v2/concurrency_limits/filter", rec.filter_limits, READ, "Filter", run_key=rs.anything),
    Endpoint("POST", "/v2/concurrency_limits/", rec.create_limit, WRITE, "LimitCreate", status=201),
    Endpoint("GET", "/v2/concurrency_limits/{name}", rec.read_limit, run_key=rs.anything),
    Endpoint("DELETE", "/v2/concurrency_limits/{name}", rec.delete_limit, WRITE),
    Endpoint("POST", "/concurrency_limits/", rec.create_tag_limit, WRITE, "TagLimitCreate"),
)
