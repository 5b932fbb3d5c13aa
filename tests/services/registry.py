"""A real OCI registry for the tests: Debian's ``docker-registry`` (distribution 2.8) on loopback.

The ``registry`` fixture (session scope) starts the binary on ``127.0.0.1:<free port>`` with its
storage in a temp dir and htpasswd (bcrypt) basic auth, waits until ``/v2/`` answers, and yields a
`Registry`. Docker pushes and pulls to it over plain HTTP, which dockerd allows for 127.0.0.0/8.
At session end the process is stopped and the storage dir removed.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services.net import free_port
from tests.services.require import unavailable
from tests.services.waiting import wait_for

__all__ = ["Registry", "registry", "start_registry"]

REGISTRY_BINARY = "docker-registry"
HTPASSWD_BINARY = "htpasswd"
STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Registry:
    """A running registry: ``host`` is ``127.0.0.1:PORT``, ``url`` is ``http://127.0.0.1:PORT``."""

    host: str
    url: str
    username: str
    password: str
    storage: Path
    log: Path

    @property
    def auth_config(self) -> dict[str, str]:
        """Credentials in the shape docker-py's ``push``/``pull`` take (``auth_config=``)."""
        return {"username": self.username, "password": self.password}

    def image(self, name: str) -> str:
        """``name`` qualified with this registry, e.g. ``127.0.0.1:5123/team/app``."""
        return f"{self.host}/{name}"


def _config(storage: Path, htpasswd: Path, port: int) -> str:
    return f"""version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: {secrets.token_hex(16)}
auth:
  htpasswd:
    realm: buildsys-test
    path: {htpasswd}
"""


def _v2_status(url: str) -> int | None:
    """HTTP status of ``GET /v2/`` without credentials (401 once the registry is up)."""
    try:
        with urllib.request.urlopen(f"{url}/v2/", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """A real registry with basic auth on 127.0.0.1, removed at session end."""
    yield from start_registry()


def start_registry() -> Iterator[Registry]:
    """Start a registry (generator: the process and its storage go when it is closed)."""
    binary = shutil.which(REGISTRY_BINARY)
    htpasswd_bin = shutil.which(HTPASSWD_BINARY)
    if binary is None or htpasswd_bin is None:
        missing = REGISTRY_BINARY if binary is None else HTPASSWD_BINARY
        unavailable(f"`{missing}` is not installed (Debian packages docker-registry and apache2-utils)")
    root = Path(tempfile.mkdtemp(prefix="buildsys-registry-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        username, password = "buildsys", secrets.token_urlsafe(18)
        htpasswd = root / "htpasswd"
        made = subprocess.run(
            [htpasswd_bin, "-B", "-b", "-n", username, password], capture_output=True, check=False
        )
        if made.returncode != 0:
            raise RuntimeError(f"htpasswd failed: {made.stderr.decode(errors='replace').strip()}")
        htpasswd.write_bytes(made.stdout)
        storage = root / "storage"
        storage.mkdir()
        port = free_port()
        config = root / "config.yml"
        config.write_text(_config(storage, htpasswd, port))
        log = root / "registry.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [binary, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        running = process

        def answering() -> bool:
            if running.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"docker-registry exited with {running.returncode}:\n{tail}")
            return _v2_status(url) == 401

        wait_for(answering, STARTUP_TIMEOUT_S, f"docker-registry to answer 401 on {url}/v2/")
        yield Registry(f"127.0.0.1:{port}", url, username, password, storage, log)
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(root, ignore_errors=True)
