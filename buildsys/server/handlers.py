"""The API's handlers: each is a thin translation between JSON and one store call."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.responses import Response

from buildsys.server.endpoints import ApiError, Call, json_body
from buildsys.server.schemas import MAX_WAIT_SECONDS, shipped_document
from buildsys.store.base import TERMINAL, Change, FlowRun, LogEntry, Resource, TaskRun

PAGE_CACHE_ENTRIES = 64


# --- shared cache (buildsys.sharedcache; entries are opaque here: runners check their seals) ---------


def _cache_key(call: Call) -> str:
    from buildsys.sharedcache import valid_key

    if call.services.cache is None:
        raise ApiError(404, "no_cache", "this server keeps no shared cache")
    key = call.path["key"]
    if not valid_key(key):
        raise ApiError(422, "invalid_request", "a cache key is 16 to 128 lowercase hexadecimal digits")
    return key


async def get_cache_entry(call: Call) -> Any:
    key = _cache_key(call)
    body = await call.sync(call.services.cache.get, key)
    if body is None:
        raise ApiError(404, "no_entry", f"no shared-cache entry {key}")
    return Response(body, media_type="application/json")


async def put_cache_entry(call: Call) -> Any:
    key = _cache_key(call)
    if call.body["key"] != key:
        raise ApiError(422, "invalid_request", "body.key must be the key in the path")
    await call.sync(call.services.cache.put, key, json.dumps(call.body, sort_keys=True))
    return {"key": key}


# --- health, serial, resources -----------------------------------------------------------------


async def healthz(call: Call) -> Any:
    return {"status": "ok", "serial": await call.sync(call.store.serial)}


async def get_serial(call: Call) -> Any:
    return {"serial": await call.sync(call.store.serial)}


def resource_json(r: Resource) -> dict[str, Any]:
    """A resource as JSON; shallow (the spec is already plain JSON), much cheaper than asdict."""
    return {
        "kind": r.kind,
        "name": r.name,
        "spec": r.spec,
        "owner": r.owner,
        "source": r.source,
        "id": r.id,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "serial": r.serial,
    }


def _page(resources: list[Resource], call: Call, serial: int) -> Any:
    limit, offset = call.query["limit"], call.query["offset"]
    items = resources[offset : offset + limit]
    return {
        "items": [resource_json(r) for r in items],
        "total": len(resources),
        "limit": limit,
        "offset": offset,
        "serial": serial,
    }


async def _listing(call: Call, kind: str | None) -> Any:
    """A page of resources. Pages are cached per server process under the store's serial, which
    moves on every change to desired state (import included) and never goes back: a cached page
    is served only while the database still has the serial it was read at."""
    key = (kind, call.query["limit"], call.query["offset"])
    cache = call.services.pages
    current = await call.sync(call.store.serial)
    hit = cache.get(key)
    if hit is not None and hit[0] == current:
        return Response(hit[1], media_type="application/json")

    def read() -> tuple[int, list[Resource]]:
        # the serial is read before and after so a page always says which state it belongs to
        while True:
            before = call.store.serial()
            resources = call.store.list_resources(kind)
            if call.store.serial() == before:
                return before, resources  # in the store's order (kind, name)

    serial, resources = await call.sync(read)
    body = json_body(_page(resources, call, serial))
    if len(cache) >= PAGE_CACHE_ENTRIES:
        cache.clear()
    cache[key] = (serial, body)
    return Response(body, media_type="application/json")


async def list_resources(call: Call) -> Any:
    return await _listing(call, call.query.get("kind"))


async def list_pools(call: Call) -> Any:
    return await _listing(call, "pool")


async def list_deployments(call: Call) -> Any:
    return await _listing(call, "deployment")


async def list_variables(call: Call) -> Any:
    return await _listing(call, "variable")


async def _get(call: Call, kind: str) -> Any:
    name = call.path["name"]
    found = await call.sync(call.store.get_resource, kind, name)
    if found is None:
        raise ApiError(404, "not_found", f"{kind} {name!r} does not exist")
    return resource_json(found)


async def get_pool(call: Call) -> Any:
    return await _get(call, "pool")


async def get_deployment(call: Call) -> Any:
    return await _get(call, "deployment")


async def get_variable(call: Call) -> Any:
    return await _get(call, "variable")


async def apply(call: Call) -> Any:
    changes = [Change.from_dict(c) for c in call.body["changes"]]
    serial = await call.sync(call.store.apply, changes, expected_serial=call.body.get("expected_serial"))
    call.services.resources_changed.notify()
    call.services.runs_changed.notify()  # a pool may have been un-paused or a limit raised
    return {"serial": serial}


# --- flow runs ---------------------------------------------------------------------------------


def _runs(runs: list[FlowRun]) -> Any:
    return {"runs": [r.to_dict() for r in runs]}


async def create_run(call: Call) -> Any:
    from buildsys.pools import check_run_job_variables

    body = call.body
    check_run_job_variables(body.get("job_variables"))
    run = await call.sync(
        call.store.create_run,
        body["deployment"],
        parameters=body.get("parameters"),
        job_variables=body.get("job_variables"),
        scheduled_at=body.get("scheduled_at"),
        queue=body.get("queue"),
        name=body.get("name"),
        idempotency_key=body.get("idempotency_key"),
        auto_scheduled=bool(body.get("auto_scheduled", False)),
        tags=tuple(body.get("tags") or ()),
    )
    call.services.runs_changed.notify()
    return run.to_dict()


async def get_run(call: Call) -> Any:
    return (await call.sync(call.store.get_run, call.path["run_id"])).to_dict()


async def list_runs(call: Call) -> Any:
    q = call.query
    runs = await call.sync(
        call.store.list_runs,
        deployment=q.get("deployment"),
        pool=q.get("pool"),
        states=q.get("state"),
        limit=q["limit"],
        offset=q["offset"],
    )
    return {"items": [r.to_dict() for r in runs], "limit": q["limit"], "offset": q["offset"]}


async def claim_runs(call: Call) -> Any:
    """Long-poll: try at once, then again only when something may have become claimable: this
    process committed a change, another process did (PostgreSQL's NOTIFY count moved), or the
    pool's next scheduled run came due. A store that cannot tell (SQLite written by other
    processes too) is tried again every poll interval, as before. An idle waiter therefore costs
    one claim per long-poll on PostgreSQL, not one per poll interval."""
    body = call.body
    deadline = time.monotonic() + min(float(body.get("wait", 0.0)), MAX_WAIT_SECONDS)
    services = call.services
    store = call.store
    tokens = getattr(store, "wakeup_token", None)
    while True:
        seen = services.runs_changed.generation
        token = await call.sync(tokens) if tokens is not None else None  # before the attempt
        runs = await call.sync(
            store.claim_runs,
            body["pool"],
            body["worker"],
            queues=body.get("queues"),
            limit=int(body.get("limit", 1)),
            lease_seconds=float(body.get("lease_seconds", 30.0)),
        )
        if runs or deadline - time.monotonic() <= 0:
            return _runs(runs)
        due = await call.sync(store.next_due, body["pool"]) if token is not None else None  # type: ignore[attr-defined]
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _runs([])
            await services.runs_changed.wait(min(remaining, services.poll_interval), seen)
            if await call.request.is_disconnected():  # nobody to hand a claimed run to
                return _runs([])
            if token is None or services.runs_changed.generation != seen:
                break
            assert tokens is not None
            if tokens() != token or (due is not None and due <= time.time()):
                break


async def heartbeat(call: Call) -> Any:
    body = call.body
    cancelling = await call.sync(
        call.store.heartbeat,
        body["pool"],
        body["worker"],
        list(body.get("run_ids") or ()),
        lease_seconds=float(body.get("lease_seconds", 30.0)),
    )
    return {"cancelling": list(cancelling)}


async def set_state(call: Call) -> Any:
    body = call.body
    run = await call.sync(
        call.store.set_run_state,
        call.path["run_id"],
        body["state"],
        name=body.get("name"),
        message=body.get("message"),
        worker=body.get("worker"),
        infrastructure_pid=body.get("infrastructure_pid"),
        exit_code=body.get("exit_code"),
    )
    call.services.runs_changed.notify()  # a retry may have made it claimable, a slot freed up
    call.services.logs_changed.notify()  # log followers stop at a terminal state
    return run.to_dict()


async def cancel_run(call: Call) -> Any:
    run = await call.sync(call.store.request_cancel, call.path["run_id"])
    call.services.logs_changed.notify()
    return run.to_dict()


async def mark_run(call: Call) -> Any:
    body = call.body
    run = await call.sync(
        call.store.mark_run,
        call.path["run_id"],
        body["state"],
        message=body.get("message"),
        force=bool(body.get("force", False)),
    )
    call.services.runs_changed.notify()  # a retry may have made it claimable, a slot freed up
    call.services.logs_changed.notify()  # log followers stop at a terminal state
    return run.to_dict()


async def delete_run(call: Call) -> Any:
    run = await call.sync(call.store.delete_run, call.path["run_id"])
    call.services.logs_changed.notify()  # a page following the run learns that it is gone
    return run.to_dict()


async def expire_leases(call: Call) -> Any:
    runs = await call.sync(call.store.expire_leases, now=(call.body or {}).get("now"))
    if runs:
        call.services.runs_changed.notify()
    return _runs(runs)


# --- logs and workers --------------------------------------------------------------------------


async def append_logs(call: Call) -> Any:
    lines = [
        LogEntry(float(x["ts"]), str(x["stream"]), str(x["message"]), x.get("level"), x.get("logger"), x.get("task_run_id"))
        for x in call.body["lines"]
    ]
    last = await call.sync(call.store.append_logs, call.path["run_id"], lines)
    call.services.logs_changed.notify()
    return {"last_seq": last}


async def read_logs(call: Call) -> Any:
    """With `wait`, a follow: returns as soon as there are lines after `after`, or the run has
    ended, or the wait runs out."""
    run_id, after, limit = call.path["run_id"], call.query["after"], call.query["limit"]
    deadline = time.monotonic() + call.query["wait"]
    services = call.services
    while True:
        seen = services.logs_changed.generation
        run = await call.sync(call.store.get_run, run_id)
        lines = await call.sync(call.store.read_logs, run.id, after=after, limit=limit)
        remaining = deadline - time.monotonic()
        if lines or run.state in TERMINAL or remaining <= 0:
            return {"lines": [x.to_dict() for x in lines], "state": run.state}
        await services.logs_changed.wait(min(remaining, services.poll_interval), seen)
        if await call.request.is_disconnected():
            return {"lines": [], "state": run.state}


async def list_run_states(call: Call) -> Any:
    states = await call.sync(call.store.list_run_states, call.path["run_id"])
    return {"items": [s.to_dict() for s in states]}


async def list_task_runs(call: Call) -> Any:
    run = await call.sync(call.store.get_run, call.path["run_id"])
    return {"items": [_task_json(t) for t in await call.sync(call.store.list_task_runs, run.id)]}


def _task_json(task: TaskRun) -> dict[str, Any]:
    data = task.to_dict()
    data["tags"] = list(task.tags)
    data["history"] = [dict(h) for h in task.history]
    return data


async def list_artifacts(call: Call) -> Any:
    run_id = call.query.get("run_id")
    if run_id is not None:
        run_id = (await call.sync(call.store.get_run, run_id)).id
    found = await call.sync(call.store.list_artifacts, flow_run_id=run_id, key=call.query.get("key"))
    return {"items": [a.to_dict() for a in found]}


async def list_concurrency_limits(call: Call) -> Any:
    return {"items": [x.to_dict() for x in await call.sync(call.store.list_concurrency_limits)]}


async def set_concurrency_limit(call: Call) -> Any:
    result = await call.sync(call.store.set_concurrency_limit, call.path["name"], call.body["limit"])
    return {"limit": None if result is None else result.to_dict()}


async def list_workers(call: Call) -> Any:
    workers = await call.sync(call.store.list_workers, call.query.get("pool"))
    return {"items": [w.to_dict() for w in workers]}


# --- housekeeping ------------------------------------------------------------------------------


async def export_state(call: Call) -> Any:
    return await call.sync(call.store.export)


async def import_state(call: Call) -> Any:
    await call.sync(call.store.import_, call.body)
    call.services.resources_changed.notify()
    call.services.runs_changed.notify()
    return {"serial": await call.sync(call.store.serial)}


async def openapi_document(call: Call) -> Any:
    return shipped_document()
