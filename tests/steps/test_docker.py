"""build_docker_image / push_docker_image against the real engine and a real registry (htpasswd auth)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from buildsys.steps.docker import build_docker_image, push_docker_image

from buildsys.errors import StepError
from buildsys.step import Context
from tests.services.docker import SESSION_ID, SESSION_LABEL, TEST_LABELS
from tests.services.registry import Registry

pytestmark = pytest.mark.docker


def make_ctx(cwd: Path, **env: str) -> tuple[Context, list[str]]:
    lines: list[str] = []
    ctx = Context(root=cwd, cwd=cwd, emit=lines.append, step_name="docker")
    ctx.env.update(env)
    return ctx, lines


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture(scope="module")
def base_image(base_image: str, docker_client: Any) -> Iterator[str]:
    """The suite's base image with this session's label on it: every image this module builds
    inherits it, so that `image_name` sweeps only this session's dangling images, never those of a
    concurrent session or a bench building on the same engine (they inherit only buildsys.test=1)."""
    name = f"buildsys-test/session-base:{SESSION_ID}"
    docker_client.images.build(fileobj=io.BytesIO(f"FROM {base_image}\n".encode()), tag=name, labels=TEST_LABELS,
                               rm=True, forcerm=True)
    yield name
    with contextlib.suppress(docker.errors.APIError):  # still the parent of a leftover: the session sweep's
        docker_client.images.remove(name)


@pytest.fixture
def image_name(docker_client: Any) -> Iterator[str]:
    """A unique local repository name; every image tagged into it is removed afterwards, and so are
    this session's test images left dangling meanwhile (a rebuilt tag leaves its previous image
    untagged); built from `base_image`, they carry this session's label."""
    dangling = {"dangling": True, "label": f"{SESSION_LABEL}={SESSION_ID}"}
    before = {image.id for image in docker_client.images.list(filters=dangling)}
    name = f"buildsys-test/step-{uuid.uuid4().hex[:10]}"
    yield name
    for image in docker_client.images.list(name=name):
        docker_client.images.remove(image.id, force=True)
    for image in docker_client.images.list(filters=dangling):
        if image.id not in before:
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(image.id)


def run_in(docker_client: Any, image: str, command: str) -> str:
    out = docker_client.containers.run(image, ["sh", "-c", command], remove=True, labels=TEST_LABELS)
    return str(out.decode())


@pytest.fixture
def project(tmp_path: Path, base_image: str) -> Path:
    return write(tmp_path / "demo", {
        "Dockerfile": f"FROM {base_image}\nARG GREETING=hi\nCOPY . /app\nRUN echo \"$GREETING from build\"\n",
        ".dockerignore": "*.log\nsecrets/\n",
        "flow.py": "print('flow')\n",
        "debug.log": "ignored\n",
        "secrets/key.txt": "ignored\n",
    })


def test_build_streams_logs_and_returns_prefect_outputs(docker_client: Any, project: Path,
                                                        image_name: str) -> None:
    ctx, lines = make_ctx(project)

    out = build_docker_image(ctx, image_name=image_name, tag="v1", additional_tags=["extra"],
                             buildargs={"GREETING": "hello"}, labels={"team": "data"}, network_mode="host")

    image = docker_client.images.get(f"{image_name}:v1")
    assert out == {"image_name": image_name, "tag": "v1", "image": f"{image_name}:v1", "image_id": image.id,
                   "additional_tags": ["extra"]}
    assert docker_client.images.get(f"{image_name}:extra").id == image.id
    assert image.labels["team"] == "data"
    assert "hello from build" in lines
    assert lines[-1] == f"built {image_name}:v1 ({image.id})"
    assert run_in(docker_client, out["image"], "ls -A /app") == ".dockerignore\nDockerfile\nflow.py\n"


def test_files_hook_is_the_context_minus_dockerignore(project: Path) -> None:
    ctx, _ = make_ctx(project)
    assert build_docker_image.files_hook is not None
    assert build_docker_image.files_hook({"image_name": "x"}, ctx) == [".dockerignore", "Dockerfile", "flow.py"]
    sub = write(project / "sub", {"Dockerfile": "FROM scratch\n", "a.txt": "a"})
    assert build_docker_image.files_hook({"image_name": "x", "path": "sub"}, ctx) == [
        "sub/Dockerfile", "sub/a.txt",
    ]
    assert sub.is_dir()


def test_check_hook_trusts_the_cache_only_while_the_image_exists(docker_client: Any, project: Path,
                                                                 image_name: str) -> None:
    ctx, _ = make_ctx(project)
    out = build_docker_image(ctx, image_name=image_name, tag="v1")
    assert build_docker_image.check_hook is not None
    assert build_docker_image.check_hook(out, {}, ctx) is True
    docker_client.images.remove(f"{image_name}:v1", force=True)
    assert build_docker_image.check_hook(out, {}, ctx) is False


