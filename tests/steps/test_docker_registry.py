"""The registry checks of restored images (steps/_docker_registry), counted against a small local
registry stand-in that answers manifests behind a Basic login (127.0.0.1)."""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from buildsys.steps._docker_registry import holds_image, manifest_digest, pushed
from buildsys.steps.docker import build_docker_image

from buildsys.errors import StepError
from buildsys.step import BuildScope, Context
from tests.services.net import free_port
from tests.services.serving import served
from tests.steps.test_docker_api import _UnixEngine

pytestmark = pytest.mark.unit

LOGIN = {"username": "ci", "password": "s3cret"}
CONFIG = "sha256:" + "c" * 64
DIGEST = "sha256:" + "d" * 64


class _Registry(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, bearer: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, bool]] = []  # (method, path, with a login or the repository's token)
        self.lock = threading.Lock()
        self.bearer = bearer  # tokens from /token (for the login), one per repository, instead of Basic

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def requests(self, method: str = "", *, authorized: bool | None = None) -> int:
        with self.lock:
            return sum(1 for m, _, auth in self.seen
                       if (not method or m == method) and (authorized is None or auth == authorized))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Registry

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        login = "Basic " + base64.b64encode(b"ci:s3cret").decode()
        repository = self.path.removeprefix("/v2/").partition("/manifests/")[0]
        expected = f"Bearer for:{repository}" if self.server.bearer else login
        authorized = self.headers.get("Authorization") == expected
        if self.path.startswith("/token?"):
            query = urllib.parse.parse_qs(self.path.partition("?")[2])
            authorized = self.headers.get("Authorization") == login and query["service"] == ["stand-in"]
            scope = query["scope"][0].removeprefix("repository:").removesuffix(":pull")
        with self.server.lock:
            self.server.seen.append((self.command, self.path, authorized))
        if self.path.startswith("/token?"):
            self._send(200 if authorized else 401, json.dumps({"token": f"for:{scope}"}).encode(), {})
        elif not authorized and self.server.bearer:
            realm = f"http://{self.server.host}/token"
            challenge = f'Bearer realm="{realm}",service="stand-in",scope="repository:{repository}:pull"'
            self._send(401, b"", {"WWW-Authenticate": challenge})
        elif not authorized:
            self._send(401, b"", {"WWW-Authenticate": 'Basic realm="test"'})
        elif self.path.endswith("/manifests/there"):
            body = json.dumps({"schemaVersion": 2, "config": {"digest": CONFIG}}).encode()
            self._send(200, body, {"Docker-Content-Digest": DIGEST})
        else:
            self._send(404, b"{}", {})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer


def _serving(bearer: bool = False) -> AbstractContextManager[_Registry]:
    return served(_Registry(bearer), poll_interval=0.02)


def _context(tmp_path: Path, scope: BuildScope) -> Context:
    return Context(root=tmp_path, cwd=tmp_path, env={"DOCKER_CONFIG": str(tmp_path / "none")}, build=scope)


def test_the_build_check_and_the_push_check_of_one_build_ask_the_registry_once(tmp_path: Path) -> None:
    with _serving() as registry:
        image = f"{registry.host}/team/app:there"
        build = _context(tmp_path, BuildScope())
        assert holds_image(build, image, CONFIG, LOGIN)
        push = _context(tmp_path, build.build)  # another step's context in the same build
        assert manifest_digest(push, image, LOGIN) == DIGEST
        assert registry.requests(authorized=True) == 1
        assert not holds_image(build, image, "sha256:" + "0" * 64, LOGIN)  # another image: the same answer read
        assert registry.requests(authorized=True) == 1

        later = _context(tmp_path, BuildScope())  # the next build asks again
        assert manifest_digest(later, image, LOGIN) == DIGEST
        assert registry.requests(authorized=True) == 2
        pushed(later, image, LOGIN)  # this build pushed the tag: what it learnt of it is gone
        assert manifest_digest(later, image, LOGIN) == DIGEST
        assert registry.requests(authorized=True) == 3

        absent = f"{registry.host}/team/app:gone"
        assert manifest_digest(later, absent, LOGIN) is None
        assert not holds_image(later, absent, CONFIG, LOGIN)
        assert registry.requests(authorized=True) == 4  # an absent tag is an answer too


