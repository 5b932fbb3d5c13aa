"""The shared cache (buildsys.sharedcache) between two "runners": separate clones of one project,
each with an empty .buildsys/, against a real buildsys server and a real S3-compatible server.

Most steps here are push_to_s3 (their artifact is the uploaded folder, checked in the bucket); the
last test builds and pushes a Docker image (checked in the registry).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from buildsys.cli import cli, main
from buildsys.server.auth import Authenticator, TokenStore, database_for
from buildsys.server.cachetable import CacheTable
from buildsys.sharedcache import SharedEntry, decode, encode
from buildsys.store import open_store
from tests.server.running import threaded_server
from tests.services.net import free_port
from tests.services.registry import Registry
from tests.services.s3 import S3Server

KEY = "k" * 40  # BUILDSYS_CACHE_KEY of the trusted writers
OTHER_KEY = "p" * 40  # a pull request's own key

PROJECT = """\
name: shared-demo
deployments:
  - name: alpha
    entrypoint: flows/alpha.py:main
    push:
      - push_to_s3:
          id: upload_alpha
          bucket: {bucket}
          folder: alpha
  - name: beta
    entrypoint: flows/beta.py:main
    push:
      - push_to_s3:
          id: upload_beta
          bucket: {bucket}
          folder: beta
"""


@dataclass
class Runners:
    origin: Path
    base: Path
    env: dict[str, str]
    count: int = 0

    def clone(self) -> Path:
        """A fresh checkout with an empty .buildsys/ (the cache is not in git)."""
        self.count += 1
        dest = self.base / f"runner{self.count}"
        subprocess.run(["git", "clone", "-q", str(self.origin), str(dest)], check=True)
        assert not (dest / ".buildsys").exists()
        return dest

    def push(self, runner: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        """`buildsys --json push ARGS` in `runner`: the summary event, with the warnings seen."""
        result = CliRunner().invoke(
            cli, ["--json", "-f", str(runner / "prefect.yaml"), "push", *args], env={**self.env, **(env or {})}
        )
        events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert result.exit_code == 0, result.output
        summary = events[-1]
        summary["warnings"] = [e["message"] for e in events if e["event"] == "message"]
        summary["steps"] = {e["step"]: e.get("reason", "") for e in events if e["event"] in ("cached", "start")}
        return summary

    def outputs(self, runner: Path, step: str) -> Any:
        result = CliRunner().invoke(cli, ["-f", str(runner / "prefect.yaml"), "output", step], env=self.env)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def runners(tmp_path: Path, s3_server: S3Server, s3_bucket: str) -> Iterator[Runners]:
    origin = tmp_path / "origin"
    (origin / "flows").mkdir(parents=True)
    (origin / "prefect.yaml").write_text(PROJECT.format(bucket=s3_bucket))
    for name in ("alpha", "beta"):
        (origin / "flows" / f"{name}.py").write_text(f"def main() -> str:\n    return {name!r}\n")
    (origin / ".gitignore").write_text(".buildsys/\n")
    (origin / ".prefectignore").write_text(".git/\n.buildsys/\n")
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "project"]):
        subprocess.run(["git", *args], cwd=origin, check=True)
    env = {
        "BUILDSYS_CACHE_KEY": KEY,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_REGION": s3_server.region,
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
    }
    yield Runners(origin, tmp_path, env)


@pytest.fixture
def cache_bucket(s3_server: S3Server) -> Iterator[str]:
    """A second bucket, for the shared cache itself."""
    client = s3_server.client()
    name = f"buildsys-cache-{free_port()}"
    client.create_bucket(Bucket=name)
    yield name
    for key in s3_server.objects(name):
        client.delete_object(Bucket=name, Key=key)
    client.delete_bucket(Bucket=name)


@dataclass
class CacheServer:
    url: str
    writer: str  # a token with the `cache` scope
    reader: str  # a `read` token
    table: CacheTable


@pytest.fixture
def cache_server(tmp_path: Path) -> Iterator[CacheServer]:
    db = tmp_path / "server.db"
    store = open_store(str(db))
    tokens = TokenStore(database_for(str(db)))
    writer = tokens.create("cache")[1]
    reader = tokens.create("read")[1]
    table = CacheTable(database_for(str(db)))
    try:
        with threaded_server(store, authenticator=Authenticator(tokens), cache=table) as url:
            yield CacheServer(url, writer, reader, table)
    finally:
        store.close()


def shared(summary: dict[str, Any]) -> dict[str, int]:
    return {k: summary["shared"][k] for k in ("hits", "written", "refused")}


def test_a_fresh_runner_restores_every_step_from_an_s3_cache_unless_its_artifact_is_gone(
    runners: Runners, cache_bucket: str, s3_server: S3Server, s3_bucket: str
) -> None:
    url = f"s3://{cache_bucket}/ci"
    first = runners.clone()
    built = runners.push(first, "--cache-from", url, "--cache-write")
    assert (built["ran"], built["cached"], shared(built)) == (2, 0, {"hits": 0, "written": 2, "refused": 0})
    stored = s3_server.objects(cache_bucket)
    assert len(stored) == 2 and all(k.startswith("ci/") and k.endswith(".json") for k in stored)
    assert all(KEY not in body.decode() and s3_server.secret_key not in body.decode() for body in stored.values())

    second = runners.clone()
    restored = runners.push(second, "--cache-from", url)
    assert (restored["ran"], restored["cached"], shared(restored)) == (0, 2, {"hits": 2, "written": 0, "refused": 0})
    assert set(restored["steps"].values()) == {"restored from the shared cache"}
    for step in ("upload_alpha", "upload_beta"):
        assert runners.outputs(second, step) == runners.outputs(first, step)
    again = runners.push(second)  # kept locally: no shared cache needed any more
    assert (again["ran"], again["cached"]) == (0, 2)

    client = s3_server.client()  # alpha's upload is deleted from its bucket: that entry no longer stands
    for key in s3_server.objects(s3_bucket):
        if key.startswith("alpha/"):
            client.delete_object(Bucket=s3_bucket, Key=key)
    third = runners.clone()
    result = runners.push(third, "--cache-from", url, "--cache-write")
    assert (result["ran"], result["cached"], shared(result)) == (1, 1, {"hits": 2, "written": 1, "refused": 0})
    assert result["steps"] == {"upload_alpha": "the shared cache's result no longer exists",
                               "upload_beta": "restored from the shared cache"}
    assert any(k.startswith("alpha/") for k in s3_server.objects(s3_bucket))


def test_a_fresh_runner_restores_from_the_server_and_a_read_only_runner_writes_nothing(
    runners: Runners, cache_server: CacheServer
) -> None:
    writer_env = {"BUILDSYS_CACHE_TOKEN": cache_server.writer}
    reader_env = {"BUILDSYS_CACHE_TOKEN": cache_server.reader}
    first = runners.clone()
    built = runners.push(first, "--cache-from", cache_server.url, "--cache-write", env=writer_env)
    assert (built["ran"], shared(built)) == (2, {"hits": 0, "written": 2, "refused": 0})

    second = runners.clone()
    restored = runners.push(second, env={"BUILDSYS_CACHE": cache_server.url, **reader_env})
    assert (restored["ran"], restored["cached"], shared(restored)) == (0, 2, {"hits": 2, "written": 0, "refused": 0})
    assert runners.outputs(second, "upload_beta") == runners.outputs(first, "upload_beta")
    deployer = runners.clone()  # deploy takes the cache too: build and push restored, then applied
    deployed = CliRunner().invoke(cli, ["--json", "-f", str(deployer / "prefect.yaml"), "deploy", "--cache-from",
                                        cache_server.url], env={**runners.env, **reader_env})
    assert deployed.exit_code == 0, deployed.output
    events = [json.loads(line) for line in deployed.stdout.splitlines()]
    assert [(e["event"], e.get("reason")) for e in events if "step" in e] == [
        ("cached", "restored from the shared cache")] * 2

    # a read-only runner (no --cache-write) builds a change and stores nothing
    (second / "flows" / "alpha.py").write_text("def main() -> str:\n    return 'changed'\n")
    before = _entries(cache_server)
    changed = runners.push(second, "--cache-from", cache_server.url, env=reader_env)
    assert (changed["ran"], shared(changed)) == (2, {"hits": 0, "written": 0, "refused": 0})
    assert _entries(cache_server) == before

    # nor can it with --cache-write while its token may only read: a warning, and the build is fine
    refused = runners.push(second, "--cache-from", cache_server.url, "--cache-write", "--no-cache", env=reader_env)
    assert refused["ok"] and _entries(cache_server) == before
    assert any("refused the write: this token has scope 'read'; this call needs 'cache'" in w
               for w in refused["warnings"])


def _entries(server: CacheServer) -> list[str]:
    with server.table.db.tx() as tx:
        return sorted(str(row[0]) for row in tx.run("SELECT key FROM shared_cache"))


def test_a_tampered_entry_or_one_sealed_with_another_key_is_refused(runners: Runners, cache_bucket: str,
                                                                     s3_server: S3Server) -> None:
    url = f"s3://{cache_bucket}/ci"
    runners.push(runners.clone(), "--cache-from", url, "--cache-write")
    client = s3_server.client()
    objects = s3_server.objects(cache_bucket)
    (alpha, body), _ = sorted(objects.items(), key=lambda kv: b"alpha" not in kv[1])
    doc = json.loads(body)
    doc["payload"] = doc["payload"].replace('"folder":"alpha"', '"folder":"beta"')  # points main at a PR's upload
    client.put_object(Bucket=cache_bucket, Key=alpha, Body=json.dumps(doc).encode())

    second = runners.clone()
    result = runners.push(second, "--cache-from", url)
    assert (result["ran"], result["cached"], shared(result)) == (1, 1, {"hits": 1, "written": 0, "refused": 1})
    assert result["steps"]["upload_alpha"] == "no previous run"
    assert runners.outputs(second, "upload_alpha") == {"bucket": runners.outputs(second, "upload_beta")["bucket"],
                                                        "folder": "alpha"}
    [warning] = result["warnings"]
    assert warning.startswith("warning: shared cache: the entry for upload_alpha in s3://")
    assert warning.endswith("is refused: its signature does not match: it was altered after this key sealed it")

    # a pull request that writes with its own key (even with the bucket's credentials) is refused too
    third = runners.clone()
    runners.push(third, "--cache-from", url, "--cache-write", "--no-cache", env={"BUILDSYS_CACHE_KEY": OTHER_KEY})
    fourth = runners.clone()
    main_runner = runners.push(fourth, "--cache-from", url)
    assert shared(main_runner) == {"hits": 0, "written": 0, "refused": 2}
    assert all(w.endswith(f"sealed with key {_key_id(OTHER_KEY)}, not this runner's key {_key_id(KEY)}")
               for w in main_runner["warnings"])


def _key_id(text: str) -> str:
    from buildsys.caches import key_id

    return key_id(text.encode())


def test_a_cache_that_is_down_or_unauthenticated_is_a_warning_and_the_build_works(runners: Runners) -> None:
    runner = runners.clone()
    down = f"http://127.0.0.1:{free_port()}"
    result = runners.push(runner, "--cache-from", down, "--cache-write")
    assert (result["ok"], result["ran"], shared(result)) == (True, 2, {"hits": 0, "written": 0, "refused": 0})
    [warning] = result["warnings"]
    assert warning.startswith(f"warning: shared cache {down} is unavailable (ConnectError: [Errno ")
    assert warning.endswith("Connection refused); building without it")

    keyless = runners.push(runners.clone(), "--cache-from", down, env={"BUILDSYS_CACHE_KEY": ""})
    assert keyless["ok"] and "shared" not in keyless
    assert keyless["warnings"] == [
        f"warning: shared cache {down} not used: BUILDSYS_CACHE_KEY is not set (entries are authenticated with it)"
    ]


def test_a_result_holding_a_secret_is_never_shared(runners: Runners, cache_bucket: str, s3_server: S3Server) -> None:
    project = runners.origin / "prefect.yaml"
    project.write_text(project.read_text().replace("folder: beta", 'folder: "{{ $DEPLOY_TOKEN }}"'))
    subprocess.run(["git", "commit", "-q", "-am", "beta's folder from a secret"], cwd=runners.origin, check=True)
    url = f"s3://{cache_bucket}/ci"
    result = runners.push(runners.clone(), "--cache-from", url, "--cache-write", env={"DEPLOY_TOKEN": "s3cr3t-folder"})
    assert (result["ran"], shared(result)) == (2, {"hits": 0, "written": 1, "refused": 0})
    stored = s3_server.objects(cache_bucket)
    assert len(stored) == 1 and b"s3cr3t-folder" not in next(iter(stored.values()))


def test_bad_shared_cache_options_are_clear_errors(runners: Runners, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    runner = runners.clone()
    for name, value in runners.env.items():
        monkeypatch.setenv(name, value)
    for args, message in (
        (["--cache-from", "ftp://cache.example"], "error: unknown shared cache URL 'ftp://cache.example'\n"
         "  hint: use http(s)://HOST:PORT (a buildsys server) or s3://BUCKET[/PREFIX]\n"),
        (["--cache-write"], "error: --cache-write needs a shared cache\n"
         "  hint: add --cache-from URL or set BUILDSYS_CACHE\n"),
        (["--cache-from", "s3://"], "error: no bucket in the shared cache URL 's3://'\n  hint: s3://BUCKET[/PREFIX]\n"),
    ):
        with pytest.raises(SystemExit) as exited:
            main(["-f", str(runner / "prefect.yaml"), "push", *args])
        assert exited.value.code == 1
        assert capsys.readouterr().err == message


def test_entries_are_bound_to_their_key_and_bounded() -> None:
    secret = KEY.encode()
    entry = SharedEntry("ab" * 16, "push_to_s3", "1", "up", {"folder": "a"}, 1.5, 0.0, "")
    data = encode(entry, secret)
    assert decode(entry.key, data, secret).outputs == {"folder": "a"}
    with pytest.raises(ValueError, match="stored under another key"):
        decode("cd" * 16, data, secret)  # copied to another step's key
    with pytest.raises(ValueError, match="signature does not match"):
        decode(entry.key, data, OTHER_KEY.encode())
    with pytest.raises(ValueError, match="larger than"):
        decode(entry.key, b" " * (2 << 20), secret)
    with pytest.raises(ValueError, match="not JSON"):
        decode(entry.key, b"\x80\x04pickle", secret)


DOCKER_PROJECT = """\
name: docker-demo
build:
  - build_docker_image:
      id: image
      image_name: {image}
      dockerfile: Dockerfile
