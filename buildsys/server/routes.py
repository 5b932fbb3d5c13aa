"""The route table: every endpoint's method, path, scope, schemas and query parameters. The app
and the OpenAPI document are both generated from it."""

from __future__ import annotations

from buildsys.server import handlers as h
from buildsys.server.endpoints import Endpoint, Param
from buildsys.server.schemas import MAX_PAGE, MAX_RESOURCE_PAGE, MAX_WAIT_SECONDS
from buildsys.store.base import KINDS, STATE_TYPES

API = "/api/v1"

PAGE = (
    Param("limit", "integer", "page size", default=100, minimum=1, maximum=MAX_PAGE),
    Param("offset", "integer", "items to skip", default=0, minimum=0, maximum=2**31),
)
RESOURCE_PAGE = (
    Param("limit", "integer", "page size", default=1000, minimum=1, maximum=MAX_RESOURCE_PAGE),
    PAGE[1],
)


_RESOURCE_ROUTES = tuple(
    route
    for plural, lister, getter in (
        ("pools", h.list_pools, h.get_pool),
        ("deployments", h.list_deployments, h.get_deployment),
        ("variables", h.list_variables, h.get_variable),
    )
    for route in (
        Endpoint(
            "GET",
            f"{API}/{plural}",
            lister,
            f"List {plural}",
            "read",
            reply="ResourcePage",
            query=RESOURCE_PAGE,
        ),
        Endpoint(
            "GET",
            f"{API}/{plural}/{{name:path}}",
            getter,
            f"Get one of the {plural} by name",
            "read",
            reply="Resource",
            errors=(404,),
        ),
    )
)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET", "/healthz", h.healthz, "Liveness and the store's serial", None, reply="Health", tag="meta"
    ),
    Endpoint("GET", f"{API}/openapi.json", h.openapi_document, "This document", None, tag="meta"),
    Endpoint("GET", f"{API}/serial", h.get_serial, "The store's serial", "read", reply="Serial"),
    Endpoint(
        "GET",
        f"{API}/resources",
        h.list_resources,
        "List resources of every kind (or one)",
        "read",
        reply="ResourcePage",
        query=(Param("kind", "string", "only this kind: " + " | ".join(KINDS)), *RESOURCE_PAGE),
    ),
    *_RESOURCE_ROUTES,
    Endpoint(
        "POST",
        f"{API}/apply",
        h.apply,
        "Apply a change set in one transaction, guarded by the serial",
        "apply",
        body="ApplyRequest",
        reply="Serial",
        errors=(404, 409),
    ),
    Endpoint(
        "POST",
        f"{API}/runs",
        h.create_run,
        "Create a flow run of a deployment",
        "apply",
        body="RunCreate",
        reply="FlowRun",
        status=201,
        errors=(404,),
        tag="runs",
    ),
    Endpoint(
        "GET",
        f"{API}/runs",
        h.list_runs,
        "List flow runs, newest first",
        "read",
        reply="FlowRunPage",
        query=(
            Param("deployment", "string", "only runs of this deployment (flow/name)"),
            Param("pool", "string", "only runs of this pool"),
            Param("state", "state-list", "only runs in these state types (repeat)", enum=STATE_TYPES),
            *PAGE,
        ),
        tag="runs",
    ),
    Endpoint(
        "POST",
        f"{API}/runs/claim",
        h.claim_runs,
        "Claim due runs of a pool with a lease (long-poll)",
        "worker",
        body="ClaimRequest",
        reply="Runs",
        tag="runs",
    ),
    Endpoint(
        "POST",
        f"{API}/runs/expire",
        h.expire_leases,
        "Crash (or retry) runs whose lease expired",
        "worker",
        body="ExpireRequest",
        reply="Runs",
        tag="runs",
    ),
    Endpoint(
        "GET",
        f"{API}/runs/{{run_id}}",
        h.get_run,
        "Get a flow run (a unique id prefix works)",
        "read",
        reply="FlowRun",
        errors=(404,),
        tag="runs",
    ),
    Endpoint(
        "POST",
        f"{API}/runs/{{run_id}}/state",
        h.set_state,
        "Move a run to a new state (validated)",
        "worker",
        body="StateRequest",
        reply="FlowRun",
        errors=(404, 409),
        tag="runs",
    ),
    Endpoint(
        "POST",
        f"{API}/runs/{{run_id}}/cancel",
        h.cancel_run,
        "Request cancellation of a run",
        "apply",
        reply="FlowRun",
        errors=(404, 409),
        tag="runs",
    ),
    Endpoint(
        "POST",
        f"{API}/runs/{{run_id}}/logs",
        h.append_logs,
        "Append log lines",
        "worker",
        body="LogAppend",
        reply="LogAppended",
        errors=(404,),
        tag="logs",
    ),
    Endpoint(
        "GET",
        f"{API}/runs/{{run_id}}/logs",
        h.read_logs,
        "Read log lines after a sequence number (long-poll follow)",
        "read",
        reply="LogPage",
        errors=(404,),
        tag="logs",
        query=(
            Param("after", "integer", "return lines with seq > after", default=0, minimum=0, maximum=2**53),
            Param("limit", "integer", "at most this many lines", default=1000, minimum=1, maximum=10_000),
            Param(
                "wait",
                "number",
                "wait up to this many seconds for new lines",
                default=0.0,
                minimum=0,
                maximum=MAX_WAIT_SECONDS,
            ),
        ),
    ),
    Endpoint(
        "GET",
        f"{API}/runs/{{run_id}}/states",
        h.list_run_states,
        "Every state the run entered, oldest first (its state history)",
        "read",
        reply="RunStates",
        errors=(404,),
        tag="runs",
    ),
    Endpoint(
        "GET",
        f"{API}/runs/{{run_id}}/task_runs",
        h.list_task_runs,
        "The run's task runs (as Prefect's engine reported them)",
        "read",
        reply="TaskRuns",
        errors=(404,),
        tag="runs",
    ),
    Endpoint(
        "GET",
        f"{API}/artifacts",
        h.list_artifacts,
        "Artifacts of one run or with one key",
        "read",
        reply="Artifacts",
        errors=(404,),
        query=(
            Param("run_id", "string", "only artifacts of this flow run"),
            Param("key", "string", "only artifacts with this key"),
        ),
        tag="runs",
    ),
    Endpoint(
        "GET",
        f"{API}/concurrency_limits",
        h.list_concurrency_limits,
        "Concurrency limits (tagged tasks take tag:<tag>) and their slots in use",
        "read",
        reply="ConcurrencyLimits",
        tag="runs",
    ),
    Endpoint(
        "PUT",
        f"{API}/concurrency_limits/{{name:path}}",
        h.set_concurrency_limit,
        "Create, change or (limit null) delete a concurrency limit",
        "apply",
        body="ConcurrencyLimitSet",
        reply="ConcurrencyLimitResult",
        tag="runs",
    ),
    Endpoint(
        "POST",
        f"{API}/workers/heartbeat",
        h.heartbeat,
        "Worker heartbeat; renews its runs' leases",
        "worker",
        body="HeartbeatRequest",
        reply="HeartbeatResponse",
        tag="workers",
    ),
    Endpoint(
        "GET",
        f"{API}/workers",
        h.list_workers,
        "List workers",
        "read",
        reply="Workers",
        query=(Param("pool", "string", "only workers of this pool"),),
        tag="workers",
    ),
    Endpoint(
        "GET",
        f"{API}/cache/{{key}}",
        h.get_cache_entry,
        "Get a shared-cache entry by content key",
        "read",
        reply="CacheEntry",
        errors=(404,),
        tag="cache",
    ),
    Endpoint(
        "PUT",
        f"{API}/cache/{{key}}",
        h.put_cache_entry,
        "Store a shared-cache entry under its content key",
        "cache",
        body="CacheEntry",
        reply="Stored",
        errors=(404,),
        tag="cache",
    ),
    Endpoint(
        "GET", f"{API}/export", h.export_state, "Export everything", "admin", reply="Export", tag="admin"
    ),
    Endpoint(
        "POST",
        f"{API}/import",
        h.import_state,
        "Replace everything with an export",
        "admin",
        body="Export",
        reply="Imported",
        tag="admin",
    ),
)
