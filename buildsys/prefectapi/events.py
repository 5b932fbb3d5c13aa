"""Prefect's event websockets (subprotocol "prefect"; an auth frame first).

events/in: the engine reports task runs only here, as `prefect.task-run.<State>` events carrying
the whole task run; each becomes a task-run record with its state history. Other events are
accepted and not kept.

events/out: Prefect's worker subscribes to `prefect.flow-run.Cancelling`, the engine to
`prefect.flow-run.Suspended`. Cancellation may be requested by any process on the same database
(`buildsys runs cancel` on the file store, another server on PostgreSQL), so each subscription
looks at the store every `poll_seconds` and pushes an event for every run that entered such a
state. Accepting a subscription and then staying silent would stop cancellation for good (the
clients only poll while the socket is down), so this really pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from buildsys.errors import BuildsysError
from buildsys.prefectapi.context import ApiError, Services
from buildsys.prefectapi.runscope import RunScope
from buildsys.prefectapi.shapes import iso, state_id, state_ts
from buildsys.prefectapi.tokens import READ, WRITE, authorize, bound_run, frame_token
from buildsys.store.base import CANCELLED, CANCELLING, PAUSED, TERMINAL, FlowRun, TaskRun
from buildsys.timestamps import epoch

log = logging.getLogger("buildsys.prefectapi")

SUBPROTOCOL = "prefect"
MAX_MESSAGE = 1024 * 1024
AUTH_TIMEOUT = 10.0


class _Refused(Exception):
    """The auth frame was not acceptable; the socket is closed."""


async def _handshake(ws: WebSocket, services: Services, scope: str) -> RunScope | None:
    """Accept, then read the auth frame; the RunScope of a per-run key (None for any other
    token); _Refused (closed) when it is not acceptable."""
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    try:
        frame = json.loads(await asyncio.wait_for(ws.receive_text(), AUTH_TIMEOUT))
    except (TimeoutError, ValueError, KeyError, WebSocketDisconnect):
        await _close(ws, 1008)
        raise _Refused from None
    if not isinstance(frame, dict) or frame.get("type") != "auth":
        await _refuse(ws, "the first message must be {\"type\": \"auth\", \"token\": ...}")
        raise _Refused
    run_scope = None
    if services.authenticator is not None:
        token = frame_token(frame.get("token"))
        try:
            run_key = bound_run(await authorize(services, f"Bearer {token}" if token else None, scope))
        except ApiError as exc:
            await _refuse(ws, exc.message)
            raise _Refused from None
        run_scope = RunScope(services, run_key) if run_key is not None else None
    await ws.send_text(json.dumps({"type": "auth_success"}))
    return run_scope


# what sending on a socket the client already left raises: starlette's disconnect, its RuntimeError
# for a socket closed already, and the server's OSError (uvicorn's ClientDisconnected)
_GONE = (WebSocketDisconnect, RuntimeError, OSError)


async def _refuse(ws: WebSocket, reason: str) -> None:
    with contextlib.suppress(*_GONE):
        await ws.send_text(json.dumps({"type": "auth_failure", "reason": reason}))
    await _close(ws, 1008)


async def _close(ws: WebSocket, code: int) -> None:
    with contextlib.suppress(*_GONE):
        await ws.close(code)


# --- events/in ----------------------------------------------------------------------------------


def events_in(services: Services) -> Callable[[WebSocket], Awaitable[None]]:
    async def endpoint(ws: WebSocket) -> None:
        try:
            scope = await _handshake(ws, services, WRITE)
        except _Refused:
            return
        try:
            while True:
                text = await ws.receive_text()
                if len(text) > MAX_MESSAGE:
                    continue
                task = task_run_of(_json(text))
                if task is None:
                    continue
                if scope is not None and not await scope.may_write(task.flow_run_id):
                    log.info("task-run event of flow run %s dropped: the key is bound to %s", task.flow_run_id, scope.run_id)
                    continue
                await _record(services, task)
        except WebSocketDisconnect:
            return

    return endpoint


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


async def _record(services: Services, task: TaskRun) -> None:
    try:
        await services.run(services.store.record_task_run, task)
    except BuildsysError as exc:  # an unknown flow run, bad text: the event is dropped, not the socket
        log.info("task-run event not recorded: %s", exc.message)


def _resource_id(value: object, kind: str) -> str | None:
    prefix = f"prefect.{kind}."
    if isinstance(value, str) and value.startswith(prefix):
        try:
            return str(uuid.UUID(value[len(prefix) :]))
        except ValueError:
            return None
    return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def task_run_of(event: object) -> TaskRun | None:
    """The task run a `prefect.task-run.<State>` event reports, or None for any other event."""
    if not isinstance(event, dict) or not str(event.get("event", "")).startswith("prefect.task-run."):
        return None
    resource = _dict(event.get("resource"))
    task_id = _resource_id(resource.get("prefect.resource.id"), "task-run")
    related = event.get("related")
    related = related if isinstance(related, list) else []
    flow_run_id = next(
        (
            _resource_id(r.get("prefect.resource.id"), "flow-run")
            for r in related
            if isinstance(r, dict) and r.get("prefect.resource.role") == "flow-run"
        ),
        None,
    )
    payload = _dict(event.get("payload"))
    state = _dict(payload.get("validated_state"))
    body = _dict(payload.get("task_run"))
    kind = state.get("type")
    if task_id is None or flow_run_id is None or not isinstance(kind, str):
        return None
    ts = epoch(event.get("occurred")) or 0.0
    name = str(state.get("name") or kind.title())
    message = state.get("message") if isinstance(state.get("message"), str) else None
    run_count = body.get("run_count")
    return TaskRun(
        id=task_id,
        flow_run_id=flow_run_id,
        name=str(body.get("name") or resource.get("prefect.resource.name") or task_id),
        task_key=str(body.get("task_key") or ""),
        dynamic_key=str(body.get("dynamic_key") or ""),
        state=kind,
        state_name=name,
        state_message=message,
        state_ts=ts,
        created_at=epoch(body.get("expected_start_time")) or ts,
        started_at=epoch(body.get("start_time")),
        ended_at=(epoch(body.get("end_time")) or ts) if kind in TERMINAL else None,
        run_count=run_count if isinstance(run_count, int) and not isinstance(run_count, bool) else 0,
        cached=name == "Cached",
        tags=tuple(str(t) for t in body.get("tags") or () if isinstance(t, str)),
        history=({"type": kind, "name": name, "ts": ts, "message": message},),
    )


# --- events/out ---------------------------------------------------------------------------------

# flow-run events this API can push, by the state a run is in: Prefect's worker reads
# Cancelling, the engine Suspended (a PAUSED run named so)
_PUSHED = {
    "prefect.flow-run.Cancelling": lambda r: r.state == CANCELLING
    or (r.state == CANCELLED and r.state_name == "Cancelling"),
    "prefect.flow-run.Suspended": lambda r: r.state == PAUSED and r.state_name == "Suspended",
}


def events_out(services: Services) -> Callable[[WebSocket], Awaitable[None]]:
    async def endpoint(ws: WebSocket) -> None:
        try:
            scope = await _handshake(ws, services, READ)
        except _Refused:
            return
        try:
            wanted = _subscription(_json(await ws.receive_text()))
        except WebSocketDisconnect:
            return
        if scope is not None:  # a run's key hears about its own runs only
            names, runs = wanted
            mine = [r for r in (runs if runs is not None else {scope.run_id}) if await scope.may_read(r)]
            wanted = names, frozenset(mine)
        listener = asyncio.create_task(_drain(ws))
        try:
            await _push(ws, services, wanted, listener)
        except WebSocketDisconnect:
            pass
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                await listener

    return endpoint


def _subscription(message: object) -> tuple[frozenset[str], frozenset[str] | None]:
    """(event names, flow-run ids or None for all) a {"type": "filter"} message asks for."""
    filt = message.get("filter") if isinstance(message, dict) else None
    event = filt.get("event") if isinstance(filt, dict) else None
    names = event.get("name") if isinstance(event, dict) else None
    prefixes = event.get("prefix") if isinstance(event, dict) else None
    wanted = {n for n in _PUSHED if (isinstance(names, list) and n in names)}
    if isinstance(prefixes, list):
        wanted |= {n for n in _PUSHED if any(isinstance(p, str) and n.startswith(p) for p in prefixes)}
    if names is None and prefixes is None:
        wanted = set(_PUSHED)
    resource = filt.get("resource") if isinstance(filt, dict) else None
    ids = resource.get("id") if isinstance(resource, dict) else None
    runs = None
    if isinstance(ids, list):
        runs = frozenset(r for r in (_resource_id(i, "flow-run") for i in ids) if r is not None)
    return frozenset(wanted), runs


async def _drain(ws: WebSocket) -> None:
    """Read (and ignore) what the subscriber sends, so a disconnect is noticed."""
    while True:
        await ws.receive_text()


# what to ask the store for each pushed event: (state types, state names or None)
_QUERIES: dict[str, list[tuple[list[str], list[str] | None]]] = {
    "prefect.flow-run.Cancelling": [([CANCELLING], None), ([CANCELLED], ["Cancelling"])],
    "prefect.flow-run.Suspended": [([PAUSED], ["Suspended"])],
}


async def _push(
    ws: WebSocket, services: Services, wanted: tuple[frozenset[str], frozenset[str] | None], listener: asyncio.Task[None]
) -> None:
    names, runs = wanted
    ids = sorted(runs) if runs is not None else None
    sent: set[tuple[str, str]] = set()
    while not listener.done():
        for name in sorted(names):
            for states, state_names in _QUERIES[name]:
                found = await services.run(
                    services.store.find_runs, ids=ids, states=states, state_names=state_names, limit=1000
                )
                for run in found:
                    key = (run.id, state_id(run))
                    if _PUSHED[name](run) and key not in sent:
                        sent.add(key)
                        await ws.send_text(json.dumps({"type": "event", "event": flow_run_event(name, run)}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(listener), services.poll_seconds)


def flow_run_event(name: str, run: FlowRun) -> Mapping[str, Any]:
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{run.id}/{state_id(run)}")),
        "occurred": iso(state_ts(run)),
        "event": name,
        "resource": {
            "prefect.resource.id": f"prefect.flow-run.{run.id}",
            "prefect.resource.name": run.name,
            "prefect.state-message": run.state_message or "",
            "prefect.state-name": run.state_name,
            "prefect.state-timestamp": iso(state_ts(run)),
            "prefect.state-type": run.state,
        },
        "related": [],
        "payload": {
            "intended": {"from": None, "to": run.state},
            "validated_state": {"type": run.state, "name": run.state_name, "message": run.state_message},
        },
    }


async def not_served(ws: WebSocket) -> None:
    """The worker channel: 404, so Prefect's worker uses the REST calls instead."""
    if "websocket.http.response" in (ws.scope.get("extensions") or {}):
        await ws.send_denial_response(JSONResponse({"detail": "the worker channel is not served"}, status_code=404))
    else:
        await ws.close(1008)
