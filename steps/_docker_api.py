"""The Docker engine's API asked directly over its socket, for what the cache and plan paths need:
an image's id in the engine (a build's key holds its base images' ids; a cached build stands while
its image is there).

The Docker SDK (``docker.from_env``) would do it too, but its import (requests, urllib3, the SDK's
transports) and its client (a ``/version`` request first) cost more than a whole cached build's
keying; builds, pushes and logins keep using the SDK (``_docker_engine``). The engine is the one
the SDK would use: ``DOCKER_HOST`` (``unix://`` or ``tcp://``), else ``/var/run/docker.sock``.
An engine reached over TLS (``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``) or ssh is asked through the
SDK, which knows those transports. Requests go to the engine's unversioned paths (its own API
version) on kept-alive connections, a few per engine, shared by the threads of a build: the pool of
``buildsys.sharedcache.http`` (the shared cache's and the registries' too, with its one retry rule),
here with connections of this module's own (`_Connection`): HTTP/1.1 requests whose replies are read
by httptools' parser instead of http.client, whose import (the email package's parser, ssl) cost a
fresh `plan` ~10 ms of CPU for its one question.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from buildsys.errors import StepError

DEFAULT_SOCKET = "/var/run/docker.sock"
TIMEOUT_S = 60.0
IDLE = 8  # kept-alive connections per engine
READ_SIZE = 65536


class BadReply(Exception):
    """The engine's reply could not be read: not HTTP, or cut short."""


class _Connection:
    """One HTTP/1.1 connection to the engine, opened by `open_socket` on its first request, with
    the calls of ``http.client.HTTPConnection`` the pool makes (``sharedcache.http.Connection``).
    A reply is read by ``httptools`` (llhttp, the parser uvicorn serves with; a dependency already):
    its status, headers and body however framed (a length, chunks, or the end of the stream), and
    whether the connection may carry the next request. Only GET is asked (a reply to HEAD would
    have a body its headers announce but do not carry, which the parser cannot know)."""

    def __init__(self, open_socket: Callable[[], socket.socket], host: str) -> None:
        self._open, self._host = open_socket, host
        self.sock: socket.socket | None = None

    def request(self, method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None) -> None:
        if method != "GET" or body is not None:
            raise ValueError(f"the engine's API is asked with GET only, not {method}")
        if not url.startswith("/") or not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
            raise ValueError(f"not a request target: {url!r}")  # as http.client refuses it
        lines = [f"GET {url} HTTP/1.1", f"Host: {self._host}", "Accept-Encoding: identity"]
        for name, value in (headers or {}).items():
            if not name or any(c in name for c in ":\r\n ") or any(c in value for c in "\r\n"):
                raise ValueError(f"invalid header {name!r}")
            lines.append(f"{name}: {value}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")  # as http.client encodes headers
        if self.sock is None:
            self.sock = self._open()
        self.sock.sendall(head)

    def getresponse(self) -> _Reply:
        import httptools

        if self.sock is None:
            raise BadReply("no request was sent")
        reply = _Reply()
        parser = httptools.HttpResponseParser(reply)
        reply.parser = parser
        while not reply.complete:
            data = self.sock.recv(READ_SIZE)
            if not data:
                if not reply.received:  # as http.client's RemoteDisconnected: the pool may ask again
                    raise ConnectionResetError("the engine closed the connection without a reply")
                if reply.to_end_of_stream():
                    reply.complete = reply.will_close = True
                    break
                raise BadReply("the engine's reply was cut short")
            reply.received = True
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                if not reply.complete:
                    raise BadReply(f"the engine's reply is not HTTP: {exc}") from None
                reply.will_close = True  # bytes after the reply: the connection is not reused
        reply.will_close = reply.will_close or reply.extra
        return reply

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


class _Reply:
    """The reply `_Connection.getresponse` reads, built by the parser's callbacks; a 1xx reply
    before it (e.g. 100 Continue) is passed over, as http.client does."""

    def __init__(self) -> None:
        self.parser: Any = None
        self.status = 0
        self.headers: dict[str, str] = {}  # names in lower case; repeated ones joined by ", "
        self.received = self.headers_done = self.complete = self.extra = self.will_close = False
        self._body: list[bytes] = []

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True  # bytes after the reply this request asked for

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        if not self.complete:
            self.status, self.headers_done = self.parser.get_status_code(), True

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if 100 <= self.status < 200 and self.status != 101:  # informational: the reply follows
            self.status, self.headers, self.headers_done, self._body = 0, {}, False, []
            return
        # asked here: once the reply is over the parser no longer says it
        self.complete, self.will_close = True, not self.parser.should_keep_alive()

    def to_end_of_stream(self) -> bool:
        """Whether the end of the stream ends this reply: its headers came and they give neither a
        length nor chunks (RFC 9112 6.3: the body is what comes until the connection closes)."""
        return self.headers_done and "content-length" not in self.headers and "transfer-encoding" not in self.headers

    def read(self) -> bytes:
        return b"".join(self._body)


