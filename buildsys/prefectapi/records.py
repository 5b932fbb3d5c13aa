"""Logs, artifacts and concurrency limits/leases, as Prefect's engine sends and reads them."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from starlette.responses import JSONResponse

from buildsys.errors import NotFoundError
from buildsys.prefectapi.context import ApiError, Call
from buildsys.prefectapi.flowruns import uuid_param
from buildsys.prefectapi.shapes import artifact_json, iso
from buildsys.store.base import Artifact, ConcurrencyLimit, LogEntry
from buildsys.timestamps import epoch

log = logging.getLogger("buildsys.prefectapi")

LOCKED_RETRY_SECONDS = 1.0  # how soon a client told "no slot free" asks again


async def create_logs(call: Call) -> Any:
    """Prefect log records, batched across runs; records of no (or an unknown) flow run are
    dropped, as Prefect's own server keeps nothing it cannot attach."""
    by_run: dict[str, list[LogEntry]] = defaultdict(list)
    for record in call.body:
        run_id = record.get("flow_run_id")
        if not run_id:
            continue
        ts = epoch(record.get("timestamp")) or time.time()
        by_run[run_id].append(
            LogEntry(ts, "prefect", record["message"], int(record["level"]), record.get("name"), record.get("task_run_id"))
        )
    for run_id, entries in by_run.items():
        try:
            await call.sync(call.store.append_logs, run_id, entries)
        except NotFoundError:
            log.info("dropped %d log records of unknown flow run %s", len(entries), run_id)
    return JSONResponse(None, status_code=201)


# --- artifacts ----------------------------------------------------------------------------------


async def create_artifact(call: Call) -> Any:
    body = call.body
    artifact = Artifact(
        id="",
        flow_run_id=body.get("flow_run_id"),
        task_run_id=body.get("task_run_id"),
        key=body.get("key"),
        type=body.get("type"),
        description=body.get("description"),
        data=body.get("data"),
    )
    stored = await call.sync(call.store.create_artifact, artifact)
    return JSONResponse(artifact_json(stored), status_code=201)


async def filter_artifacts(call: Call) -> Any:
    body = call.body
    artifacts = body.get("artifacts") or {}
    keys = (artifacts.get("key") or {}).get("any_")
    runs = (artifacts.get("flow_run_id") or {}).get("any_") or ((body.get("flow_runs") or {}).get("id") or {}).get("any_")
    if (keys is not None and len(keys) > 1) or (runs is not None and len(runs) > 1):
        raise ApiError(422, "filter artifacts by at most one key and one flow run")
    found = await call.sync(
        call.store.list_artifacts,
        flow_run_id=runs[0] if runs else None,
        key=keys[0] if keys else None,
    )
    limit = body.get("limit")
    return [artifact_json(a) for a in (found if limit is None else found[: int(limit)])]


# --- concurrency limits (v2) and leases ---------------------------------------------------------


def limit_json(lim: ConcurrencyLimit) -> dict[str, Any]:
    return {
        "id": lim.id,
        "created": iso(lim.created_at),
        "updated": iso(lim.created_at),
        "name": lim.name,
        "limit": lim.limit,
        "active": True,
        "active_slots": lim.active_slots,
        "slot_decay_per_second": 0.0,
        "denied_slots": 0,
    }


async def increment_with_lease(call: Call) -> Any:
    """Slots of every limit named that exists, under one lease; 423 (ask again) when one is full.
    Names without a limit are not limited (Prefect's rule), so untagged-limit tasks never wait."""
    body = call.body
    lease, limits = await call.sync(
        call.store.acquire_slots,
        body["names"],
        int(body["slots"]),
        float(body.get("lease_duration") or 300),
        body.get("holder"),
    )
    if lease is None:
        full = ", ".join(f"{x.name} ({x.active_slots}/{x.limit})" for x in limits if x.active_slots + body["slots"] > x.limit)
        raise ApiError(423, f"no free slot: {full}", {"Retry-After": f"{LOCKED_RETRY_SECONDS:g}"})
    return {"lease_id": lease, "limits": [{"id": x.id, "name": x.name, "limit": x.limit} for x in limits]}


async def renew_lease(call: Call) -> Any:
    lease = uuid_param(call)
    if not await call.sync(call.store.renew_slots, lease, float(call.body.get("lease_duration") or 300)):
        raise ApiError(404, f"lease {lease} not found (it expired or was released)")
    return None


async def decrement_with_lease(call: Call) -> Any:
    await call.sync(call.store.release_slots, call.body["lease_id"])
    return None


async def create_limit(call: Call) -> Any:
    name = call.body["name"]
    if any(x.name == name for x in await call.sync(call.store.list_concurrency_limits)):
        raise ApiError(409, f"concurrency limit {name!r} already exists")
    created = await call.sync(call.store.set_concurrency_limit, name, int(call.body["limit"]))
    assert created is not None
    return JSONResponse(limit_json(created), status_code=201)


async def _limit(call: Call, name: str) -> ConcurrencyLimit:
    for lim in await call.sync(call.store.list_concurrency_limits):
        if lim.name == name or lim.id == name:
            return lim
    raise ApiError(404, f"concurrency limit {name!r} not found")


async def read_limit(call: Call) -> Any:
    return limit_json(await _limit(call, call.path["name"]))


async def delete_limit(call: Call) -> Any:
    found = await _limit(call, call.path["name"])
    await call.sync(call.store.set_concurrency_limit, found.name, None)
    return None


async def filter_limits(call: Call) -> Any:
    return [limit_json(x) for x in await call.sync(call.store.list_concurrency_limits)]


async def create_tag_limit(call: Call) -> Any:
    """Prefect's v1 tag limits (`prefect concurrency-limit create TAG N`) are the v2 limit
    "tag:TAG", which is what the engine asks for when it runs a tagged task."""
    tag = call.body["tag"]
    created = await call.sync(call.store.set_concurrency_limit, f"tag:{tag}", int(call.body["concurrency_limit"]))
    assert created is not None
    return {
        "id": created.id,
        "created": iso(created.created_at),
        "updated": iso(created.created_at),
        "tag": tag,
        "concurrency_limit": created.limit,
        "active_slots": [],
    }
