"""The request guard: one ASGI middleware in front of everything the server serves.

A web page the user visits must not be able to drive the server (CSRF), nor read it by pointing
its own domain name at 127.0.0.1 (DNS rebinding). So, for every HTTP request and websocket, on
`/api/v1`, `/prefect/api` and the web UI alike:

- the `Host` must be one of the server's own names: the address it is bound to, `localhost`, a
  loopback address or a name configured with `--allowed-host` (a rebinding page sends its domain);
- an `Origin` (browsers send one on every cross-site POST, fetch and websocket) must be the
  server's own origin or a configured one, and `Sec-Fetch-Site: cross-site` is refused;
- a body sent to a JSON endpoint must say `Content-Type: application/json` (an HTML form or a
  `text/plain` fetch cannot, without a CORS preflight that this server never grants);
- a redirect's `Location` is built from the server's own base URL, never from the request's Host.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
JSON_PREFIXES = ("/api/", "/prefect/api")


@dataclass(frozen=True)
class GuardPolicy:
    """Which names and origins are the server's own (beyond its bound address and loopback)."""

    allowed_hosts: frozenset[str] = frozenset()  # extra Host names, lower case, without port
    allowed_origins: frozenset[str] = frozenset()  # extra origins, e.g. "https://build.example"
    public_url: str | None = None  # the base URL redirects use (default: the bound address)
    json_prefixes: tuple[str, ...] = field(default=JSON_PREFIXES)

    @classmethod
    def of(cls, hosts: tuple[str, ...] = (), public_url: str | None = None) -> GuardPolicy:
        names = {h.strip().lower().rstrip(".") for h in hosts if h.strip()}
        origins = {n for n in names if "://" in n}
        if public_url:
            parts = urlsplit(public_url)
            origins.add(f"{parts.scheme}://{parts.netloc}".lower())
            if parts.hostname:
                names.add(parts.hostname.lower())
        names |= {urlsplit(o).hostname or "" for o in origins}
        return cls(frozenset(names - origins - {""}), frozenset(origins), public_url.rstrip("/") if public_url else None)


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class RequestGuard:
    """ASGI middleware enforcing a :class:`GuardPolicy` (see the module's docstring)."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy | None = None) -> None:
        self.app = app
        self.policy = policy or GuardPolicy()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        try:
            host = self.check_host(scope, headers)
            self.check_origin(scope, headers, host)
            if scope["type"] == "http":
                self.check_body(scope, headers)
        except Refused as refused:
            await _refuse(scope, receive, send, refused)
            return
        await self.app(scope, receive, self._rewrite_location(scope, send, host))

    def own_names(self, scope: Scope) -> set[str]:
        names = set(LOCAL_NAMES) | set(self.policy.allowed_hosts)
        server = scope.get("server")
        if server and server[0]:
            names.add(str(server[0]).lower())
        return names

    def check_host(self, scope: Scope, headers: dict[str, str]) -> str:
        raw = headers.get("host", "")
        name = _hostname(raw)
        if name is None or not (name in self.own_names(scope) or _is_loopback(name)):
            shown = raw.encode("ascii", "backslashreplace").decode()[:100]
            raise Refused(
                421, "wrong_host",
                f"Host {shown!r} is not a name of this server (allowed: the address it listens on, "
                "localhost, or a name given with --allowed-host)",
            )
        return raw.lower()

    def check_origin(self, scope: Scope, headers: dict[str, str], host: str) -> None:
        origin = headers.get("origin")
        if origin is not None:
            own = {f"{s}://{host}" for s in _schemes(scope)}
            if origin.lower().rstrip("/") not in own | self.policy.allowed_origins:
                shown = origin.encode("ascii", "backslashreplace").decode()[:100]
                raise Refused(403, "cross_origin", f"requests from the web origin {shown!r} are refused")
        elif headers.get("sec-fetch-site") == "cross-site":
            raise Refused(403, "cross_origin", "cross-site requests are refused")

    def check_body(self, scope: Scope, headers: dict[str, str]) -> None:
        path = str(scope.get("path", ""))
        if not path.startswith(self.policy.json_prefixes):
            return
        ctype = headers.get("content-type")
        has_body = headers.get("content-length", "0") not in ("0", "") or "transfer-encoding" in headers
        if ctype is None and not has_body:
            return
        media = (ctype or "").split(";", 1)[0].strip().lower()
        if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
            raise Refused(
                415, "unsupported_media_type",
                f"this endpoint takes JSON: send Content-Type: application/json (got {media or 'none'!r})",
            )

    def _rewrite_location(self, scope: Scope, send: Send, host: str) -> Send:
        base = self.policy.public_url or _bound_url(scope)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and base:
                message["headers"] = [
                    (k, _own_location(v.decode("latin-1"), host, base).encode("latin-1"))
                    if k.lower() == b"location"
                    else (k, v)
                    for k, v in message.get("headers", [])
                ]
            await send(message)

        return sending


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        name = key.decode("latin-1").lower()
        if name in out:  # a second Host or Origin is as suspicious as a wrong one
            out[name] = "\x00duplicate"
        else:
            out[name] = value.decode("latin-1")
    return out


def _hostname(raw: str) -> str | None:
    if not raw or any(c in raw for c in "/@\\ \x00") or raw.startswith("\x00"):
        return None
    try:
        parts = urlsplit(f"//{raw}")
        name, _port = parts.hostname, parts.port
    except ValueError:
        return None
    return name.rstrip(".").lower() if name else None


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _schemes(scope: Scope) -> tuple[str, ...]:
    scheme = str(scope.get("scheme", "http"))
    return {"ws": ("http",), "wss": ("https",)}.get(scheme, (scheme,))


def _bound_url(scope: Scope) -> str | None:
    server = scope.get("server")
    if not server or not server[0]:
        return None
    host, port = str(server[0]), server[1]
    host = f"[{host}]" if ":" in host else host
    scheme = _schemes(scope)[0]
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def _own_location(location: str, host: str, base: str) -> str:
    """A Location built from the request's Host keeps its path and query on the server's own base."""
    parts = urlsplit(location)
    if parts.netloc.lower() != host:
        return location
    return base + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


async def _refuse(scope: Scope, receive: Receive, send: Send, refused: Refused) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": refused.message[:120]})
        return
    body = json.dumps({"error": {"code": refused.code, "message": refused.message}}).encode()
    await send({
        "type": "http.response.start",
        "status": refused.status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