def test_default_tag_follows_the_context_content(project: Path, image_name: str) -> None:
    ctx, _ = make_ctx(project)
    first = build_docker_image(ctx, image_name=image_name)
    (project / "debug.log").write_text("changed but ignored\n")
    same = build_docker_image(ctx, image_name=image_name)
    (project / "flow.py").write_text("print('changed')\n")
    changed = build_docker_image(ctx, image_name=image_name)

    assert first["tag"].startswith("sha-") and len(first["tag"]) == len("sha-") + 16
    assert same["tag"] == first["tag"]
    assert changed["tag"] != first["tag"]


def test_fingerprint_names_the_base_image_id(docker_client: Any, project: Path, base_image: str) -> None:
    ctx, _ = make_ctx(project)
    assert build_docker_image.fingerprint_hook is not None
    assert build_docker_image.fingerprint_hook({"image_name": "x"}, ctx) == (
        f"{base_image}={docker_client.images.get(base_image).id}"
    )


def test_from_with_a_build_arg_is_resolved(docker_client: Any, tmp_path: Path, base_image: str,
                                          image_name: str) -> None:
    """`ARG BASE=…` / `FROM ${BASE}`: the fingerprint and the content tag resolve the arg; a multi-stage
    build's stage names are not looked up as images."""
    write(tmp_path, {"Dockerfile": f"ARG BASE={base_image}\nFROM ${{BASE}} AS build\nRUN true\nFROM build\n",
                     "a.txt": "x"})
    ctx, _ = make_ctx(tmp_path)
    assert build_docker_image.fingerprint_hook is not None
    assert build_docker_image.fingerprint_hook({"image_name": image_name}, ctx) == (
        f"{base_image}={docker_client.images.get(base_image).id}"
    )
    out = build_docker_image(ctx, image_name=image_name)
    assert out["image"].startswith(f"{image_name}:sha-")


def test_auto_dockerfile_copies_the_project_to_opt_prefect(docker_client: Any, tmp_path: Path,
                                                          base_image: str, image_name: str) -> None:
    root = write(tmp_path / "myproject", {"flows/etl.py": "print('etl')\n"})
    ctx, _ = make_ctx(root, BUILDSYS_DOCKER_BASE_IMAGE=base_image)

    out = build_docker_image(ctx, image_name=image_name, tag="auto", dockerfile="auto", persist_dockerfile=True)

    assert (root / "Dockerfile.generated").read_text() == (
        f"FROM {base_image}\nCOPY . /opt/prefect/myproject/\nWORKDIR /opt/prefect/myproject/\n"
    )
    # the generated Dockerfile itself is not copied into the image
    assert run_in(docker_client, out["image"], "pwd; ls -A") == "/opt/prefect/myproject\nDockerfile.generated\nflows\n"


def test_an_unchanged_project_rebuilds_to_the_same_image(tmp_path: Path, base_image: str, image_name: str,
                                                         docker_client: Any) -> None:
    root = write(tmp_path / "stable", {"flow.py": "x = 1\n", ".dockerignore": "*.log\n"})
    ctx, _ = make_ctx(root)
    first = build_docker_image(ctx, image_name=image_name, dockerfile="auto", base_image=base_image, tag="a")
    again = build_docker_image(ctx, image_name=image_name, dockerfile="auto", base_image=base_image, tag="b")
    assert again["image_id"] == first["image_id"]
    assert run_in(docker_client, first["image"], "ls -A") == ".dockerignore\nflow.py\n"


def test_auto_dockerfile_installs_requirements_and_shows_the_failing_step(tmp_path: Path, base_image: str,
                                                                          image_name: str) -> None:
    # The test base image has no pip, so the generated install step fails for real.
    root = write(tmp_path / "proj", {"requirements.txt": "requests\n", "flow.py": "x = 1\n"})
    ctx, lines = make_ctx(root)

    with pytest.raises(StepError) as err:
        build_docker_image(ctx, image_name=image_name, tag="t", dockerfile="auto", base_image=base_image)

    assert err.value.message == (
        f"docker build of {image_name}:t failed at Step 3/5 : "
        "RUN python -m pip install --no-cache-dir -r /opt/prefect/proj/requirements.txt\n"
        "/usr/local/bin/python: No module named pip\n"
        "The command '/bin/sh -c python -m pip install --no-cache-dir -r /opt/prefect/proj/requirements.txt' "
        "returned a non-zero code: 1"
    )
    assert "Step 1/5 : FROM " + base_image in lines


