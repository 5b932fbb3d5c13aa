"""The Docker engine's API asked directly over its socket, for what the cache and plan paths need:
an image's id in the engine (a build's key holds its base images' ids; a cached build stands while
its image is there).

The Docker SDK (``docker.from_env``) would do it too, but its import (requests, urllib3, the SDK's
transports) and its client (a ``/version`` request first) cost more than a whole cached build's
keying; builds, pushes and logins keep using the SDK (``_docker_engine``). The engine is the one
the SDK would use: ``DOCKER_HOST`` (``unix://`` or ``tcp://``), else ``/var/run/docker.sock``.
An engine reached over TLS (``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``) or ssh is asked through the
SDK, which knows those transports. Requests go to the engine's unversioned paths (its own API
version) on kept-alive HTTP/1.1 connections, a few per engine, shared by the threads of a build.
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
MAX_LINE, MAX_HEADERS, MAX_BODY = 65536, 100, 64 << 20


class EngineError(StepError):
    """The engine answered with an error (not a 404) or could not be reached."""


class _BadReply(Exception):
    """The engine's reply is not HTTP/1.1 as this client reads it."""


class _Connection:
    """One kept-alive HTTP/1.1 connection to the engine. The exchange is written here rather than
    taken from ``http.client``, which imports ``email`` and ``ssl`` (~20-35 ms, more than the
    whole lookup) for what is, against dockerd, a request line and a JSON body."""

    def __init__(self, address: str) -> None:
        if address.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = address[len("unix://"):]
        else:
            host, _, port = address[len("tcp://"):].rpartition(":")
            sock = socket.socket(socket.AF_INET6 if host.startswith("[") else socket.AF_INET, socket.SOCK_STREAM)
            target = (host.strip("[]"), int(port))
        try:
            sock.settimeout(TIMEOUT_S)
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.reader = sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def get(self, path: str, headers: Mapping[str, str]) -> tuple[int, bytes, bool]:
        """(status, body, whether the connection stays open) of GET `path`."""
        lines = [f"GET {path} HTTP/1.1", "Host: docker", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        self.sock.sendall("\r\n".join(lines).encode("latin-1"))
        status_line = self.reader.readline(MAX_LINE)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise _BadReply(f"not an HTTP reply: {status_line[:80]!r}")
        status = int(parts[1])
        fields: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = self.reader.readline(MAX_LINE)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        else:
            raise _BadReply("too many header lines")
        keep = parts[0] == b"HTTP/1.1" and fields.get("connection", "").lower() != "close"
        if "chunked" in fields.get("transfer-encoding", "").lower():
            body = self._chunks()
        elif "content-length" in fields:
            body = self._exactly(int(fields["content-length"]))
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:  # the body ends when the engine closes the connection
            body, keep = self.reader.read(), False
        return status, body, keep

    def _exactly(self, size: int) -> bytes:
        if size < 0 or size > MAX_BODY:
            raise _BadReply(f"a body of {size} bytes")
        data = self.reader.read(size)
        if len(data) != size:
            raise _BadReply("the connection closed inside a body")
        return data

    def _chunks(self) -> bytes:
        out = bytearray()
        while True:
            size_line = self.reader.readline(MAX_LINE).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _BadReply(f"a chunk size of {size_line[:20]!r}") from None
            if size == 0:
                while self.reader.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(out)
            out += self._exactly(size)
            if len(out) > MAX_BODY:
                raise _BadReply("a body that is too large")
            self.reader.readline(MAX_LINE)  # the CRLF after each chunk


class Engine:
    """One Docker engine's API: ``get(path)`` on pooled kept-alive connections (thread-safe)."""

    def __init__(self, address: str) -> None:
        self.address = address  # unix:///path or tcp://host:port
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body) of GET `path`; a kept-alive connection that the engine closed meanwhile
        is replaced once."""
        for attempt in (1, 2):
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            try:
                if conn is None:
                    conn = _Connection(self.address)
                status, body, keep = conn.get(path, dict(headers or {}))
            except (OSError, ValueError, _BadReply) as exc:
                if conn is not None:
                    conn.close()
                if not reused or attempt == 2:
                    raise EngineError(f"cannot reach the Docker engine at {self.address}: {exc}",
                                      hint="start dockerd or set DOCKER_HOST") from None
                continue
            with self._lock:
                if keep and len(self._idle) < IDLE:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()
            return status, body
        raise AssertionError("unreachable")

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