def test_parallel_checks_with_one_login_meet_the_basic_challenge_once(tmp_path: Path) -> None:
    with _serving() as registry:
        scope = BuildScope()
        images = [f"{registry.host}/team/app{n}:there" for n in range(8)]  # 8 repositories, 8 sessions
        with ThreadPoolExecutor(max_workers=8) as pool:
            found = list(pool.map(lambda image: holds_image(_context(tmp_path, scope), image, CONFIG, LOGIN), images))
        assert found == [True] * 8
        assert registry.requests(authorized=False) == 1  # one 401, not one per repository
        assert registry.requests(authorized=True) == 8


def test_parallel_checks_meet_a_token_challenge_once_and_ask_for_their_tokens_at_once(tmp_path: Path) -> None:
    with _serving(bearer=True) as registry:
        scope = BuildScope()
        images = [f"{registry.host}/team/app{n}:there" for n in range(8)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            found = list(pool.map(lambda image: holds_image(_context(tmp_path, scope), image, CONFIG, LOGIN), images))
        assert found == [True] * 8
        with registry.lock:
            seen = list(registry.seen)
        assert [path for _, path, authorized in seen if not authorized] == [seen[0][1]]  # the first one's 401
        tokens = sorted(path for _, path, _ in seen if path.startswith("/token?"))
        assert tokens == sorted(f"/token?service=stand-in&scope=repository%3Ateam%2Fapp{n}%3Apull" for n in range(8))
        assert registry.requests("GET", authorized=True) == 16  # 8 tokens, 8 manifests


def test_the_login_docker_login_stored_is_read_once_per_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buildsys.steps import _docker_registry

    reads: list[str] = []
    real = _docker_registry.configured_login
    monkeypatch.setattr(_docker_registry, "configured_login", lambda env, registry: reads.append(registry) or real(env, registry))
    config = tmp_path / "docker-config"
    config.mkdir()
    with _serving() as registry:
        auth = base64.b64encode(b"ci:s3cret").decode()
        (config / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
        scope = BuildScope()
        for n in range(3):  # three images of one build, without `credentials`: `docker login`'s
            ctx = Context(root=tmp_path, cwd=tmp_path, env={"DOCKER_CONFIG": str(config)}, build=scope)
            assert manifest_digest(ctx, f"{registry.host}/team/app{n}:there", None) == DIGEST
        assert reads == [registry.host]
        later = Context(root=tmp_path, cwd=tmp_path, env={"DOCKER_CONFIG": str(config)}, build=BuildScope())
        assert manifest_digest(later, f"{registry.host}/team/app0:there", None) == DIGEST
        assert reads == [registry.host, registry.host]  # the next build reads it again


def test_a_restored_build_is_looked_for_in_its_registry_first_and_in_this_engine_when_not_there(
    tmp_path: Path,
) -> None:
    """A fresh runner finds a restored image in the registry its name says, not in its engine (the
    engine is asked only when the registry does not have it, or did not answer); an image named
    without a registry (Docker Hub's) is looked for in the engine first."""
    hook = build_docker_image.shared_hook
    assert hook is not None
    here = "sha256:" + "a" * 64  # the engine stand-in's id of every image
    path = str(tmp_path / "engine.sock")
    with _serving() as registry, served(_UnixEngine(path), poll_interval=0.02) as engine:

        def check(image: str, built: str) -> bool:
            ctx = Context(root=tmp_path, cwd=tmp_path, build=BuildScope(),
                          env={"DOCKER_CONFIG": str(tmp_path / "none"), "DOCKER_HOST": f"unix://{path}"})
            return hook({"image": image, "image_id": built}, {"credentials": LOGIN}, ctx)

        assert check(f"{registry.host}/team/app:there", CONFIG)
        assert (registry.requests(authorized=True), engine.seen) == (1, [])
        assert check(f"{registry.host}/team/app:gone", here)  # not pushed, but this engine has it
        assert engine.seen == ["/images/" + f"{registry.host}/team/app:gone/json"]
        assert not check(f"{registry.host}/team/app:there", "sha256:" + "b" * 64)  # neither has that image
        down = f"127.0.0.1:{free_port()}/team/app:there"  # nothing listens there
        assert check(down, here)
        with pytest.raises(StepError, match="could not be reached"):
            check(down, "sha256:" + "b" * 64)
        engine.seen.clear()
        assert check("team/app:1", here)
        assert engine.seen == ["/images/team/app:1/json"]  # Docker Hub was not asked
