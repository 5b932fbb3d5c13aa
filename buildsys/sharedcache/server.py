"""The shared cache on `buildsys server`: GET/PUT /api/v1/cache/{key} with a bearer token
(BUILDSYS_CACHE_TOKEN, else BUILDSYS_TOKEN). Any token reads; writing needs the `cache` scope.

Requests go through urllib3 (one thread-safe pool of kept-alive connections), which a build that
uses Docker steps has loaded already: httpx would add its own import and a TLS context, about a
second of a fresh runner's start on a busy machine, for a handful of small requests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import urllib3

from buildsys.sharedcache.backend import MAX_ENTRY_BYTES, Unreachable, WriteRefused

TIMEOUT = urllib3.Timeout(connect=3.0, read=10.0)
POOL_SIZE = 16  # the engine looks entries up on up to --jobs + 8 threads


class ServerBackend:
    def __init__(self, url: str, env: Mapping[str, str]) -> None:
        from buildsys.sensitive import mask_url_text

        base = url.rstrip("/")
        self.where = mask_url_text(base)
        self.base = base.removesuffix("/api/v1")
        token = env.get("BUILDSYS_CACHE_TOKEN") or env.get("BUILDSYS_TOKEN") or ""
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        # No proxy from the environment (as before). A refused connection is not retried: a cache
        # that is not there is one warning at once, and the build goes on without it. A kept-alive
        # connection the server closed meanwhile is retried once on a new one.
        retries = urllib3.Retry(total=1, connect=0, read=1, status=0, other=0, redirect=False)
        self.pool = urllib3.PoolManager(maxsize=POOL_SIZE, timeout=TIMEOUT, retries=retries)

    def get(self, key: str) -> bytes | None:
        reply = self._send("GET", key)
        if reply.status == 404 and _code(reply) == "no_entry":
            return None
        self._ok(reply, "read")
        if len(reply.data) > MAX_ENTRY_BYTES:
            raise Unreachable(f"the server sent an entry larger than {MAX_ENTRY_BYTES} bytes")
        return bytes(reply.data)

    def has(self, key: str) -> bool:
        reply = self._send("HEAD", key)
        if reply.status == 404:
            return False
        self._ok(reply, "read")
        return True

    def put(self, key: str, data: bytes) -> None:
        reply = self._send("PUT", key, body=data, headers={"Content-Type": "application/json"})
        if reply.status in (401, 403):
            raise WriteRefused(f"{self.where} refused the write: {_message(reply)}")
        self._ok(reply, "write")

    def _send(self, method: str, key: str, *, body: bytes | None = None,
              headers: Mapping[str, str] | None = None) -> Any:
        try:
            return self.pool.request(method, f"{self.base}/api/v1/cache/{key}", body=body,
                                     headers={**self.headers, **(headers or {})})
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc  # MaxRetryError: the error behind it
            raise Unreachable(f"{_kind(reason)}: {_detail(reason)}") from None

    def _ok(self, reply: Any, doing: str) -> None:
        if reply.status >= 400:
            raise Unreachable(f"{doing}: HTTP {reply.status}: {_message(reply)}")


def _kind(error: object) -> str:
    """A short name for the failure: ConnectError (nothing listens there, or no such host),
    Timeout, else the exception's class."""
    if isinstance(error, urllib3.exceptions.NewConnectionError):
        return "ConnectError"
    if isinstance(error, urllib3.exceptions.TimeoutError):
        return "Timeout"
    return type(error).__name__


def _detail(error: object) -> str:
    """The cause, without urllib3's preamble before a refused connection's OS error
    (`HTTPConnection(host=…, port=…): Failed to establish a new connection: `)."""
    text = str(error)
    marker = "Failed to establish a new connection: "
    return text.split(marker, 1)[1] if marker in text else text


def _body(reply: Any) -> dict[str, Any]:
    try:
        data = json.loads(reply.data)
    except (ValueError, RecursionError):
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _code(reply: Any) -> str:
    return str(_body(reply).get("code", ""))


def _message(reply: Any) -> str:
    import http

    try:
        reason = http.HTTPStatus(reply.status).phrase
    except ValueError:
        reason = ""
    return str(_body(reply).get("message") or reason)
