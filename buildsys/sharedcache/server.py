"""The shared cache on `buildsys server`: GET/PUT /api/v1/cache/{key} with a bearer token
(BUILDSYS_CACHE_TOKEN, else BUILDSYS_TOKEN). Any token reads; writing needs the `cache` scope.

Requests go through one pool of kept-alive connections (buildsys.sharedcache.http, on the standard
library's http.client): httpx or urllib3 would cost more to import than the few dozen small
requests of a restored build take.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

from buildsys.sharedcache.backend import MAX_ENTRY_BYTES, SharedCacheError, Unreachable, WriteRefused
from buildsys.sharedcache.http import Pool, RequestError

TIMEOUT_S = 10.0
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
        # that is not there is one warning at once, and the build goes on without it (the pool's
        # rule: only a GET, HEAD or PUT on a kept-alive connection the server had closed is sent again).
        parts = urllib.parse.urlsplit(self.base)
        self.prefix = parts.path.rstrip("/")
        try:
            self.pool = Pool.to(f"{parts.scheme}://{parts.netloc}", timeout=TIMEOUT_S, idle=POOL_SIZE)
        except ValueError:
            raise SharedCacheError(f"shared cache URL {self.where!r} names no host",
                                   hint="use http(s)://HOST:PORT (a buildsys server)") from None

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
            return self.pool.request(method, f"{self.prefix}/api/v1/cache/{key}", body=body,
                                     headers={**self.headers, **(headers or {})})
        except RequestError as exc:
            raise Unreachable(f"{exc.kind}: {exc.reason}") from None

    def _ok(self, reply: Any, doing: str) -> None:
        if reply.status >= 400:
            raise Unreachable(f"{doing}: HTTP {reply.status}: {_message(reply)}")


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
