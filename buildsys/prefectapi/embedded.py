"""The Prefect API served by the worker itself, for runs on the embedded file store (or a direct
database URL): uvicorn on 127.0.0.1 and a random port in a background thread, open only to the
random per-run keys the worker hands to the engines it starts."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from buildsys.errors import StateError
from buildsys.shutdown import join_within
from buildsys.store.base import StateStore

START_TIMEOUT = 15.0


@dataclass(frozen=True)
class RunKey:
    """What a per-run key allows: the engine's reads and writes (scope "worker")."""

    run_id: str
    scope: str = "worker"

    def allows(self, needed: str) -> bool:
        return needed in ("read", "worker")


class KeyRing:
    """Per-run keys, kept as SHA-256 digests; checked like server tokens (Bearer or Basic)."""

    def __init__(self) -> None:
        self._keys: dict[str, RunKey] = {}
        self._lock = threading.Lock()

    def issue(self, run_id: str) -> str:
        key = f"bsk_{secrets.token_urlsafe(32)}"
        with self._lock:
            self._keys[_digest(key)] = RunKey(run_id)
        return key

    def revoke(self, key: str) -> None:
        with self._lock:
            self._keys.pop(_digest(key), None)

    def check(self, header: str | None) -> RunKey | None:
        if not header or not header.startswith("Bearer "):
            return None
        with self._lock:
            return self._keys.get(_digest(header[len("Bearer ") :].strip()))


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class EmbeddedApi:
    """`start()` → the URL for PREFECT_API_URL; `issue_key(run_id)` → the run's PREFECT_API_KEY
    (also usable as PREFECT_API_AUTH_STRING="buildsys:<key>", which the event websockets need);
    `revoke_key(key)` when the run ends; `stop()`."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.keys = KeyRing()
        self.url: str | None = None
        self._server: object | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        import socket

        import uvicorn

        from buildsys.prefectapi.app import create_app

        if self.url is not None:
            return self.url
        from starlette.applications import Starlette
        from starlette.routing import Mount

        app = Starlette(routes=[Mount("/api", app=create_app(self.store, authenticator=self.keys))])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"prefect-api-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise StateError(f"the worker's Prefect API did not start on 127.0.0.1:{port}")
            time.sleep(0.01)  # uvicorn has no start event to wait on
        self._server, self._thread = server, thread
        self.url = f"http://127.0.0.1:{port}/api"
        return self.url

    def issue_key(self, run_id: str) -> str:
        return self.keys.issue(run_id)

    def revoke_key(self, key: str) -> None:
        self.keys.revoke(key)

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask uvicorn to exit; False when its thread did not end within `timeout` (left behind: a
        daemon thread)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self.url = None
        if server is not None:
            server.should_exit = True  # type: ignore[attr-defined]
        return thread is None or not join_within([thread], timeout)
