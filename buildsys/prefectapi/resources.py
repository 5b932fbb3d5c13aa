"""Flows, deployments, work pools and queues, variables and the admin calls, as Prefect's clients
read them. Pools, deployments and variables are buildsys's desired-state resources."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from buildsys.errors import BuildsysError
from buildsys.prefectapi.context import ApiError, Call
from buildsys.prefectapi.flowruns import pool_of, uuid_param, view
from buildsys.prefectapi.shapes import deployment_json, flow_json, iso, pool_json, queues_of
from buildsys.store.base import ACTIVE, Change, Resource
from buildsys.store.sqlengine import flow_id
from buildsys.store.transitions import PREFECT_WORKER_PREFIX

PREFECT_VERSION = "3.9.1"  # what /admin/version answers: the Prefect release this API follows
DEFAULT_HEARTBEAT_SECONDS = 30


async def version(call: Call) -> Any:
    return PREFECT_VERSION


async def storage(call: Call) -> Any:
    return {"default_result_storage_block_id": None}


async def csrf_token(call: Call) -> Any:
    raise ApiError(404, "CSRF protection is disabled.")


async def health(call: Call) -> Any:
    return True


# --- flows --------------------------------------------------------------------------------------


async def create_flow(call: Call) -> Any:
    name = call.body["name"]
    fid = await call.sync(call.store.ensure_flow, name)
    call.services.known_flows.add(name)
    return flow_json(fid, name)


async def read_flow(call: Call) -> Any:
    fid = uuid_param(call)
    name = await call.sync(call.store.get_flow, fid)
    if name is None:
        raise ApiError(404, f"flow {fid} not found")
    return flow_json(fid, name)


async def read_flow_by_name(call: Call) -> Any:
    name = call.path["name"]
    fid = flow_id(name)
    if await call.sync(call.store.get_flow, fid) is None:
        raise ApiError(404, f"flow {name!r} not found")
    return flow_json(fid, name)


# --- deployments --------------------------------------------------------------------------------


async def _deployment(call: Call, dep: Resource | None, what: str) -> Any:
    if dep is None:
        raise ApiError(404, f"deployment {what} not found")
    name = str(dep.spec.get("flow_name") or dep.name.split("/", 1)[0])
    fid = await call.sync(call.store.ensure_flow, name)
    pool = await pool_of(call, str(dep.spec.get("work_pool_name") or ""))
    return deployment_json(dep, fid, pool)


async def read_deployment(call: Call) -> Any:
    did = uuid_param(call)
    return await _deployment(call, await call.sync(call.store.get_resource_by_id, "deployment", did), did)


async def read_deployment_by_name(call: Call) -> Any:
    name = f"{call.path['flow']}/{call.path['name']}"
    return await _deployment(call, await call.sync(call.store.get_resource, "deployment", name), repr(name))


# --- work pools and queues ----------------------------------------------------------------------


async def _pool(call: Call) -> Resource:
    pool = await pool_of(call, call.path["name"])
    if pool is None:
        raise ApiError(404, f"work pool {call.path['name']!r} not found")
    return pool


def template_of(pool: Resource) -> Mapping[str, Any]:
    """The template the pool's runs get (pools.pool_template, as buildsys's worker uses it); a pool
    of a type this server does not know shows what it stores."""
    from buildsys.pools import pool_template

    spec = pool.spec
    try:
        return pool_template(spec)
    except BuildsysError:
        return dict(spec.get("base_job_template") or {"job_configuration": {}, "variables": {"properties": {}}})


async def read_pool(call: Call) -> Any:
    pool = await _pool(call)
    return pool_json(pool, template_of(pool))


async def filter_queues(call: Call) -> Any:
    return queues_of(await _pool(call))


async def read_pool_queue(call: Call) -> Any:
    for queue in queues_of(await _pool(call)):
        if queue["name"] == call.path["queue"]:
            return queue
    raise ApiError(404, f"work queue {call.path['queue']!r} not found in pool {call.path['name']!r}")


async def read_queue(call: Call) -> Any:
    qid = uuid_param(call)
    for pool in await call.sync(call.store.list_resources, "pool"):
        for queue in queues_of(pool):
            if queue["id"] == qid:
                return queue
    raise ApiError(404, f"work queue {qid} not found")


def prefect_worker(pool: str) -> str:
    """The buildsys worker name runs handed to Prefect's workers of `pool` are held by (Prefect's
    claim call does not say which worker asks)."""
    return f"{PREFECT_WORKER_PREFIX}{pool}"


async def scheduled_runs(call: Call) -> Any:
    """Prefect's worker polls here: due runs are claimed for it under buildsys's claim rules (a
    lease, limits, priorities, never one run to two workers); its PENDING is then acknowledged."""
    pool = await _pool(call)
    body = call.body
    lease = 3.0 * DEFAULT_HEARTBEAT_SECONDS
    runs = await call.sync(
        call.store.claim_runs,
        pool.name,
        prefect_worker(pool.name),
        queues=body.get("work_queue_names") or None,
        limit=int(body.get("limit") or 10),
        lease_seconds=lease,
    )
    out = []
    for run in runs:
        flow_run = await view(call, run)
        out.append({"work_pool_id": pool.id, "work_queue_id": flow_run["work_queue_id"], "flow_run": flow_run})
    return out


async def worker_heartbeat(call: Call) -> Any:
    """Records Prefect's worker and renews the leases of the runs handed to Prefect's workers of
    this pool (for three of its heartbeat intervals)."""
    pool = await _pool(call)
    interval = call.body.get("heartbeat_interval_seconds") or DEFAULT_HEARTBEAT_SECONDS
    holder = prefect_worker(pool.name)
    held = await call.sync(call.store.find_runs, states=sorted(ACTIVE), pool=pool.name, limit=10_000)
    ids = [r.id for r in held if r.worker == holder]
    await call.sync(call.store.heartbeat, pool.name, call.body["name"], [])
    if ids:
        await call.sync(call.store.heartbeat, pool.name, holder, ids, lease_seconds=3.0 * float(interval))
    return None


async def filter_workers(call: Call) -> Any:
    pool = await _pool(call)
    workers = await call.sync(call.store.list_workers, pool.name)
    return [
        {
            "id": None,
            "name": w.name,
            "work_pool_id": pool.id,
            "last_heartbeat_time": iso(w.last_heartbeat),
            "status": w.status,
        }
        for w in workers
        if not w.name.startswith(PREFECT_WORKER_PREFIX)
    ]


# --- variables ----------------------------------------------------------------------------------
# Variables are desired state: `apply` owns them. A flow's Variable.set writes through the same
# apply path (bumping the serial), keeping the variable's owner, so `plan` shows a changed declared
# variable as a drift to put back, and `apply --prune` never deletes one made at run time.


def variable_json(res: Resource) -> dict[str, Any]:
    return {
        "id": res.id,
        "created": iso(res.created_at),
        "updated": iso(res.updated_at),
        "name": res.name,
        "value": res.spec.get("value"),
        "tags": list(res.spec.get("tags") or []),
    }


async def _variable(call: Call, name: str) -> Resource:
    res = await call.sync(call.store.get_resource, "variable", name)
    if res is None:
        raise ApiError(404, f"variable {name!r} not found")
    return res


async def read_variable(call: Call) -> Any:
    return variable_json(await _variable(call, call.path["name"]))


async def filter_variables(call: Call) -> Any:
    return [variable_json(r) for r in await call.sync(call.store.list_resources, "variable")]


async def create_variable(call: Call) -> Any:
    body = call.body
    name = body["name"]
    if await call.sync(call.store.get_resource, "variable", name) is not None:
        raise ApiError(409, f"variable {name!r} already exists")
    spec = {"value": body.get("value"), **({"tags": body["tags"]} if body.get("tags") else {})}
    await call.sync(call.store.apply, [Change("create", "variable", name, spec)], expected_serial=None)
    return JSONResponse(variable_json(await _variable(call, name)), status_code=201)


async def update_variable(call: Call) -> Any:
    old = await _variable(call, call.path["name"])
    spec = dict(old.spec)
    if "value" in call.body:
        spec["value"] = call.body["value"]
    if call.body.get("tags") is not None:
        spec["tags"] = call.body["tags"]
    change = Change("update", "variable", old.name, spec, owner=old.owner, source=old.source)
    await call.sync(call.store.apply, [change], expected_serial=None)
    return None


async def delete_variable(call: Call) -> Any:
    old = await _variable(call, call.path["name"])
    await call.sync(call.store.apply, [Change("delete", "variable", old.name)], expected_serial=None)
    return None
