"""The shared cache on `buildsys server`: GET/PUT /api/v1/cache/{key} with a bearer token
(BUILDSYS_CACHE_TOKEN, else BUILDSYS_TOKEN). Any token reads; writing needs the `cache` scope."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from buildsys.sharedcache import MAX_ENTRY_BYTES, Unreachable, WriteRefused

TIMEOUT = httpx.Timeout(10.0, connect=3.0)


class ServerBackend:
    def __init__(self, url: str, env: Mapping[str, str]) -> None:
        from buildsys.sensitive import mask_url_text

        base = url.rstrip("/")
        self.where = mask_url_text(base)
        self.base = base.removesuffix("/api/v1")
        token = env.get("BUILDSYS_CACHE_TOKEN") or env.get("BUILDSYS_TOKEN") or ""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.base, headers=headers, timeout=TIMEOUT, trust_env=False)

    def get(self, key: str) -> bytes | None:
        reply = self._send("GET", key)
        if reply.status_code == 404 and _code(reply) == "no_entry":
            return None
        self._ok(reply, "read")
        if len(reply.content) > MAX_ENTRY_BYTES:
            raise Unreachable(f"the server sent an entry larger than {MAX_ENTRY_BYTES} bytes")
        return reply.content

    def has(self, key: str) -> bool:
        reply = self._send("HEAD", key)
        if reply.status_code == 404:
            return False
        self._ok(reply, "read")
        return True

    def put(self, key: str, data: bytes) -> None:
        reply = self._send("PUT", key, content=data, headers={"Content-Type": "application/json"})
        if reply.status_code in (401, 403):
            raise WriteRefused(f"{self.where} refused the write: {_message(reply)}")
        self._ok(reply, "write")

    def _send(self, method: str, key: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.client.request(method, f"/api/v1/cache/{key}", **kwargs)
        except httpx.HTTPError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None

    def _ok(self, reply: httpx.Response, doing: str) -> None:
        if reply.status_code >= 400:
            raise Unreachable(f"{doing}: HTTP {reply.status_code}: {_message(reply)}")


def _body(reply: httpx.Response) -> dict[str, Any]:
    try:
        data = reply.json()
    except ValueError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _code(reply: httpx.Response) -> str:
    return str(_body(reply).get("code", ""))


def _message(reply: httpx.Response) -> str:
    return str(_body(reply).get("message") or reply.reason_phrase)