push:
  - push_docker_image:
      id: pushed
      image_name: "{{{{ image.image_name }}}}"
      tag: "{{{{ image.tag }}}}"
deployments:
  - name: app
    entrypoint: flows/app.py:main
"""


@pytest.mark.docker
def test_an_image_is_restored_from_the_registry_and_rebuilt_once_deleted_there(
    tmp_path: Path, docker_client: Any, registry: Registry, s3_server: S3Server, cache_bucket: str
) -> None:
    import base64
    import uuid

    image = registry.image(f"shared/app-{uuid.uuid4().hex[:10]}")
    origin = tmp_path / "origin"
    (origin / "flows").mkdir(parents=True)
    (origin / "prefect.yaml").write_text(DOCKER_PROJECT.format(image=image))
    (origin / "Dockerfile").write_text("FROM scratch\nCOPY flows /flows\n")  # tiny: quick to push
    (origin / ".dockerignore").write_text(".git\n")  # a clone's .git differs from another's
    (origin / "flows" / "app.py").write_text("def main() -> None:\n    pass\n")
    (origin / ".gitignore").write_text(".buildsys/\n")
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "project"]):
        subprocess.run(["git", *args], cwd=origin, check=True)
    # `docker login`, as CI does before a push: the push and the registry checks use it
    config = tmp_path / "docker-config"
    config.mkdir()
    login = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": login}}}))
    env = {"BUILDSYS_CACHE_KEY": KEY, "AWS_ACCESS_KEY_ID": s3_server.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_key, "AWS_REGION": s3_server.region,
           "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url, "DOCKER_CONFIG": str(config),
           "REGISTRY_USER": registry.username, "REGISTRY_PASSWORD": registry.password}
    runners = Runners(origin, tmp_path, env)
    url = f"s3://{cache_bucket}/ci"
    try:
        first = runners.clone()
        built = runners.push(first, "--cache-from", url, "--cache-write")
        assert (built["ran"], shared(built)) == (2, {"hits": 0, "written": 2, "refused": 0})
        tag = runners.outputs(first, "image")["tag"]
        docker_client.images.remove(f"{image}:{tag}", force=True)  # the next runner is another machine

        second = runners.clone()
        restored = runners.push(second, "--cache-from", url)
        assert (restored["ran"], restored["cached"], shared(restored)) == (0, 2, {"hits": 2, "written": 0, "refused": 0})
        assert runners.outputs(second, "pushed") == runners.outputs(first, "pushed")
        assert not docker_client.images.list(name=image)  # confirmed in the registry, not pulled
        again = runners.push(second, "--cache-from", url)  # still not here, still in the registry
        assert (again["ran"], again["cached"], shared(again)) == (0, 2, {"hits": 0, "written": 0, "refused": 0})

        digest = runners.outputs(first, "pushed")["digest"]
        deleted = httpx.delete(f"{registry.url}/v2/{image.split('/', 1)[1]}/manifests/{digest}",
                               auth=(registry.username, registry.password))
        assert deleted.status_code == 202
        third = runners.clone()
        rebuilt = runners.push(third, "--cache-from", url, "--cache-write")
        assert (rebuilt["ran"], rebuilt["cached"]) == (2, 0)
        assert rebuilt["steps"]["image"] == "the shared cache's result no longer exists"
    finally:
        for found in docker_client.images.list(name=image):
            docker_client.images.remove(found.id, force=True)


@pytest.mark.unit
def test_registry_checks_take_the_proxy_the_environment_names_for_that_registry() -> None:
    from buildsys.steps._docker_registry import _proxy

    env = {"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "internal.example, .corp.example"}
    assert _proxy("https://registry-1.docker.io", env) == "http://proxy:3128"
    assert _proxy("https://ghcr.io:443", {"all_proxy": "http://all:1"}) == "http://all:1"
    assert _proxy("https://internal.example", env) is None
    assert _proxy("https://reg.corp.example:5000", env) is None
    assert _proxy("http://127.0.0.1:5000", {"HTTP_PROXY": "http://proxy:3128"}) is None  # loopback: direct
    assert _proxy("https://ghcr.io", {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}) is None
    assert _proxy("https://ghcr.io", {"HTTP_PROXY": "http://proxy:3128"}) is None  # plain HTTP's proxy only


@pytest.mark.docker
def test_docker_steps_share_one_client_per_engine_but_never_one_that_logs_in(tmp_path: Path) -> None:
    import os

    from buildsys.steps._docker_engine import client_for

    from buildsys.step import Context

    ctx = Context(root=tmp_path, cwd=tmp_path, env=dict(os.environ))
    shared_client = client_for(ctx)
    assert client_for(Context(root=tmp_path, cwd=tmp_path, env=dict(os.environ))) is shared_client
    private = client_for(ctx, private=True)  # a step with credentials: its login stays in its own client
    assert private is not shared_client and client_for(ctx) is shared_client
    private.close()
    elsewhere = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "other-config")}  # another client configuration
    assert client_for(Context(root=tmp_path, cwd=tmp_path, env=elsewhere)) is not shared_client
