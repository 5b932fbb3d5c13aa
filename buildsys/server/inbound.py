"""What both HTTP APIs (buildsys's own server and its Prefect-compatible API) do the same way with a
request before its handler and with a store error after it. Each API words the outcome its own way
(its error shape and codes); the rules are these."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from starlette.requests import Request
from starlette.responses import Response

from buildsys.errors import BuildsysError, ConflictError, NotFoundError

T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


class Refused(Exception):
    """A request body refused before any handler: the HTTP status, a machine code, the message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class BlockingCalls:
    """What an app's services share: `run` a blocking store call on the app's own `executor`
    threads, off the event loop (the SQL store keeps one connection per thread, so the threads
    must live as long as the app)."""

    executor: ThreadPoolExecutor

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, partial(fn, *args, **kwargs))


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused (413) once it is larger than `limit` bytes, declared or sent."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, "too_large", f"the request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, "too_large", f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """Strict JSON (no NaN or Infinity; nesting too deep is refused, not a crash); 400 otherwise."""
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise Refused(400, "bad_json", f"the request body is not valid JSON: {exc}") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def schema_problem(validator: Draft202012Validator, data: Any) -> str | None:
    """The most relevant way `data` breaks its schema, located (`body.items[0]: …`); None if valid."""
    problem = best_match(validator.iter_errors(data))
    if problem is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem.absolute_path)
    return f"body{where}: {problem.message}"


def unstorable(value: Any, where: str) -> str | None:
    """What the store cannot hold (NUL characters, lone surrogates, integers past 64 bits:
    `buildsys.storable`, the rule of every door), located under `where`; None if all is storable.
    Both APIs answer it with a 422 naming the field, not a 500 from inside the store."""
    from buildsys.storable import value_problems
    from buildsys.storable import where as path_of

    for at, problem in value_problems(value):
        return f"{path_of(at, where)}: {problem}"
    return None


def store_status(exc: BuildsysError) -> int:
    """The HTTP status of a store error: 404 not found, 409 conflict, 503 when the database is
    unreachable or locked (SQLite's or PostgreSQL's OperationalError), else 422."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if _is_outage(exc.__cause__):
        return 503
    return 422


def _is_outage(cause: BaseException | None) -> bool:
    if isinstance(cause, sqlite3.OperationalError):
        return True
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(cause, psycopg.OperationalError)


def by_method(handlers: Mapping[str, Handler]) -> Handler:
    """One route's handlers by HTTP method, HEAD served as GET."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return dispatch
