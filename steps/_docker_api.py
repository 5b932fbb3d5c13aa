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
``buildsys.sharedcache.http`` (the shared cache's and the registries' too), here with connections
to the engine's Unix socket.
"""

from __future__ import annotations

import http.client
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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _tcp_connection(host: str) -> http.client.HTTPConnection:
    from buildsys.sharedcache.http import create_connection

    conn = http.client.HTTPConnection(host, timeout=TIMEOUT_S)
    conn._create_connection = create_connection  # type: ignore[attr-defined]
    return conn


class EngineError(StepError):
    """The engine answered with an error (not a 404) or could not be reached."""


class Engine:
    """One Docker engine's API: ``get(path)`` on kept-alive connections shared by threads (the
    pool of buildsys.sharedcache.http, which also retries a request only by its one rule)."""

    def __init__(self, address: str) -> None:
        from buildsys.sharedcache.http import Pool

        self.address = address  # unix:///path or tcp://host:port
        if address.startswith("unix://"):
            path = address[len("unix://"):]
            self.pool = Pool(lambda: _UnixConnection(path, TIMEOUT_S), idle=IDLE)
        else:
            host = address.split("://", 1)[1]
            self.pool = Pool(lambda: _tcp_connection(host), idle=IDLE)

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
