"""Real buildsys servers for tests: uvicorn in a thread (fast, one per test) or `buildsys server
start` in a subprocess (the real command), both on 127.0.0.1 with a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from buildsys.server.app import Settings, create_app
from buildsys.server.auth import Authenticator
from buildsys.server.cachetable import CacheTable
from buildsys.store.base import StateStore
from tests.services.net import free_port, port_open
from tests.services.waiting import wait_for

BUILDSYS = [sys.executable, "-m", "buildsys"]


@contextmanager
def threaded_server(
    store: StateStore,
    *,
    authenticator: Authenticator | None = None,
    settings: Settings | None = None,
    cache: CacheTable | None = None,
) -> Iterator[str]:
    """Serve `store` with uvicorn in a thread; yields the base URL; stops it on exit."""
    port = free_port()
    app = create_app(
        store, authenticator=authenticator, settings=settings or Settings(housekeeping=False), cache=cache
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 15, f"uvicorn to listen on 127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "uvicorn did not stop"


class ServerProcess:
    """`buildsys server start` as a child process; output goes to a log file."""

    def __init__(
        self, db: str, workdir: Path, *, extra: Sequence[str] = (), env: dict[str, str] | None = None
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"server-{self.port}.log"
        self._log = self.log_path.open("wb")
        command = [*BUILDSYS, "server", "start", "--port", str(self.port), "--db", db, *extra]
        self.process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 30) -> ServerProcess:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            return port_open("127.0.0.1", self.port) and httpx.get(f"{self.url}/healthz").status_code == 200

        wait_for(ready, timeout, f"the server on port {self.port} to answer", ignore=(httpx.TransportError,))
        return self

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


@contextmanager
def server_process(
    db: str, workdir: Path, *, extra: Sequence[str] = (), env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    proc = ServerProcess(db, workdir, extra=extra, env=env)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BUILDSYS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
