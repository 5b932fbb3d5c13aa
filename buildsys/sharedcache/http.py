"""Kept-alive connections on the standard library's ``http.client``, one pool for every peer
buildsys asks a few quick questions: the shared cache's server backend and the registry checks of
restored images (steps/_docker_registry, through `Client`), and the Docker engine's API over its
Unix socket (steps/_docker_api, with a connection factory of its own).

A restored build makes a few dozen small requests to two or three origins; urllib3 (or httpx) would
cost more to import than all of them take (urllib3 ~0.1 s of CPU, and importlib.metadata with it).
What they need is here: a pool of connections shared by threads with one rule for when a request is
sent again (`Pool`), HTTPS with the system's certificates, an HTTP proxy (CONNECT for https), and
redirects followed for GET/HEAD (credentials not sent to another origin).
"""

from __future__ import annotations

import base64
import select
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # imported when a connection is made: the Docker engine's pool uses neither
    import http.client
    import ssl

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
    import ssl

    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            _CONTEXT = ssl.create_default_context()
        return _CONTEXT


IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
# The peer closed the connection: reset, broken pipe, or end of stream before a status line
# (http.client.RemoteDisconnected is a ConnectionResetError).
CLOSED = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class Connection(Protocol):
    """What the pool asks of a connection: ``http.client.HTTPConnection``'s calls (or another
    connection's with the same meaning, such as the Docker engine's: steps/_docker_api)."""

    @property
    def sock(self) -> Any: ...
    def request(self, method: str, url: str, body: bytes | None = ..., headers: Mapping[str, str] = ...) -> None: ...
    def getresponse(self) -> Any: ...  # status, headers, read(), will_close
    def close(self) -> None: ...


class Pool:
    """Kept-alive ``http.client`` connections made by `connect` (not yet connected: http.client
    connects on the first request), shared by threads: a request takes an idle connection or makes
    one, and puts it back when the reply allows. `target_prefix` and `headers` go with every
    request (a plain-HTTP proxy's absolute URL and login: ``Pool.to``). `reply_errors`: what a
    connection raises besides OSError when it cannot read a reply (http.client's HTTPException
    unless said otherwise).

    One retry rule: a request is sent again, once and on a new connection, only when it went out on
    a reused kept-alive connection that the peer turned out to have closed (reset, broken pipe, or
    closed before any status line) and its method is idempotent, so that a request the peer may
    have processed is never made twice with another effect. A timeout, a refused or new connection,
    or a garbled reply is never retried. An idle connection the peer has closed meanwhile (readable
    while idle: the end of its stream) is dropped before it is used, so that even a POST rarely meets
    a closed one."""

    def __init__(self, connect: Callable[[], Connection], *, idle: int = 16, target_prefix: str = "",
                 headers: Mapping[str, str] | None = None,
                 reply_errors: tuple[type[Exception], ...] | None = None) -> None:
        self.connect, self.max_idle = connect, idle
        self.target_prefix, self.headers = target_prefix, dict(headers or {})
        if reply_errors is None:
            import http.client

            reply_errors = (http.client.HTTPException,)
        self.errors: tuple[type[Exception], ...] = (OSError, *reply_errors)
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def to(cls, origin: str, *, timeout: float, proxy: str | None = None, idle: int = 16) -> Pool:
        """A pool to `origin` (``scheme://host[:port]``), optionally through an HTTP proxy."""
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        https = parts.scheme == "https"
        host, port = parts.hostname, parts.port or (443 if https else 80)
        if proxy is None:
            return cls(lambda: _connection(https, host, port, timeout), idle=idle)
        via = urllib.parse.urlsplit(proxy)
        headers: dict[str, str] = {}
        if via.username:
            login = f"{urllib.parse.unquote(via.username)}:{urllib.parse.unquote(via.password or '')}"
            headers["Proxy-Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        via_host, via_port = via.hostname or "", via.port or (443 if via.scheme == "https" else 80)
        if https:  # a tunnel (CONNECT): TLS with the origin itself, through the proxy

            def tunnel() -> Connection:
                conn = _connection(True, via_host, via_port, timeout)
                conn.set_tunnel(host, port, headers=headers)
                return conn

            return cls(tunnel, idle=idle)
        # a plain-HTTP proxy takes the absolute URL, and its login with each request
        return cls(lambda: _connection(via.scheme == "https", via_host, via_port, timeout), idle=idle,
                   target_prefix=f"{parts.scheme}://{parts.netloc}", headers=headers)

    def request(self, method: str, target: str, *, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        """`method` `target` (a path with its query); RequestError when no answer came."""
        sent = {**(headers or {}), **self.headers}
        target = self.target_prefix + target
        for attempt in (1, 2):
            conn, reused = self._take() if attempt == 1 else (self.connect(), False)
            try:
                conn.request(method, target, body=body, headers=sent)
                reply = conn.getresponse()
                data = reply.read()
            except self.errors as exc:
                conn.close()
                if reused and isinstance(exc, CLOSED) and method in IDEMPOTENT:
                    continue  # the second attempt is on a new connection: never retried
                raise RequestError(_kind(exc), exc) from None
            self._put_back(conn, reply.will_close)
            return Reply(reply.status, reply.headers, data)
        raise AssertionError("unreachable")

    def _take(self) -> tuple[Connection, bool]:
        """An idle connection the peer has not closed (True), else a new one (False)."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self.connect(), False
            if not _closed_by_peer(conn):
                return conn, True
            conn.close()

    def _put_back(self, conn: Connection, will_close: bool) -> None:
        if not will_close:
            with self._lock:
                if len(self._idle) < self.max_idle:
                    self._idle.append(conn)
                    return
        conn.close()


def _connection(https: bool, host: str, port: int, timeout: float) -> http.client.HTTPConnection:
    import http.client

    if https:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=timeout, context=_tls())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    # http.client's own seam for opening the socket (socket.create_connection by default)
    conn._create_connection = create_connection  # type: ignore[attr-defined]
    return conn


def create_connection(address: tuple[str, int], timeout: Any, source_address: tuple[str, int] | None) -> socket.socket:
    """`socket.create_connection`, an ASCII host name given to getaddrinfo as bytes. A str name is
    encoded with the `idna` codec, whose first use imports encodings.idna, stringprep and
    unicodedata: ~1.3 ms of CPU in a restored build that only speaks plain HTTP (TLS encodes the
    name for SNI with it anyway). For ASCII the codec gives the same bytes; a name it would refuse
    (an empty label, one over 63 characters) is refused by the resolver instead, as an OSError."""
    host, port = address
    name: str | bytes = host.encode("ascii") if host.isascii() else host
    return socket.create_connection((name, port), timeout, source_address)  # type: ignore[arg-type]


def _closed_by_peer(conn: Connection) -> bool:
    """An idle kept-alive connection with something to read: the peer's end of stream (or bytes it
    should not have sent); either way it cannot carry the next request."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):  # closed, or a descriptor beyond select's range
        return False
    return bool(readable)


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
                pool = self._pools[origin] = Pool.to(origin, timeout=self.timeout, proxy=proxy)
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