def test_build_failure_names_the_dockerfile_step(project: Path, base_image: str, image_name: str) -> None:
    (project / "Dockerfile").write_text(
        f"FROM {base_image}\nRUN echo preparing\nRUN echo about to fail >&2 && exit 3\n"
    )
    ctx, lines = make_ctx(project)
    with pytest.raises(StepError) as err:
        build_docker_image(ctx, image_name=image_name, tag="bad", nocache=True)
    assert err.value.message == (
        f"docker build of {image_name}:bad failed at Step 3/3 : RUN echo about to fail >&2 && exit 3\n"
        "about to fail\n"
        "The command '/bin/sh -c echo about to fail >&2 && exit 3' returned a non-zero code: 3"
    )
    assert "preparing" in lines  # the earlier steps' output streamed to the log


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"dockerfile": "auto"},
         "dockerfile: auto would generate a Dockerfile, but the build context already has one"),
        ({"dockerfile": "Missing.Dockerfile"}, "Dockerfile 'Missing.Dockerfile' not found in the build context {root}"),
        ({"image_name": "has space"}, "invalid image_name 'has space'"),
        ({"build_backend": "buildx"}, "build_backend 'buildx' is not supported"),
        ({"ssh": "default"}, "'ssh' needs the buildx backend, which buildsys does not support"),
        ({"memory": "1g"}, "unknown build_docker_image input 'memory'"),
    ],
)
def test_bad_build_inputs(project: Path, inputs: dict[str, Any], message: str) -> None:
    ctx, _ = make_ctx(project)
    with pytest.raises(StepError) as err:
        build_docker_image(ctx, **{"image_name": "x", **inputs})
    assert err.value.message == message.format(root=project)


def test_push_uploads_once_then_skips_what_the_registry_has(docker_client: Any, registry: Registry,
                                                            project: Path) -> None:
    name = registry.image(f"team/app-{uuid.uuid4().hex[:8]}")
    ctx, _ = make_ctx(project)
    built = build_docker_image(ctx, image_name=name, tag="v1", additional_tags=["latest"])
    credentials = {"username": registry.username, "password": registry.password, "registry_url": registry.host}
    try:
        ctx, lines = make_ctx(project)
        out = push_docker_image(ctx, image_name=name, tag="v1", credentials=credentials,
                                additional_tags=["latest"])

        remote = docker_client.images.get_registry_data(f"{name}:v1", auth_config=credentials)
        assert out == {"image_name": name, "tag": "v1", "image": f"{name}:v1", "digest": remote.id,
                       "additional_tags": ["latest"]}
        assert lines[-1] == f"pushed {name}:latest ({remote.id})"
        assert not any(registry.password in line for line in lines)
        assert registry.password in ctx.secrets

        ctx, lines = make_ctx(project)
        again = push_docker_image(ctx, image_name=built["image"], credentials=credentials)
        assert again["digest"] == remote.id
        assert again["tag"] == "v1"
        assert lines == [f"{name}:v1: the registry already has {remote.id}; not pushing"]
        assert push_docker_image.check_hook is not None
        assert push_docker_image.check_hook(again, {"credentials": credentials}, ctx) is True
    finally:
        for ref in (f"{name}:v1", f"{name}:latest"):
            docker_client.images.remove(ref, force=True)


def test_push_with_a_wrong_password_is_refused(registry: Registry, project: Path) -> None:
    ctx, lines = make_ctx(project)
    with pytest.raises(StepError) as err:
        push_docker_image(ctx, image_name=registry.image("team/app"), tag="v1",
                          credentials={"username": registry.username, "password": "wrong-password-1",
                                       "registry_url": registry.host})
    assert err.value.message == f"registry {registry.host} refused the login of '{registry.username}'"
    assert "wrong-password-1" not in str(err.value.hint)
    assert not any("wrong-password-1" in line for line in lines)


def test_push_refuses_two_different_tags(project: Path) -> None:
    with pytest.raises(StepError) as err:
        push_docker_image(make_ctx(project)[0], image_name="127.0.0.1:5000/team/app:v1", tag="v2")
    assert err.value.message == "image_name '127.0.0.1:5000/team/app:v1' already has the tag 'v1', but tag is 'v2'"


def test_push_of_a_missing_image_fails_clearly(registry: Registry, project: Path) -> None:
    ctx, _ = make_ctx(project)
    name = registry.image("team/never-built")
    with pytest.raises(StepError) as err:
        push_docker_image(ctx, image_name=name, tag="v9")
    assert err.value.message == f"image {name}:v9 is not in the local Docker engine"
    assert err.value.hint == "build it first (build_docker_image) or check image_name and tag"


