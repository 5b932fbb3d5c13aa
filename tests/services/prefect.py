"""Real Prefect (a test dependency) for the tests: its server on loopback, and its CLI.

* ``prefect_python`` (session): the interpreter that has ``prefect`` importable (this venv's), or
  a skip/fail (see tests/services/require.py) when Prefect is not installed.
* ``prefect_server`` (session): one ``prefect server start`` on 127.0.0.1 and a free port, with a
  temporary ``PREFECT_HOME`` (its own SQLite database), shared by the whole session (it takes about
  10 s to start). Tests must not assume it is empty: name what you create uniquely.
* ``prefect_env(api_url)``: the environment for a Prefect client process pointed at ``api_url``,
  with a private ``PREFECT_HOME`` so nothing reads or writes the user's profile.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.services.net import free_port
from tests.services.require import unavailable
from tests.services.waiting import wait_for

__all__ = ["PrefectServer", "prefect_env", "prefect_python", "prefect_server"]

START_TIMEOUT_S = 300.0  # about 10 s idle; minutes on a loaded shared machine


@dataclass(frozen=True)
class PrefectServer:
    """A running Prefect server."""

    api_url: str  # ends in /api, as PREFECT_API_URL expects
    home: Path
    log: Path


def prefect_env(api_url: str | None, home: Path, **extra: str) -> dict[str, str]:
    """An environment for a Prefect process: private home, no telemetry or update checks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def prefect_python() -> str:
    if importlib.util.find_spec("prefect") is None:
        unavailable("prefect is not installed in this venv (it is in the [test] extra)")
    return sys.executable


@pytest.fixture(scope="session")
def prefect_server(prefect_python: str) -> Iterator[PrefectServer]:
    base = Path(tempfile.mkdtemp(prefix="buildsys-test-prefect-"))
    home = base / "home"
    home.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = base / "server.log"
    env = prefect_env(None, home, PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [prefect_python, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            return httpx.get(f"{api_url}/health", timeout=2).status_code == 200

        wait_for(healthy, START_TIMEOUT_S, "prefect server to answer /api/health", ignore=(httpx.HTTPError,))
        yield PrefectServer(api_url=api_url, home=home, log=log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)
