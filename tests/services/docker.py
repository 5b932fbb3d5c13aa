"""Docker fixtures: a client for the local engine, the locally made base image, and the cleanup sweep.

Fixtures (all session scope):

* ``docker_client`` -- a ``docker.DockerClient`` for the local engine (``docker.from_env()``,
  pinged). Skips when no engine answers. At session end it removes the test containers (see
  `sweep_test_containers`).
* ``base_image`` -- the name (``buildsys-test/python:3.11``) of a local image with the host's
  Python 3.11 as ``python3``/``python``, ``/bin/sh``, bash and coreutils; built from this machine's
  files with no registry (how: `tests.services.rootfs`), reused across sessions while its content
  label matches.

Labels: give every container and image a test creates ``labels=TEST_LABELS`` (or at least
``buildsys.test=1``; images built ``FROM`` the base image inherit it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import docker
import docker.errors
import pytest
from filelock import FileLock

from tests.services.require import unavailable
from tests.services.rootfs import CONTENT_LABEL, content_key, host_python, image_config, write_rootfs_tar

__all__ = [
    "BASE_IMAGE_REPOSITORY",
    "SESSION_ID",
    "TEST_LABEL",
    "TEST_LABELS",
    "base_image",
    "docker_client",
    "ensure_base_image",
    "sweep_test_containers",
]

TEST_LABEL = "buildsys.test"
SESSION_LABEL = "buildsys.test.session"
SESSION_ID = uuid.uuid4().hex[:12]
TEST_LABELS: dict[str, str] = {TEST_LABEL: "1", SESSION_LABEL: SESSION_ID}
BASE_IMAGE_REPOSITORY = "buildsys-test/python"
# Containers of other (concurrent) sessions are only swept once they are this old.
STALE_AFTER_S = 3600.0
_BUILD_LOCK = Path(tempfile.gettempdir()) / "buildsys-test-base-image.lock"


def connect() -> docker.DockerClient:
    """A pinged client for the engine that ``DOCKER_HOST`` (default: the local socket) names."""
    client = docker.from_env(timeout=120)
    client.ping()
    return client


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The local Docker engine; removes the session's test containers at the end."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = connect()
    except docker.errors.DockerException as exc:
        unavailable(f"no Docker engine answers at {where}: {exc} (start dockerd, as .ci/run does)")
    try:
        yield client
    finally:
        try:
            sweep_test_containers(client)
        finally:
            client.close()


def _created_at(container: docker.models.containers.Container) -> float:
    created = str(container.attrs.get("Created", ""))
    try:
        # Docker gives nanoseconds ("2026-11-28T14:07:39.123456789Z"); keep microseconds.
        head, _, frac = created.rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()
    except ValueError:
        return 0.0


def sweep_test_containers(
    client: docker.DockerClient, *, everything: bool | None = None, session_id: str = SESSION_ID
) -> list[str]:
    """Remove (force) containers labelled ``buildsys.test=1``; returns the names removed.

    In CI (``CI=true``) or with ``everything=True`` all of them go. On a shared developer machine
    only this session's containers (label ``buildsys.test.session`` equal to ``session_id``) and
    ones older than an hour
    are removed, so a concurrent test run keeps its containers. Images are never removed here.
    """
    if everything is None:  # never under pytest-xdist: the other workers' containers are in use
        everything = (os.environ.get("CI", "").lower() in {"1", "true", "yes"}
                      and "PYTEST_XDIST_WORKER" not in os.environ)
    removed: list[str] = []
    now = time.time()
    for container in client.containers.list(all=True, filters={"label": f"{TEST_LABEL}=1"}):
        labels = container.labels or {}
        ours = labels.get(SESSION_LABEL) == session_id
        stale = now - _created_at(container) > STALE_AFTER_S
        if not (everything or ours or stale):
            continue
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # already being removed (auto-remove, another sweep)
                continue
            raise
        removed.append(container.name)
    return removed


def ensure_base_image(client: docker.DockerClient) -> str:
    """Return the base image's name, importing it first unless an identical one exists."""
    python = host_python()
    name = f"{BASE_IMAGE_REPOSITORY}:{python.version}"
    key = content_key(python)
    if _image_key(client, name) == key:
        return name
    with FileLock(str(_BUILD_LOCK), timeout=600):
        previous = _image_id(client, name)
        if _image_key(client, name) == key:
            return name
        with tempfile.TemporaryDirectory(prefix="buildsys-rootfs-") as tmp:
            tar, _ = write_rootfs_tar(Path(tmp))
            client.api.import_image_from_file(
                str(tar),
                repository=BASE_IMAGE_REPOSITORY,
                tag=python.version,
                changes=image_config(python.version, key),
            )
        if _image_key(client, name) != key:
            raise RuntimeError(f"docker import did not produce {name} with {CONTENT_LABEL}={key}")
        if previous is not None and previous != _image_id(client, name):
            # The old content is untagged now; drop it unless something still uses it.
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(previous, noprune=False)
    return name


def _image_id(client: docker.DockerClient, name: str) -> str | None:
    try:
        return str(client.images.get(name).id)
    except docker.errors.ImageNotFound:
        return None


def _image_key(client: docker.DockerClient, name: str) -> str | None:
    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        return None
    labels = image.labels or {}
    value = labels.get(CONTENT_LABEL)
    return str(value) if value is not None else None


@pytest.fixture(scope="session")
def base_image(docker_client: docker.DockerClient) -> str:
    """Name of the local Python base image (imported from host files once, then reused)."""
    return ensure_base_image(docker_client)