def test_push_without_credentials_to_a_private_registry(docker_client: Any, registry: Registry,
                                                        project: Path) -> None:
    name = registry.image(f"team/anon-{uuid.uuid4().hex[:8]}")
    build_docker_image(make_ctx(project)[0], image_name=name, tag="v1")
    try:
        with pytest.raises(StepError) as err:
            push_docker_image(make_ctx(project)[0], image_name=name, tag="v1")
        assert err.value.message == f"pushing {name}:v1 failed: no basic auth credentials"
        assert err.value.hint == "the registry wants credentials: set credentials (username, password, registry_url)"
    finally:
        docker_client.images.remove(f"{name}:v1", force=True)


def test_engine_build_is_cached_while_the_image_exists(docker_client: Any, base_image: str, isolated: Path,
                                                       image_name: str) -> None:
    write(isolated, {
        "prefect.yaml": (
            "name: docker-demo\n"
            "build:\n"
            "  - prefect_docker.deployments.steps.build_docker_image:\n"
            "      id: img\n"
            f"      image_name: {image_name}\n"
            "      dockerfile: auto\n"
            "deployments:\n"
            "  - name: d\n"
            "    entrypoint: flow.py:f\n"
            "    work_pool: {name: p, job_variables: {image: '{{ img.image }}'}}\n"
        ),
        "flow.py": "def f():\n    pass\n",
        ".dockerignore": "notes.txt\n",
        "notes.txt": "not in the image\n",
    })

    def build() -> str:
        done = subprocess.run([sys.executable, "-m", "buildsys", "build"], cwd=isolated, capture_output=True,
                              text=True, timeout=300, check=False,
                              env={**os.environ, "BUILDSYS_DOCKER_BASE_IMAGE": base_image})
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[-1] if lines else ""

    assert build() == "build ok: 1 ran, 0 cached, 0 failed, 0 not run"
    assert build() == "build ok: 0 ran, 1 cached, 0 failed, 0 not run"
    (isolated / "notes.txt").write_text("ignored by .dockerignore\n")
    assert build() == "build ok: 0 ran, 1 cached, 0 failed, 0 not run"
    (isolated / "flow.py").write_text("def f():\n    return 1\n")
    assert build() == "build ok: 1 ran, 0 cached, 0 failed, 0 not run"
    for image in docker_client.images.list(name=image_name):
        docker_client.images.remove(image.id, force=True)
    assert build() == "build ok: 1 ran, 0 cached, 0 failed, 0 not run"
    (image,) = docker_client.images.list(name=image_name)
    # buildsys's own .buildsys/ state never reaches the image (nor the cache key)
    assert run_in(docker_client, image.id, "pwd; ls -A") == f"/opt/prefect/{isolated.name}\n.dockerignore\nflow.py\nprefect.yaml\n"


def test_engine_build_and_push_to_the_registry(docker_client: Any, base_image: str, registry: Registry,
                                               isolated: Path) -> None:
    name = registry.image(f"team/cli-{uuid.uuid4().hex[:8]}")
    write(isolated, {
        "prefect.yaml": (
            "name: push-demo\n"
            "build:\n"
            "  - prefect_docker.deployments.steps.build_docker_image:\n"
            "      id: img\n"
            f"      image_name: {name}\n"
            "      tag: v1\n"
            "      dockerfile: auto\n"
            "push:\n"
            "  - prefect_docker.deployments.steps.push_docker_image:\n"
            "      image_name: '{{ img.image_name }}'\n"
            "      tag: '{{ img.tag }}'\n"
            "      credentials:\n"
            f"        username: {registry.username}\n"
            "        password: '{{ $REGISTRY_PASSWORD }}'\n"
            f"        registry_url: {registry.host}\n"
            "deployments:\n"
            "  - name: d\n"
            "    entrypoint: flow.py:f\n"
        ),
        "flow.py": "def f():\n    pass\n",
    })
    env = {**os.environ, "BUILDSYS_DOCKER_BASE_IMAGE": base_image, "REGISTRY_PASSWORD": registry.password}

    def push() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "buildsys", "push"], cwd=isolated, capture_output=True,
                              text=True, timeout=300, check=False, env=env)

    try:
        first, second = push(), push()
        assert (first.stdout + first.stderr).strip().splitlines()[-1] == (
            "build ok: 2 ran, 0 cached, 0 failed, 0 not run"
        ), first.stdout + first.stderr
        assert (second.stdout + second.stderr).strip().splitlines()[-1] == (
            "build ok: 0 ran, 2 cached, 0 failed, 0 not run"
        )
        local = docker_client.images.get(f"{name}:v1")
        remote = docker_client.images.get_registry_data(f"{name}:v1", auth_config=registry.auth_config)
        assert f"{name}@{remote.id}" in local.attrs["RepoDigests"]
        for done in (first, second):
            assert registry.password not in done.stdout + done.stderr
        assert files_with(isolated, registry.password) == []
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(f"{name}:v1", force=True)


def files_with(root: Path, needle: str) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]
