"""The shape of an endpoint (method, path, scope, body and reply schemas, query parameters) and of
a call to one. The route table in `routes` is made of these; the app and the OpenAPI document are
both generated from it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse

from buildsys.printable import printable_json
from buildsys.server.inbound import BlockingCalls, Refused
from buildsys.store.base import StateStore

T = TypeVar("T")


def json_body(content: Any) -> bytes:
    """A reply's JSON with control, bidi and invisible characters spelled as `\\uXXXX` (the same
    document once parsed; safe when `curl` shows it on a terminal, and a lone surrogate that came
    from another door cannot make the reply fail to encode)."""
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return printable_json(text).encode("utf-8")


class PrintableJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json_body(content)


class ApiError(Refused):
    """An HTTP error with a machine-readable code (status, code, message); the app renders it as
    {"error": {...}}, as it does the refusals of `server.inbound`."""


@dataclass(frozen=True)
class Param:
    """A query parameter: name, type (integer | number | string | state-list), bounds, default."""

    name: str
    type: str
    description: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] = ()

    def parse(self, values: list[str]) -> Any:
        if self.type == "state-list":
            return [self._member(v) for v in values] or None
        if not values:
            return self.default
        raw = values[-1]
        if self.type == "string":
            return self._member(raw) if self.enum else raw
        value = self._number(raw)
        if self.minimum is not None and value < self.minimum:
            raise ApiError(
                422, "invalid_request", f"query parameter {self.name} must be >= {_fmt(self.minimum)}"
            )
        if self.maximum is not None and value > self.maximum:
            raise ApiError(
                422, "invalid_request", f"query parameter {self.name} must be <= {_fmt(self.maximum)}"
            )
        return value

    def _number(self, raw: str) -> float | int:
        try:
            value: float | int = int(raw) if self.type == "integer" else float(raw)
        except ValueError:
            raise ApiError(
                422, "invalid_request", f"query parameter {self.name} must be an {self.type}"
            ) from None
        if not math.isfinite(value):
            raise ApiError(422, "invalid_request", f"query parameter {self.name} must be finite")
        return value

    def _member(self, raw: str) -> str:
        if self.enum and raw not in self.enum:
            raise ApiError(
                422,
                "invalid_request",
                f"query parameter {self.name}: {raw!r} is not one of {', '.join(self.enum)}",
            )
        return raw


class Wakeup:
    """Wakes long-polls in this process when something they wait for may have happened.

    A waiter notes `generation` before it looks at the store and passes it to `wait`, so a change
    that lands while it is looking is not missed (it returns at once instead of sleeping).
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.generation = 0

    def notify(self) -> None:
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float, since: int | None = None) -> None:
        if since is not None and since != self.generation:
            return
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


@dataclass
class Services(BlockingCalls):
    """What handlers share: the store, the threads that call it, and the wake-ups for long-polls
    and the scheduler."""

    store: StateStore
    # A fixed set of long-lived threads: the SQL store keeps one connection per thread, so
    # threads that come and go (anyio's expire after 10 s idle) would pile up connections.
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=8, thread_name_prefix="buildsys-db")
    )
    poll_interval: float = 0.1  # how often long-polls look for changes made by other processes
    runs_changed: Wakeup = field(default_factory=Wakeup)
    logs_changed: Wakeup = field(default_factory=Wakeup)
    resources_changed: Wakeup = field(default_factory=Wakeup)
    pages: dict[Any, tuple[int, bytes]] = field(default_factory=dict)  # resource pages by serial
    cache: Any = None  # the shared cache's table (server.cachetable.CacheTable), if this server keeps one


@dataclass
class Call:
    """One request as a handler sees it: validated body, path and query values."""

    request: Request
    services: Services
    body: Any
    path: Mapping[str, str]
    query: Mapping[str, Any]

    @property
    def store(self) -> StateStore:
        return self.services.store

    async def sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call off the event loop."""
        return await self.services.run(fn, *args, **kwargs)


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # Starlette form: /api/v1/runs/{run_id}, {name:path} for names that may hold "/"
    handler: Handler
    summary: str
    scope: str | None  # required token scope; None = public
    body: str | None = None  # component schema of the request body
    reply: str | None = None  # component schema of the success body
    status: int = 200
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()  # error statuses beyond the ones every endpoint may return
    tag: str = "store"

    @property
    def openapi_path(self) -> str:
        return self.path.replace(":path}", "}")

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.strip("_")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
