"""The engine API over its socket (steps/_docker_api.py) and the client configuration's logins
(steps/_docker_registry.configured_login), each against what the Docker SDK gives."""

from __future__ import annotations

import base64
import json
import os
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from buildsys.steps import _docker_api
from buildsys.steps._docker_api import EngineError, Lookups, address, engine_for
from buildsys.steps._docker_engine import base_image_id, image_id, images_changed
from buildsys.steps._docker_registry import configured_login

from buildsys.step import BuildScope, Context
from tests.services.serving import served
from tests.services.waiting import wait_for


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "unix:///var/run/docker.sock"),
    ({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}, "unix:///run/user/1000/docker.sock"),
    ({"DOCKER_HOST": "tcp://10.0.0.5:2376"}, "tcp://10.0.0.5:2376"),
    ({"DOCKER_HOST": "tcp://dockerhost"}, "tcp://dockerhost:2375"),
    ({"DOCKER_HOST": "tcp://[::1]:2375"}, "tcp://[::1]:2375"),
    ({"DOCKER_HOST": "tcp://10.0.0.5:2376", "DOCKER_TLS_VERIFY": "1"}, None),  # TLS: the SDK's
    ({"DOCKER_HOST": "tcp://10.0.0.5:2376", "DOCKER_CERT_PATH": "/certs"}, None),
    ({"DOCKER_HOST": "ssh://me@host"}, None),
    ({"DOCKER_HOST": "npipe:////./pipe/docker_engine"}, None),
    ({"DOCKER_HOST": "tcp://host:notaport"}, None),
])
def test_the_engine_is_the_one_the_sdk_would_use(env: dict[str, str], expected: str | None) -> None:
    assert address(env) == expected


@pytest.mark.docker
def test_image_ids_are_the_sdks(docker_client: Any, base_image: str) -> None:
    engine = engine_for(dict(os.environ))  # the suite's engine, as docker_client found it
    assert engine is not None
    assert engine.image_id(base_image) == docker_client.images.get(base_image).id
    assert engine.image_id(f"{base_image}-absent-{threading.get_ident()}") is None
    assert engine.image_id(docker_client.images.get(base_image).id) == docker_client.images.get(base_image).id


def test_an_engine_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    engine = _docker_api.Engine(f"unix://{tmp_path}/docker.sock")
    with pytest.raises(EngineError) as err:
        engine.image_id("python:3.11")
    assert err.value.message.startswith(f"cannot reach the Docker engine at unix://{tmp_path}/docker.sock: ")
    assert err.value.hint == "start dockerd or set DOCKER_HOST"


class _UnixEngine(socketserver.ThreadingUnixStreamServer):
    """An engine stand-in on a Unix socket: answers every GET with the image's id; `drop` the
    next request (read, then the connection closed without an answer)."""

    daemon_threads = True

    def __init__(self, path: str) -> None:
        super().__init__(path, _EngineHandler)
        self.connections, self.seen, self.drop = 0, [], False


class _EngineHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _UnixEngine

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        if self.server.drop:
            self.server.drop, self.close_connection = False, True
            return
        body = json.dumps({"Id": "sha256:" + "a" * 64}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_the_engine_socket_keeps_its_connection_and_replaces_one_the_engine_closed(tmp_path: Path) -> None:
    path = str(tmp_path / "engine.sock")
    with served(_UnixEngine(path), poll_interval=0.02) as server:
        engine = _docker_api.Engine(f"unix://{path}")
        assert engine.image_id("app:1") == engine.image_id("app:2") == "sha256:" + "a" * 64
        assert server.connections == 1  # kept alive
        server.drop = True  # closed while this request was on its way: a GET is asked again
        assert engine.image_id("app:3") == "sha256:" + "a" * 64
        assert (server.connections, server.seen) == (2, ["/images/app:1/json", "/images/app:2/json",
                                                        "/images/app:3/json", "/images/app:3/json"])


class _TcpEngine(socketserver.ThreadingTCPServer):
    """The engine stand-in on loopback TCP (DOCKER_HOST=tcp://…)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EngineHandler)
        self.connections, self.seen, self.drop = 0, [], False


def test_an_engine_on_tcp_is_asked_without_the_idna_codec() -> None:
    """The engine's ASCII host name goes to getaddrinfo as bytes (encodings.idna, stringprep and
    unicodedata are not imported for it), on one kept-alive connection."""
    with served(_TcpEngine(), poll_interval=0.02) as server:
        port = server.server_address[1]
        code = ("import sys\nfrom buildsys.steps._docker_api import Engine\n"
                f"engine = Engine('tcp://127.0.0.1:{port}')\n"
                "print(engine.image_id('app:1'), engine.image_id('app:2'), 'encodings.idna' in sys.modules)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout.split(), done.stderr) == (0, ["sha256:" + "a" * 64] * 2 + ["False"], "")
        assert (server.connections, server.seen) == (1, ["/images/app:1/json", "/images/app:2/json"])


class _ScriptedEngine(socketserver.ThreadingUnixStreamServer):
    """Answers each request with the next reply of `replies`, written in the pieces given (a piece
    None: the connection is closed there); records each request's head and each connection."""

    daemon_threads = True

    def __init__(self, path: str, replies: list[list[bytes | None]]) -> None:
        super().__init__(path, _ScriptedHandler)
        self.replies, self.heads, self.connections = replies, [], 0


