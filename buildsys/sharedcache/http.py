"""A few HTTP requests on kept-alive connections, with the standard library's ``http.client``: the
shared cache's server backend and the registry checks of restored images (steps/_docker_registry).

A restored build makes a few dozen small requests to two or three origins; urllib3 (or httpx) would
cost more to import than all of them take (urllib3 ~0.1 s of CPU, and importlib.metadata with it).
What they need is here: a pool of connections per origin shared by threads, a kept-alive connection
that the server closed meanwhile replaced once, HTTPS with the system's certificates, an HTTP proxy
(CONNECT for https), and redirects followed for GET/HEAD (credentials not sent to another origin).
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie")


class RequestError(Exception):
    """No answer: the connection failed, timed out or broke. `kind`: ConnectError (refused, no such
    host, unreachable), Timeout, or the error's class; `reason`: the error itself."""

    def __init__(self, kind: str, reason: BaseException) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind, self.reason = kind, reason


class Reply:
    __slots__ = ("data", "headers", "status")

    def __init__(self, status: int, headers: Any, data: bytes) -> None:
        self.status, self.data = status, data
        self.headers = headers  # http.client.HTTPMessage: case-insensitive get()


_CONTEXT: ssl.SSLContext | None = None
_CONTEXT_LOCK = threading.Lock()


def _tls() -> ssl.SSLContext:
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            _CONTEXT = ssl.create_default_context()
        return _CONTEXT


class Pool:
    """Kept-alive connections to one origin (``scheme://host[:port]``), optionally through an HTTP
    proxy; thread-safe: a request takes an idle connection or opens one."""

    def __init__(self, origin: str, *, timeout: float, proxy: str | None = None, idle: int = 16) -> None:
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.timeout, self.max_idle = timeout, idle
        self.proxy = urllib.parse.urlsplit(proxy) if proxy else None
        self.proxy_headers: dict[str, str] = {}
        if self.proxy is not None and self.proxy.username:
            login = f"{urllib.parse.unquote(self.proxy.username)}:{urllib.parse.unquote(self.proxy.password or '')}"
            self.proxy_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        import http.client

        if self.proxy is None:
            if self.https:
                return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=_tls())
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        proxy_host = self.proxy.hostname or ""
        proxy_port = self.proxy.port or (443 if self.proxy.scheme == "https" else 80)
        if self.https:  # a tunnel (CONNECT): TLS with the origin itself, through the proxy
            conn = http.client.HTTPSConnection(proxy_host, proxy_port, timeout=self.timeout, context=_tls())
            conn.set_tunnel(self.host, self.port, headers=self.proxy_headers)
            return conn
        if self.proxy.scheme == "https":
            return http.client.HTTPSConnection(proxy_host, proxy_port, timeout=self.timeout, context=_tls())
        return http.client.HTTPConnection(proxy_host, proxy_port, timeout=self.timeout)

    def request(self, method: str, target: str, *, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        """`method` `target` (a path with its query) on this origin; RequestError when no answer
        came (a kept-alive connection the server had closed is replaced once first)."""
        import http.client

        sent = dict(headers or {})
        if self.proxy is not None and not self.https:  # a plain-HTTP proxy takes the absolute URL
            target = self.origin + target
            sent.update(self.proxy_headers)
        for attempt in (1, 2):
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            if conn is None:
                conn = self._connect()
            try:
                conn.request(method, target, body=body, headers=sent)
                reply = conn.getresponse()
                data = reply.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and attempt == 1 and not isinstance(exc, TimeoutError):
                    continue  # the server closed this kept-alive connection meanwhile
                raise RequestError(_kind(exc), exc) from None
            if reply.will_close:
                conn.close()
            else:
                with self._lock:
                    keep = len(self._idle) < self.max_idle
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()
            return Reply(reply.status, reply.headers, data)
        raise AssertionError("unreachable")


class Client:
    """Pools by origin (created on first use), and redirects followed for GET and HEAD."""

    def __init__(self, *, timeout: float, proxy_for: Any = None) -> None:
        self.timeout = timeout
        self.proxy_for = proxy_for  # origin -> proxy URL or None
        self._pools: dict[str, Pool] = {}
        self._lock = threading.Lock()

    def pool(self, origin: str) -> Pool:
        with self._lock:
            pool = self._pools.get(origin)
            if pool is None:
                proxy = self.proxy_for(origin) if self.proxy_for is not None else None
                pool = self._pools[origin] = Pool(origin, timeout=self.timeout, proxy=proxy)
        return pool

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                body: bytes | None = None, redirects: int = MAX_REDIRECTS) -> Reply:
        sent = dict(headers or {})
        for _ in range(redirects + 1):
            parts = urllib.parse.urlsplit(url)
            origin = f"{parts.scheme}://{parts.netloc}"
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            reply = self.pool(origin).request(method, target, body=body, headers=sent)
            location = reply.headers.get("Location")
            if reply.status not in REDIRECTS or not location or method not in ("GET", "HEAD") or redirects == 0:
                return reply
            following = urllib.parse.urljoin(url, location)
            moved = urllib.parse.urlsplit(following)
            if f"{moved.scheme}://{moved.netloc}" != origin:  # never send credentials elsewhere
                sent = {k: v for k, v in sent.items() if k.lower() not in SECRET_HEADERS}
            url = following
        return reply


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "Timeout"
    if isinstance(exc, ConnectionRefusedError | socket.gaierror) or (
        isinstance(exc, OSError) and exc.errno in (101, 111, 113)  # unreachable, refused, no route
    ):
        return "ConnectError"
    return type(exc).__name__