def _unix_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT_S)
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _tcp_socket(host: str, port: int) -> socket.socket:
    from buildsys.sharedcache.http import create_connection

    return create_connection((host, port), TIMEOUT_S, None)


class EngineError(StepError):
    """The engine answered with an error (not a 404) or could not be reached."""


class Engine:
    """One Docker engine's API: ``get(path)`` on kept-alive connections shared by threads (the
    pool of buildsys.sharedcache.http, which also retries a request only by its one rule)."""

    def __init__(self, address: str) -> None:
        from buildsys.sharedcache.http import Connection, Pool

        self.address = address  # unix:///path or tcp://host:port
        if address.startswith("unix://"):
            path = address[len("unix://"):]
            opener, said = (lambda: _unix_socket(path)), "localhost"
        else:
            netloc = address.split("://", 1)[1]
            name, port = netloc.rsplit(":", 1)
            host = name[1:-1] if name.startswith("[") else name
            opener = lambda: _tcp_socket(host, int(port))  # noqa: E731
            said = netloc if port != "80" else name  # the Host as http.client says it: no port 80

        def connect() -> Connection:
            return _Connection(opener, said)

        self.pool = Pool(connect, idle=IDLE, reply_errors=(BadReply,))

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body) of GET `path`."""
        from buildsys.sharedcache.http import RequestError

        try:
            reply = self.pool.request("GET", path, headers=headers)
        except RequestError as exc:
            raise EngineError(f"cannot reach the Docker engine at {self.address}: {exc.reason}",
                              hint="start dockerd or set DOCKER_HOST") from None
        return reply.status, reply.data

    def image_id(self, reference: str) -> str | None:
        """The id of the image `reference` names in this engine; None when it has none."""
        status, body = self.get(f"/images/{urllib.parse.quote(reference, safe='/:@')}/json")
        if status == 404:
            return None
        data = _json(body)
        if status != 200 or not isinstance(data.get("Id"), str):
            raise EngineError(f"Docker engine error while looking up image {reference}: "
                              f"{data.get('message') or f'HTTP {status}'}")
        return str(data["Id"])


def address(env: Mapping[str, str]) -> str | None:
    """The engine's address as the SDK's ``from_env`` would pick it from `env`; None when it needs a
    transport only the SDK has (TLS, ssh, a Windows pipe)."""
    if env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_CERT_PATH"):
        return None
    host = env.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
    if host.startswith("unix://"):
        return host if len(host) > len("unix://") else f"unix://{DEFAULT_SOCKET}"
    if host.startswith(("tcp://", "http://")):
        parsed = urllib.parse.urlsplit(host)
        if not parsed.hostname or parsed.path not in ("", "/"):
            return None
        try:
            port = parsed.port or 2375
        except ValueError:
            return None
        name = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
        return f"tcp://{name}:{port}"
    return None


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(env: Mapping[str, str]) -> Engine | None:
    """The process's `Engine` for the engine `env` names (one per address); None: use the SDK."""
    where = address(env)
    if where is None:
        return None
    with _ENGINES_LOCK:
        engine = _ENGINES.get(where)
        if engine is None:
            engine = _ENGINES[where] = Engine(where)
    return engine


class Lookups:
    """Identical lookups that overlap in time share one request: the ten builds of a group-per-image
    project, keyed on parallel threads, all ask for the same base image's id at about the same
    moment. A caller joins only a request that started after this process last changed an image
    (``changed()``: a build or a tag here), so it never gets an answer older than its own step's
    upstream work; nothing is kept once the request is answered (another process may change the
    engine's images between two builds of a long-lived process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._pending: dict[tuple[object, int], _Pending] = {}

    @property
    def generation(self) -> int:
        """How many times this process changed an image (``changed()``)."""
        with self._lock:
            return self._generation

    def changed(self) -> None:
        with self._lock:
            self._generation += 1

    def get(self, key: object, ask: Callable[[], str | None]) -> str | None:
        with self._lock:
            slot = (key, self._generation)
            pending = self._pending.get(slot)
            leader = pending is None
            if pending is None:
                pending = self._pending[slot] = _Pending()
        if not leader:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return pending.value
        try:
            pending.value = ask()
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            with self._lock:
                del self._pending[slot]
            pending.done.set()
        return pending.value


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: str | None = None
        self.error: BaseException | None = None


LOOKUPS = Lookups()


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}
