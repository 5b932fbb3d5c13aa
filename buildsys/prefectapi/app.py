"""The Prefect-compatible API as an ASGI app: the route table served with auth, body limits and
validation, and Prefect-style JSON errors ({"detail": ...}).

Mounted by `buildsys server` at /prefect/api, and served by the worker itself (EmbeddedApi) when
runs use the file store. Tokens are buildsys's: `Authorization: Bearer <token>` (PREFECT_API_KEY),
or Basic auth whose password is the token (PREFECT_API_AUTH_STRING="buildsys:<token>"), which is
also what the events websockets send in their auth frame.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from buildsys.errors import BuildsysError
from buildsys.prefectapi import events
from buildsys.prefectapi.bodies import SCHEMAS
from buildsys.prefectapi.context import ApiError, Call, Services, TokenChecker
from buildsys.prefectapi.routes import ENDPOINTS, Endpoint
from buildsys.prefectapi.tokens import authorize, bound_run
from buildsys.server import inbound
from buildsys.server.endpoints import PrintableJSONResponse
from buildsys.store.base import StateStore

log = logging.getLogger("buildsys.prefectapi")

MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass
class Settings:
    max_body_bytes: int = MAX_BODY_BYTES
    threads: int = 8
    poll_seconds: float = 0.5  # events/out looks for cancelling and suspended runs this often
    extra: dict[str, Any] = field(default_factory=dict)


def create_app(
    store: StateStore, *, authenticator: TokenChecker | None = None, settings: Settings | None = None
) -> Starlette:
    """The Prefect-compatible API over `store` (a database store: SQLite or PostgreSQL)."""
    settings = settings or Settings()
    services = Services(
        store,
        executor=ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="prefectapi-db"),
        authenticator=authenticator,
        poll_seconds=settings.poll_seconds,
    )
    validators = {name: Draft202012Validator(schema) for name, schema in SCHEMAS.items()}
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for ep in ENDPOINTS:
        by_path.setdefault(ep.path, {})[ep.method] = _endpoint(ep, services, settings, validators)
    routes: list[BaseRoute] = [
        Route(path, inbound.by_method(handlers), methods=list(handlers)) for path, handlers in by_path.items()
    ]
    routes += [
        WebSocketRoute("/events/in", events.events_in(services)),
        WebSocketRoute("/events/out", events.events_out(services)),
        WebSocketRoute("/work_pools/{name}/workers/connect", events.not_served),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},  # type: ignore[dict-item]
    )
    app.state.services = services
    return app


def _endpoint(
    ep: Endpoint, services: Services, settings: Settings, validators: Mapping[str, Draft202012Validator]
) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        try:
            token = await authorize(services, request.headers.get("authorization"), ep.scope)
            run_key = bound_run(token)
            if run_key is not None and ep.run_key is None:
                raise ApiError(403, f"a run's key may not call {ep.method} {ep.path} (it is bound to flow run {run_key})")
            body = await _body(request, ep, settings, validators)
            path = {k: str(v) for k, v in request.path_params.items()}
            check_text(path, "path")
            call = Call(request, services, body, path, run_key)
            if run_key is not None and ep.run_key is not None:
                await ep.run_key(call)
            result = await ep.handler(call)
            if isinstance(result, Response):
                return result
            if result is None:
                return Response(status_code=204)
            return PrintableJSONResponse(result, status_code=ep.status)
        except ApiError as exc:
            return error(exc.status, exc.message, exc.headers)
        except BuildsysError as exc:
            return _store_error(exc)

    handle.__name__ = ep.handler.__name__
    return handle


async def _body(
    request: Request, ep: Endpoint, settings: Settings, validators: Mapping[str, Draft202012Validator]
) -> Any:
    if ep.body is None:
        return None
    try:
        raw = await inbound.read_limited(request, settings.max_body_bytes)
        data = inbound.parse_json(raw) if raw.strip() else {}
    except inbound.Refused as exc:
        raise ApiError(exc.status, exc.message) from None
    check_text(data, "body")
    problem = inbound.schema_problem(validators[ep.body], data)
    if problem is not None:
        raise ApiError(422, problem)
    return data


def check_text(value: Any, where: str) -> None:
    """What the store cannot hold is a 422 naming the field (`server.inbound.unstorable`)."""
    problem = inbound.unstorable(value, where)
    if problem is not None:
        raise ApiError(422, problem)


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    extra = dict(headers or {})
    if status == 401:
        extra.setdefault("WWW-Authenticate", "Bearer")
    return PrintableJSONResponse({"detail": message}, status_code=status, headers=extra or None)


def _store_error(exc: BuildsysError) -> JSONResponse:
    status = inbound.store_status(exc)
    if status == 503:
        log.warning("store unavailable: %s", exc.message)
    return error(status, exc.message + (f" ({exc.hint})" if exc.hint else ""))


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    message = f"no such endpoint: {request.method} {request.url.path}" if exc.status_code == 404 else exc.detail
    response = error(exc.status_code, message)
    response.headers.update(exc.headers or {})
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error(500, "internal server error (see the server log)")