class _ScriptedHandler(socketserver.StreamRequestHandler):
    server: _ScriptedEngine

    def handle(self) -> None:
        self.server.connections += 1
        while self.server.replies:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = self.rfile.readline()
                if not line:
                    return
                head += line
            self.server.heads.append(head)
            for piece in self.server.replies.pop(0):
                if piece is None:
                    return
                self.wfile.write(piece)
                self.wfile.flush()


_ID = json.dumps({"Id": "sha256:" + "b" * 64}).encode()
_CHUNKED = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"%x\r\n%s\r\n" % (10, _ID[:10]), b"%x\r\n%s\r\n" % (len(_ID) - 10, _ID[10:]), b"0\r\n\r\n"]
_LENGTH = [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(_ID), _ID[:7]), _ID[7:]]


@pytest.mark.parametrize(("replies", "connections"), [
    ([_CHUNKED, _CHUNKED], 1),  # chunks (Go's engine chunks a reply longer than 2 KB), kept alive
    ([_LENGTH, _LENGTH], 1),  # a length, the body in two pieces
    ([[b"HTTP/1.1 100 Continue\r\n\r\n", *_LENGTH]] * 2, 1),  # an informational reply first
    ([[b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_ID), _ID), None]] * 2, 2),
    ([[b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(_ID), _ID), None]] * 2, 2),  # 1.0: closed
    ([[b"HTTP/1.1 200 OK\r\n\r\n", _ID, None]] * 2, 2),  # no length, no chunks: the body ends with the stream
])
def test_replies_are_read_however_the_engine_frames_them(tmp_path: Path, replies: list[list[bytes | None]],
                                                         connections: int) -> None:
    path = str(tmp_path / "engine.sock")
    with served(_ScriptedEngine(path, replies), poll_interval=0.02) as server:
        engine = _docker_api.Engine(f"unix://{path}")
        assert engine.image_id("app:1") == engine.image_id("app:2") == "sha256:" + "b" * 64
        assert server.connections == connections
        assert server.heads == [b"GET /images/app:1/json HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: identity\r\n\r\n",
                                b"GET /images/app:2/json HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: identity\r\n\r\n"]


