"""The ASGI app: the route table served with auth, body limits, JSON validation and JSON errors.

The app keeps nothing but caches: every fact lives in the store, so several server processes on one
PostgreSQL database behave as one. A background task creates scheduled runs and expires leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from buildsys.errors import BuildsysError
from buildsys.server import inbound
from buildsys.server.auth import Authenticator
from buildsys.server.cachetable import CacheTable
from buildsys.server.endpoints import ApiError, Call, Endpoint, PrintableJSONResponse, Services
from buildsys.server.guard import GuardPolicy, RequestGuard
from buildsys.server.routes import ENDPOINTS
from buildsys.server.schemas import shipped_components
from buildsys.store.base import StateStore

log = logging.getLogger("buildsys.server")

MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = MAX_BODY_BYTES
    housekeeping_seconds: float = 10.0  # schedules → runs, expired leases → crashed/retried
    poll_interval: float = 0.1  # long-polls look for other processes' changes this often
    housekeeping: bool = True
    db_threads: int = 8  # threads (so database connections) per server process


def create_app(
    store: StateStore,
    *,
    authenticator: Authenticator | None = None,
    settings: Settings | None = None,
    project_root: Path | None = None,
    guard: GuardPolicy | None = None,
    cache: CacheTable | None = None,
) -> Starlette:
    """The API over `store`, and the web UI at `/`; with an authenticator every non-public call
    and page needs a token. `project_root` gives the UI a project (plans, step graph).

    Everything the app serves, mounts included, sits behind the request guard (Host, Origin,
    JSON bodies: see buildsys/server/guard.py). `cache` serves a shared build cache at
    /api/v1/cache (buildsys.sharedcache)."""
    settings = settings or Settings()
    services = Services(
        store,
        executor=ThreadPoolExecutor(max_workers=settings.db_threads, thread_name_prefix="buildsys-db"),
        poll_interval=settings.poll_interval,
        cache=cache,
    )
    components = shipped_components()
    validators = {name: _validator(name, components) for name in components}
    by_path: dict[str, dict[str, Callable[[Request], Coroutine[Any, Any, Response]]]] = {}
    for ep in ENDPOINTS:
        by_path.setdefault(ep.path, {})[ep.method] = _endpoint(
            ep, services, authenticator, settings, validators
        )
    # one route per path, so a wrong method gets 405 with the path's whole Allow list
    routes: list[BaseRoute] = [
        Route(path, inbound.by_method(handlers), methods=list(handlers)) for path, handlers in by_path.items()
    ]
    # --- the web UI (buildsys.ui): pages at /, same store threads, same tokens and scopes ---
    from buildsys.ui import ui_routes

    routes.extend(ui_routes(services, authenticator, project_root))
    # ------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(_housekeeping(services, settings)) if settings.housekeeping else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            services.executor.shutdown(wait=False, cancel_futures=True)

    routes.append(_prefect_api(store, authenticator))
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(RequestGuard, policy=guard or GuardPolicy())],
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},  # type: ignore[dict-item]
    )


PREFECT_API = "/prefect/api"  # PREFECT_API_URL=http://HOST:PORT/prefect/api


def _prefect_api(store: StateStore, authenticator: Authenticator | None) -> Mount:
    """The Prefect-compatible API (buildsys.prefectapi) on the same store and tokens."""
    from buildsys.prefectapi import create_app as prefect_app

    return Mount(PREFECT_API, app=prefect_app(store, authenticator=authenticator))


def _validator(name: str, components: Mapping[str, Any]) -> Draft202012Validator:
    root = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": components}}
    return Draft202012Validator(root)


def _endpoint(
    ep: Endpoint,
    services: Services,
    authenticator: Authenticator | None,
    settings: Settings,
    validators: dict[str, Draft202012Validator],
) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    async def handle(request: Request) -> Response:
        try:
            if ep.scope is not None and authenticator is not None:
                await _authorize(request, ep.scope, authenticator, services)
            body = await _body(request, ep, settings, validators)
            query = _query(request, ep)
            path = {k: str(v) for k, v in request.path_params.items()}
            _reject_nul(path, "path")
            _reject_nul(query, "query")
            payload = await ep.handler(Call(request, services, body, path, query))
            if isinstance(payload, Response):
                return payload
            return PrintableJSONResponse(payload, status_code=ep.status)
        except inbound.Refused as exc:  # an ApiError, or a body the door refused
            return error_response(exc.status, exc.code, exc.message)
        except BuildsysError as exc:
            return _store_error(exc)

    handle.__name__ = ep.operation_id
    return handle


def _query(request: Request, ep: Endpoint) -> dict[str, Any]:
    known = {p.name for p in ep.query}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise ApiError(
            422, "invalid_request", f"unknown query parameter {unknown[0]!r} (accepted: {accepted})"
        )
    return {p.name: p.parse(request.query_params.getlist(p.name)) for p in ep.query}


async def _authorize(request: Request, scope: str, authenticator: Authenticator, services: Services) -> None:
    token = await services.run(authenticator.check, request.headers.get("authorization"))
    if token is None:
        raise ApiError(
            401, "unauthorized", "a valid bearer token is required (Authorization: Bearer <token>)"
        )
    if not token.allows(scope):
        raise ApiError(403, "forbidden", f"this token has scope {token.scope!r}; this call needs {scope!r}")


async def _body(
    request: Request, ep: Endpoint, settings: Settings, validators: dict[str, Draft202012Validator]
) -> Any:
    if ep.body is None:
        return None
    raw = await inbound.read_limited(request, settings.max_body_bytes)
    if not raw.strip():
        raise ApiError(400, "bad_json", "the request body is empty; this call takes a JSON object")
    data = inbound.parse_json(raw)
    problem = inbound.schema_problem(validators[ep.body], data)
    if problem is not None:
        raise ApiError(422, "invalid_request", problem)
    _reject_nul(data, "body")
    return data


def _reject_nul(value: Any, where: str) -> None:
    """What the store cannot hold is a 422 naming where (`server.inbound.unstorable`)."""
    problem = inbound.unstorable(value, where)
    if problem is not None:
        raise ApiError(422, "invalid_request", problem)


def error_response(status: int, code: str, message: str, hint: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    error = {"code": code, "message": message} | ({"hint": hint} if hint else {})
    return PrintableJSONResponse({"error": error}, status_code=status, headers=headers)


_CODES = {404: "not_found", 409: "conflict", 503: "unavailable", 422: "rejected"}


def _store_error(exc: BuildsysError) -> JSONResponse:
    status = inbound.store_status(exc)
    if status == 503:
        log.warning("store unavailable: %s", exc.message)
    return error_response(status, _CODES[status], exc.message, exc.hint)


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = (
        f"no such endpoint: {request.method} {request.url.path}" if exc.status_code == 404 else exc.detail
    )
    response = error_response(exc.status_code, codes.get(exc.status_code, "http_error"), message)
    response.headers.update(exc.headers or {})  # 405 keeps its Allow header
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(500, "internal", "internal server error (see the server log)")


async def _housekeeping(services: Services, settings: Settings) -> None:
    """Every few seconds: scheduled deployments → runs, expired leases → crashed or retried runs.
    The two never depend on each other, and one deployment's scheduling failure is logged once
    (and when it recovers), never blocking the other deployments."""
    from buildsys.schedules import FailureReports, schedule_round

    store = services.store
    reports = FailureReports()
    said: dict[str, str] = {}  # what failed whole, and how: said once, not every round
    while True:
        changed = False
        try:
            round_ = await services.run(schedule_round, store)
            changed = bool(round_.created)
            for failed, line in reports.news(round_):
                (log.warning if failed else log.info)("%s", line)
            said.pop("scheduling", None)
        except Exception as exc:  # the listing itself failed (a damaged record, the database away)
            _say_once(said, "scheduling", exc)
        try:
            changed = bool(await services.run(store.expire_leases)) or changed
            said.pop("expiring leases", None)
        except Exception as exc:
            _say_once(said, "expiring leases", exc)
        if changed:
            services.runs_changed.notify()
        await services.resources_changed.wait(settings.housekeeping_seconds)


def _say_once(said: dict[str, str], what: str, exc: Exception) -> None:
    """Log a housekeeping step's failure when it is new (a bug with its traceback), not every round."""
    text = exc.render() if isinstance(exc, BuildsysError) else f"{type(exc).__name__}: {exc}"
    if said.get(what) == text:
        return
    said[what] = text
    if isinstance(exc, BuildsysError):
        log.error("%s failed (the server tries again every round): %s", what, text)
    else:
        log.exception("%s failed (the server tries again every round)", what)
