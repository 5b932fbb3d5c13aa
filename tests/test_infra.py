"""The test infrastructure itself works for real: Docker engine and base image, registry, PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import platform
import re
import socket
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import psycopg
import pytest

from tests.services.docker import (
    SESSION_LABEL,
    TEST_LABEL,
    TEST_LABELS,
    ensure_base_image,
    sweep_test_containers,
)
from tests.services.net import free_port, port_open
from tests.services.postgres import PostgresServer, fresh_database
from tests.services.registry import Registry
from tests.services.require import REQUIRE_ENV, unavailable
from tests.services.rootfs import CONTENT_LABEL, content_key, host_python
from tests.services.waiting import WaitTimeout, wait_for

HOST_PYTHON = platform.python_version()


# --- helpers: wait_for, free_port, unavailable ------------------------------------------------


def test_wait_for_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "", "ready"])
    assert wait_for(lambda: next(answers), 5, "the fourth answer", interval=0.001) == "ready"


def test_wait_for_times_out_naming_what_and_the_last_value() -> None:
    with pytest.raises(WaitTimeout) as caught:
        wait_for(lambda: [], 0.2, "a list to fill", interval=0.01)
    assert re.fullmatch(
        r"timed out after 0\.[2-9] s waiting for a list to fill \(\d+ attempts; last value: \[\]\)",
        str(caught.value),
    ), str(caught.value)


def test_wait_for_treats_ignored_errors_as_not_yet_and_reports_the_last() -> None:
    calls = []

    def refuse() -> bool:
        calls.append(1)
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(WaitTimeout) as caught:
        wait_for(refuse, 0.1, "the server", interval=0.01, ignore=(ConnectionRefusedError,))
    assert len(calls) >= 2
    assert str(caught.value).endswith("last error: ConnectionRefusedError: [Errno 111] Connection refused)")


def test_wait_for_propagates_other_errors_at_once() -> None:
    calls = []

    def broken() -> bool:
        calls.append(1)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        wait_for(broken, 5, "never", ignore=(ConnectionError,))
    assert calls == [1]


def test_free_port_is_bindable_and_port_open_sees_a_listener() -> None:
    port = free_port()
    assert not port_open("127.0.0.1", port)
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert port_open("127.0.0.1", port)


def test_unavailable_skips_locally_and_fails_when_services_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^no widget server$"):
        unavailable("no widget server")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception) as caught:
        unavailable("no widget server")
    assert str(caught.value) == f"no widget server ({REQUIRE_ENV} is set, so this is a failure, not a skip)"


# --- Docker engine and base image --------------------------------------------------------------


def run(client: docker.DockerClient, image: str, command: list[str], **kwargs: object) -> str:
    output = client.containers.run(image, command, remove=True, labels=TEST_LABELS, **kwargs)
    return bytes(output).decode()


@pytest.mark.docker
def test_base_image_runs_python_with_a_complete_stdlib(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    code = (
        "import json, sqlite3, ssl, subprocess, venv, ctypes, lzma, zlib, sys; print(sys.version.split()[0])"
    )
    assert run(docker_client, base_image, ["python3", "-c", code]) == f"{HOST_PYTHON}\n"
    assert run(docker_client, base_image, ["python", "--version"]) == f"Python {HOST_PYTHON}\n"


@pytest.mark.docker
def test_base_image_has_sh_and_coreutils(docker_client: docker.DockerClient, base_image: str) -> None:
    script = 'printf "%s\\n" hello | tr a-z A-Z; basename /a/b/c.txt .txt; id -u; which python3; echo "$PATH"'
    assert run(docker_client, base_image, ["/bin/sh", "-c", script]) == (
        "HELLO\nc\n0\n/usr/local/bin/python3\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    )


@pytest.mark.docker
def test_base_image_is_reused_while_its_content_is_unchanged(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    image = docker_client.images.get(base_image)
    assert image.labels[CONTENT_LABEL] == content_key(host_python())
    assert image.labels[TEST_LABEL] == "1"
    assert ensure_base_image(docker_client) == base_image
    assert docker_client.images.get(base_image).id == image.id


@pytest.mark.docker
def test_bind_mounted_package_runs_with_python_m(
    docker_client: docker.DockerClient, base_image: str, tmp_path: Path
) -> None:
    package = tmp_path / "src" / "demo_runtime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import json, os, sys\nprint(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd()}))\n"
    )
    output = run(
        docker_client,
        base_image,
        ["python3", "-m", "demo_runtime", "--flow", "hello"],
        volumes={str(tmp_path / "src"): {"bind": "/opt/src", "mode": "ro"}},
        environment={"PYTHONPATH": "/opt/src"},
        working_dir="/tmp",
    )
    assert output == '{"argv": ["--flow", "hello"], "cwd": "/tmp"}\n'


@pytest.mark.docker
def test_bind_mounted_venv_site_packages_with_c_extensions_import(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    code = (
        "import click, psycopg, xxhash, yaml; "
        "print(yaml.__version__, xxhash.xxh64(b'x').hexdigest(), psycopg.pq.__impl__)"
    )
    output = run(
        docker_client,
        base_image,
        ["python3", "-c", code],
        volumes={site_packages: {"bind": "/opt/site", "mode": "ro"}},
        environment={"PYTHONPATH": "/opt/site"},
    )
    import xxhash
    import yaml

    assert output == f"{yaml.__version__} {xxhash.xxh64(b'x').hexdigest()} binary\n"


@pytest.fixture
def built_image(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Collects names of images a test builds and removes them afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(name, force=True)


@pytest.mark.docker
def test_dockerfile_from_base_image_with_copy_run_workdir(
    docker_client: docker.DockerClient, base_image: str, tmp_path: Path, built_image: list[str]
) -> None:
    (tmp_path / "hello.py").write_text("print('hello from', __file__)\n")
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base_image}\n"
        "WORKDIR /app\n"
        "COPY hello.py .\n"
        'RUN python3 hello.py > built.txt && echo "shell: $(basename $0)" >> built.txt\n'
        'CMD ["cat", "/app/built.txt"]\n'
    )
    tag = "buildsys-test/infra-dockerfile:latest"
    built_image.append(tag)
    docker_client.images.build(path=str(tmp_path), tag=tag, labels=TEST_LABELS, rm=True, forcerm=True)
    assert run(docker_client, tag, []) == "hello from /app/hello.py\nshell: sh\n"
    assert docker_client.images.get(tag).labels[TEST_LABEL] == "1"


@pytest.mark.docker
def test_sweep_removes_a_sessions_containers_but_not_a_fresh_foreign_one(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    # A made-up session id, so the sweep leaves this session's real containers alone.
    session = f"sweep-test-{uuid.uuid4().hex[:8]}"
    ours = docker_client.containers.create(
        base_image, ["true"], labels={TEST_LABEL: "1", SESSION_LABEL: session}
    )
    foreign = docker_client.containers.create(
        base_image, ["true"], labels={TEST_LABEL: "1", SESSION_LABEL: "another-session"}
    )
    try:
        removed = sweep_test_containers(docker_client, everything=False, session_id=session)
        assert ours.name in removed
        assert foreign.name not in removed
        remaining = {
            c.id for c in docker_client.containers.list(all=True, filters={"label": f"{TEST_LABEL}=1"})
        }
        assert ours.id not in remaining
        assert foreign.id in remaining
    finally:
        for container in (ours, foreign):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


# --- registry ------------------------------------------------------------------------------------


def v2_status(registry: Registry, password: str | None) -> tuple[int, str, str]:
    request = urllib.request.Request(f"{registry.url}/v2/")
    if password is not None:
        token = base64.b64encode(f"{registry.username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read().decode(), ""
    except urllib.error.HTTPError as exc:
        return int(exc.code), "", str(exc.headers.get("WWW-Authenticate", ""))


def test_registry_requires_basic_auth(registry: Registry) -> None:
    assert registry.host.startswith("127.0.0.1:")
    assert registry.url == f"http://{registry.host}"
    challenge = 'Basic realm="buildsys-test"'
    assert v2_status(registry, None) == (401, "", challenge)
    assert v2_status(registry, "wrong-" + registry.password) == (401, "", challenge)
    assert v2_status(registry, registry.password) == (200, "{}", "")


@pytest.mark.docker
def test_registry_login_with_wrong_password_is_refused(
    docker_client: docker.DockerClient, registry: Registry
) -> None:
    with pytest.raises(docker.errors.APIError) as caught:
        docker_client.login(registry.username, "not-the-password", registry=registry.url, reauth=True)
    assert (
        caught.value.explanation
        == f"login attempt to {registry.url}/v2/ failed with status: 401 Unauthorized"
    )
    ok = docker_client.login(registry.username, registry.password, registry=registry.url, reauth=True)
    assert ok == {"IdentityToken": "", "Status": "Login Succeeded"}


def push_errors(lines: Iterator[dict[str, object]]) -> list[str]:
    return [str(line.get("error")) for line in lines if "error" in line]


@pytest.mark.docker
def test_push_and_pull_through_the_registry_with_auth(
    docker_client: docker.DockerClient, registry: Registry, tmp_path: Path, built_image: list[str]
) -> None:
    (tmp_path / "payload.txt").write_text("pushed by buildsys tests\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY payload.txt /payload.txt\n")
    repository = registry.image("buildsys-test/probe")
    tag = f"{repository}:1"
    built_image.append(tag)
    image, _ = docker_client.images.build(path=str(tmp_path), tag=tag, labels=TEST_LABELS, rm=True)

    # A new client: docker_client may hold credentials from an earlier login().
    anonymous = docker.from_env()
    try:
        refused = push_errors(anonymous.images.push(repository, tag="1", stream=True, decode=True))
    finally:
        anonymous.close()
    assert refused == ["no basic auth credentials"]

    lines = list(
        docker_client.images.push(
            repository, tag="1", stream=True, decode=True, auth_config=registry.auth_config
        )
    )
    assert push_errors(iter(lines)) == []
    digests = [str(line["aux"]["Digest"]) for line in lines if isinstance(line.get("aux"), dict)]
    assert len(digests) == 1 and digests[0].startswith("sha256:")

    docker_client.images.remove(tag, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)
    pulled = docker_client.images.pull(repository, tag="1", auth_config=registry.auth_config)
    assert pulled.id == image.id
    assert f"{repository}@{digests[0]}" in pulled.attrs["RepoDigests"]


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_url_reaches_a_private_postgresql_15(postgres_url: str) -> None:
    assert re.fullmatch(r"postgresql://buildsys:[^@]+@127\.0\.0\.1:\d+/buildsys", postgres_url), postgres_url
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version_num')::int / 10000, current_user, current_database(), "
            "current_setting('listen_addresses')"
        ).fetchone()
    assert row == (15, "buildsys", "buildsys", "127.0.0.1")


@pytest.mark.postgres
def test_fresh_postgres_url_is_an_empty_database_of_its_own(
    postgres_url: str, fresh_postgres_url: str
) -> None:
    assert fresh_postgres_url.rsplit("/", 1)[0] == postgres_url.rsplit("/", 1)[0]
    assert fresh_postgres_url != postgres_url
    with psycopg.connect(fresh_postgres_url) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        assert tables.fetchone() == (0,)
        conn.execute("CREATE TABLE runs (id int PRIMARY KEY, state text NOT NULL)")
        conn.execute("INSERT INTO runs VALUES (1, 'COMPLETED')")
        assert conn.execute("SELECT state FROM runs").fetchall() == [("COMPLETED",)]


@pytest.mark.postgres
def test_fresh_database_is_dropped_afterwards_even_with_open_connections(
    postgres_server: PostgresServer,
) -> None:
    databases = "SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%' ORDER BY 1"
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        before = admin.execute(databases).fetchall()
        fresh = fresh_database(postgres_server)
        url = next(fresh)
        name = url.rsplit("/", 1)[1]
        assert admin.execute(databases).fetchall() == sorted([*before, (name,)])
        lingering = psycopg.connect(url)
        try:
            fresh.close()
            assert admin.execute(databases).fetchall() == before
        finally:
            lingering.close()


def test_decoded_lines_joins_chunks_split_anywhere() -> None:
    """The one line splitter of the Docker and Kubernetes log streams."""
    from buildsys.infra import decoded_lines

    chunks = [b"fir", b"st\r\nsec", b"ond\n", b"\xc3", b"\xa9t\xff\n", b"no newline"]
    assert list(decoded_lines(iter(chunks))) == ["first", "second", "\u00e9t\ufffd", "no newline"]
