"""A few HTTP/1.1 requests on kept-alive connections: the shared cache's server backend, the
registry checks of restored images (steps/_docker_registry) and the Docker engine's API over its
socket (steps/_docker_api).

A restored build makes a few dozen small requests to two or three origins; urllib3 or httpx would
cost more to import than all of them take (urllib3 ~0.1 s of CPU with the importlib.metadata it
imports), and even the standard library's ``http.client`` imports ``email`` and ``ssl`` (~20-35 ms).
So the exchange is written here (`Connection`: a request, and a reply framed by its length, by
chunks or by the connection's end), with ``ssl`` imported only for an https origin. What the
callers need: a pool of connections per origin shared by threads, a kept-alive connection that the
server closed meanwhile replaced once, HTTPS with the system's certificates, an HTTP proxy (CONNECT
for https), and redirects followed for GET/HEAD (credentials not sent to another origin).
"""

from __future__ import annotations

import base64
import socket
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


class Headers:
    """A reply's header fields, looked up case-insensitively (the last of a repeated name)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields  # lowercased names

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.fields.get(name.lower(), default)


class Reply:
    __slots__ = ("data", "headers", "status")

    def __init__(self, status: int, headers: Headers, data: bytes) -> None:
        self.status, self.headers, self.data = status, headers, data


MAX_LINE, MAX_HEADERS, MAX_BODY = 65536, 100, 64 << 20


class BadReply(OSError):
    """The peer's reply is not HTTP/1.x as this client reads it (or the connection ended in it)."""


_CONTEXT: Any = None
_CONTEXT_LOCK = threading.Lock()


def _tls() -> Any:
    """The TLS context for https (the system's certificates); ssl is imported only then."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            import ssl

            _CONTEXT = ssl.create_default_context()
        return _CONTEXT


class Connection:
    """One HTTP/1.1 connection: `exchange` sends a request and reads its whole reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    @classmethod
    def unix(cls, path: str, timeout: float) -> Connection:
        return cls(_connected(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), path, timeout))

    @classmethod
    def tcp(cls, host: str, port: int, timeout: float, *, tls_host: str | None = None,
            tunnel: tuple[str, Mapping[str, str]] | None = None) -> Connection:
        """To host:port; `tunnel`: first CONNECT (authority, headers) through it (a proxy);
        `tls_host`: then TLS, checked against that name."""
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if tunnel is not None:
                _connect_through(sock, *tunnel)
            if tls_host is not None:
                sock = _tls().wrap_socket(sock, server_hostname=tls_host)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def exchange(self, method: str, target: str, headers: Mapping[str, str],
                 body: bytes | None = None) -> tuple[int, Headers, bytes, bool]:
        """(status, header fields, body, whether the connection may be used again)."""
        lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        if body is not None or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {len(body or b'')}")
        self.sock.sendall("\r\n".join([*lines, "", ""]).encode("latin-1") + (body or b""))
        status, version, fields = _head(self.reader)
        keep = version == b"HTTP/1.1" and fields.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            data = b""
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            data = _chunks(self.reader)
        elif "content-length" in fields:
            try:
                size = int(fields["content-length"])
            except ValueError:
                raise BadReply(f"a Content-Length of {fields['content-length'][:20]!r}") from None
            data = _exactly(self.reader, size)
        else:  # the body ends with the connection
            data, keep = self.reader.read(MAX_BODY + 1), False
            if len(data) > MAX_BODY:
                raise BadReply("a body that is too large")
        return status, Headers(fields), data, keep


def _connected(sock: socket.socket, address: Any, timeout: float) -> socket.socket:
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_through(sock: socket.socket, authority: str, headers: Mapping[str, str]) -> None:
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall("\r\n".join([*lines, "", ""]).encode("latin-1"))
    reader = sock.makefile("rb")
    try:
        status, _, _ = _head(reader)
    finally:
        reader.close()
    if status != 200:
        raise BadReply(f"the proxy answered {status} to CONNECT {authority}")


def _head(reader: Any) -> tuple[int, bytes, dict[str, str]]:
    """A reply's status line and header fields (names lowercased); interim 1xx replies skipped."""
    while True:
        line = reader.readline(MAX_LINE)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise BadReply(f"not an HTTP reply: {line[:80]!r}" if line else "the connection closed before a reply")
        fields: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            field = reader.readline(MAX_LINE)
            if field in (b"\r\n", b"\n", b""):
                break
            name, _, value = field.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        else:
            raise BadReply("too many header lines")
        status = int(parts[1])
        if status != 100 and not 102 <= status < 200:
            return status, parts[0], fields


def _exactly(reader: Any, size: int) -> bytes:
    if size < 0 or size > MAX_BODY:
        raise BadReply(f"a body of {size} bytes")
    data = reader.read(size)
    if len(data) != size:
        raise BadReply("the connection closed inside a body")
    return bytes(data)


def _chunks(reader: Any) -> bytes:
    out = bytearray()
    while True:
        size_line = reader.readline(MAX_LINE).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise BadReply(f"a chunk size of {size_line[:20]!r}") from None
        if size == 0:
            while reader.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                pass  # trailer fields
            return bytes(out)
        if len(out) + size > MAX_BODY:
            raise BadReply("a body that is too large")
        out += _exactly(reader, size)
        reader.readline(MAX_LINE)  # the line end after each chunk


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
        self.authority = parts.netloc.rpartition("@")[2]  # the Host header: as the URL gives it
        self.timeout, self.max_idle = timeout, idle
        self.proxy = urllib.parse.urlsplit(proxy) if proxy else None
        self.proxy_headers: dict[str, str] = {}
        if self.proxy is not None and self.proxy.username:
            login = f"{urllib.parse.unquote(self.proxy.username)}:{urllib.parse.unquote(self.proxy.password or '')}"
            self.proxy_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> Connection:
        tls_host = self.host if self.https else None
        if self.proxy is None:
            return Connection.tcp(self.host, self.port, self.timeout, tls_host=tls_host)
        proxy_host = self.proxy.hostname or ""
        proxy_port = self.proxy.port or (443 if self.proxy.scheme == "https" else 80)
        if self.https:  # a tunnel (CONNECT): TLS with the origin itself, through the proxy
            authority = f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
            return Connection.tcp(proxy_host, proxy_port, self.timeout, tls_host=self.host,
                                  tunnel=(authority, self.proxy_headers))
        return Connection.tcp(proxy_host, proxy_port, self.timeout,
                              tls_host=proxy_host if self.proxy.scheme == "https" else None)

    def request(self, method: str, target: str, *, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        """`method` `target` (a path with its query) on this origin; RequestError when no answer
        came (a kept-alive connection the server had closed is replaced once first)."""
        sent = {"Host": self.authority, **(headers or {})}
        if self.proxy is not None and not self.https:  # a plain-HTTP proxy takes the absolute URL
            target = self.origin + target
            sent.update(self.proxy_headers)
        for attempt in (1, 2):
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._connect()
                status, fields, data, keep = conn.exchange(method, target, sent, body)
            except (OSError, ValueError) as exc:
                if conn is not None:
                    conn.close()
                if reused and attempt == 1 and not isinstance(exc, TimeoutError):
                    continue  # the server closed this kept-alive connection meanwhile
                raise RequestError(_kind(exc), exc) from None
            with self._lock:
                if keep and len(self._idle) < self.max_idle:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()
            return Reply(status, fields, data)
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