def test_a_missing_image_and_an_engine_error_are_told_apart(tmp_path: Path) -> None:
    path = str(tmp_path / "engine.sock")
    missing = json.dumps({"message": "No such image: app:1"}).encode()
    failing = json.dumps({"message": "the engine is unwell"}).encode()
    replies: list[list[bytes | None]] = [[b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(missing), missing)],
                                         [b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s" % (len(failing), failing)]]
    with served(_ScriptedEngine(path, replies), poll_interval=0.02):
        engine = _docker_api.Engine(f"unix://{path}")
        assert engine.image_id("app:1") is None
        with pytest.raises(EngineError) as err:
            engine.image_id("app:2")
        assert err.value.message == "Docker engine error while looking up image app:2: the engine is unwell"


@pytest.mark.parametrize(("reply", "reason"), [
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", None], "the engine's reply was cut short"),
    ([_CHUNKED[0], _CHUNKED[1], None], "the engine's reply was cut short"),
    ([b"SSH-2.0-OpenSSH_9.6\r\n", None], "the engine's reply is not HTTP: "),
])
def test_a_reply_that_cannot_be_read_is_a_clear_error_never_asked_again(tmp_path: Path, reply: list[bytes | None],
                                                                      reason: str) -> None:
    path = str(tmp_path / "engine.sock")
    with served(_ScriptedEngine(path, [reply, _LENGTH]), poll_interval=0.02) as server:
        engine = _docker_api.Engine(f"unix://{path}")
        with pytest.raises(EngineError) as err:
            engine.image_id("app:1")
        assert err.value.message.startswith(f"cannot reach the Docker engine at unix://{path}: {reason}")
        assert len(server.heads) == 1  # a request the engine may have answered is not made twice


def test_asking_the_engine_imports_neither_http_client_nor_ssl(tmp_path: Path) -> None:
    """What a fresh `plan` pays for its one question to the engine: no email package, no ssl."""
    path = str(tmp_path / "engine.sock")
    with served(_ScriptedEngine(path, [_CHUNKED]), poll_interval=0.02):
        code = ("import sys\nfrom buildsys.steps._docker_api import Engine\n"
                f"print(Engine('unix://{path}').image_id('app:1'), sorted({{'http.client', 'ssl', 'email'}} & set(sys.modules)))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout.split(), done.stderr) == (0, ["sha256:" + "b" * 64, "[]"], "")


def test_a_request_the_engine_could_not_read_is_refused_before_it_is_sent() -> None:
    conn = _docker_api._Connection(lambda: pytest.fail("no socket is opened"), "localhost")  # type: ignore[arg-type,return-value]
    for url in ("/images/a b/json", "/images/a\r\nX: 1/json", "images/x"):
        with pytest.raises(ValueError):
            conn.request("GET", url)
    with pytest.raises(ValueError):
        conn.request("GET", "/x", headers={"X-A": "1\r\nX-B: 2"})
    with pytest.raises(ValueError):
        conn.request("HEAD", "/x")


def test_a_base_image_id_is_asked_once_per_build_until_this_process_changes_an_image(tmp_path: Path) -> None:
    path = str(tmp_path / "engine.sock")
    with served(_UnixEngine(path), poll_interval=0.02) as server:
        build = BuildScope()

        def ctx(scope: BuildScope) -> Context:
            return Context(root=tmp_path, cwd=tmp_path, env={"DOCKER_HOST": f"unix://{path}"}, build=scope)

        found = "sha256:" + "a" * 64
        assert base_image_id(ctx(build), "base:1") == base_image_id(ctx(build), "base:1") == found  # two builds' keys
        assert base_image_id(ctx(build), "base:2") == found
        assert server.seen == ["/images/base:1/json", "/images/base:2/json"]
        assert base_image_id(ctx(BuildScope()), "base:1") == found  # the next build asks again
        assert image_id(ctx(build), "base:1") == found  # a check asks the engine every time
        images_changed()  # a build here made or tagged an image: asked again in this build too
        assert base_image_id(ctx(build), "base:1") == base_image_id(ctx(build), "base:1") == found
        assert server.seen == ["/images/base:1/json", "/images/base:2/json"] + ["/images/base:1/json"] * 3


def _waiting(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "wait":
            return True
        frame = frame.f_back
    return False


def test_identical_lookups_at_the_same_moment_share_one_request() -> None:
    lookups = Lookups()
    asked: list[str] = []
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        asked.append("leader")
        started.set()
        release.wait(30)
        return "sha256:one"

    results: dict[str, str | None] = {}
    leader = threading.Thread(target=lambda: results.update(leader=lookups.get("python", slow)))
    leader.start()
    wait_for(started.is_set, 30, "the first lookup to start")
    joiner = threading.Thread(target=lambda: results.update(joiner=lookups.get("python", lambda: "sha256:two")))
    joiner.start()
    wait_for(lambda: _waiting(joiner), 30, "the second lookup to wait on the first")
    release.set()
    leader.join(30)
    joiner.join(30)
    assert results == {"leader": "sha256:one", "joiner": "sha256:one"} and asked == ["leader"]
    # nothing is kept once answered: the next lookup asks the engine
    assert lookups.get("python", lambda: "sha256:three") == "sha256:three"


def test_a_lookup_after_this_process_changed_an_image_does_not_join_an_older_one() -> None:
    lookups = Lookups()
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(30)
        return "sha256:before"

    leader = threading.Thread(target=lambda: lookups.get("base", slow))
    leader.start()
    wait_for(started.is_set, 30, "the first lookup to start")
    lookups.changed()  # e.g. a build here tagged `base` meanwhile
    assert lookups.get("base", lambda: "sha256:after") == "sha256:after"
    release.set()
    leader.join(30)


def _config(folder: Path, data: dict[str, Any]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(data))
    return {"DOCKER_CONFIG": str(folder)}


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_logins_are_read_from_the_client_configuration_as_the_sdk_reads_them(tmp_path: Path) -> None:
    import docker.auth

    env = _config(tmp_path / "c", {"auths": {
        "registry.example.com:5000": {"auth": _auth("ci", "pw:with:colons")},
        "https://index.docker.io/v1/": {"auth": _auth("hub", "hubpw")},
        "http://legacy.example.com/v1/": {"auth": _auth("old", "oldpw")},
        "token.example.com": {"identitytoken": "tok"},
        "empty.example.com": {},
    }})
    for registry in ("registry.example.com:5000", "docker.io", "index.docker.io", "legacy.example.com",
                     "token.example.com", "empty.example.com", "other.example.com"):
        sdk = docker.auth.load_config(config_path=str(tmp_path / "c" / "config.json")).resolve_authconfig(registry)
        expected = (sdk["username"], sdk["password"]) if sdk and sdk.get("username") and sdk.get("password") else None
        assert configured_login(env, registry) == expected, registry
    assert configured_login(env, "registry.example.com:5000") == ("ci", "pw:with:colons")


def test_a_credential_helper_is_left_to_the_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buildsys.steps import _docker_registry

    env = _config(tmp_path / "c", {"auths": {"r.example.com": {}}, "credsStore": "pass"})
    seen: list[str] = []
    monkeypatch.setattr(_docker_registry, "_sdk_login", lambda e, path, registry: seen.append(path) or ("u", "p"))
    assert configured_login(env, "r.example.com") == ("u", "p")
    assert seen == [str(tmp_path / "c" / "config.json")]
