"""Real git servers on 127.0.0.1 serving bare repositories made in a temp dir.

- ``git_repos``: a :class:`GitRepos` — create bare repositories and push commits to them.
- ``git_daemon``: ``git daemon`` serving them over ``git://`` (read-only, no auth).
- ``git_http``: ``git http-backend`` behind a threaded WSGI server (stdlib ``wsgiref``) over
  ``http://``, requiring HTTP Basic auth with a token (as GitHub does: the token may be the user
  name or the password). Every request is recorded, including the raw Authorization header.
- ``git_https``: the same over ``https://`` with a self-signed certificate made by ``openssl``
  (``ca_file``: point git at it with ``GIT_SSL_CAINFO`` in the client's environment).
- ``git_redirect``: an http server on 127.0.0.1 that answers every request with a 302 to the same
  path on another origin (``localhost``, another port): a git server that serves anyone and records
  every Authorization header it is sent (``git_redirect.target``).
"""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from tests.services.net import free_port, port_open
from tests.services.require import unavailable
from tests.services.waiting import wait_for

__all__ = ["GitDaemon", "GitHttpServer", "GitRedirect", "GitRepos", "git_daemon", "git_http", "git_https",
           "git_redirect", "git_repos"]

GIT = shutil.which("git")


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass
class GitRepos:
    """A folder of bare repositories (``<root>/<name>.git``), each fed from a scratch work tree."""

    root: Path

    def bare(self, name: str) -> Path:
        return self.root / f"{name}.git"

    def create(self, name: str, files: Mapping[str, str], *, branch: str = "main") -> str:
        """Make ``<name>.git`` with one commit holding ``files`` on ``branch``; return the commit."""
        bare = self.bare(name)
        _git("init", "--quiet", "--bare", "--initial-branch", branch, str(bare))
        _git("config", "uploadpack.allowFilter", "true", cwd=bare)
        _git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
        work = self.root / "_work" / name
        _git("init", "--quiet", "--initial-branch", branch, str(work))
        _git("remote", "add", "origin", str(bare), cwd=work)
        return self.commit(name, files, branch=branch, message="initial")

    def commit(
        self,
        name: str,
        files: Mapping[str, str],
        *,
        branch: str = "main",
        message: str = "change",
        delete: Iterable[str] = (),
    ) -> str:
        """Commit ``files`` (path -> text) on ``branch`` and push it; return the new commit."""
        work = self.root / "_work" / name
        heads = _git("branch", "--list", branch, cwd=work)
        has_commits = bool(_git("rev-parse", "--all", cwd=work))
        if has_commits:
            _git("checkout", "--quiet", *([] if heads else ["-b"]), branch, cwd=work)
        for path, text in files.items():
            target = work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        for path in delete:
            (work / path).unlink()
        _git("add", "--all", cwd=work)
        _git("commit", "--quiet", "--allow-empty", "-m", message, cwd=work)
        _git("push", "--quiet", "origin", f"{branch}:refs/heads/{branch}", cwd=work)
        return _git("rev-parse", "HEAD", cwd=work)

    def add_submodule(self, name: str, path: str, sub: str, url: str, *, branch: str = "main") -> str:
        """Add repository ``sub`` as a submodule of ``name`` at ``path``, recorded with ``url``
        (e.g. a server URL) in .gitmodules, and push; return the new commit."""
        work = self.root / "_work" / name
        _git("checkout", "--quiet", branch, cwd=work)
        _git("-c", "protocol.file.allow=always", "submodule", "--quiet", "add", str(self.bare(sub)), path,
             cwd=work)
        _git("config", "--file", ".gitmodules", f"submodule.{path}.url", url, cwd=work)
        _git("add", ".gitmodules", cwd=work)
        _git("commit", "--quiet", "-m", f"add submodule {path}", cwd=work)
        _git("push", "--quiet", "origin", f"{branch}:refs/heads/{branch}", cwd=work)
        return _git("rev-parse", "HEAD", cwd=work)

    def head(self, name: str, branch: str = "main") -> str:
        return _git("rev-parse", f"refs/heads/{branch}", cwd=self.bare(name))


@dataclass
class GitDaemon:
    """``git daemon`` exporting every repository under ``repos.root``."""

    repos: GitRepos
    port: int

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}.git"


@dataclass(frozen=True)
class HttpRequest:
    """One request the http server saw."""

    method: str
    path: str
    authorization: str | None
    status: str


@dataclass
class GitHttpServer:
    """``git http-backend`` over http://127.0.0.1 with token auth; records every request."""

    repos: GitRepos
    port: int
    token: str
    requests: list[HttpRequest] = field(default_factory=list)
    server_log: list[str] = field(default_factory=list)
    scheme: str = "http"
    ca_file: Path | None = None  # the self-signed certificate of an https server
    fail_next: int = 0  # answer this many of the next requests with 503 (a flaky server)
    require_auth: bool = True  # False: serves anyone (and still records what it was sent)

    def url(self, name: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{name}.git"

    def authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[len("Basic ") :]).decode()
        except ValueError:
            return False
        user, _, password = decoded.partition(":")
        return self.token in (user, password)

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        auth = environ.get("HTTP_AUTHORIZATION")
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        if self.fail_next > 0:
            self.fail_next -= 1
            self.requests.append(HttpRequest(method, path, auth, "503"))
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"try again later\n"]
        if self.require_auth and not self.authorized(auth):
            self.requests.append(HttpRequest(method, path, auth, "401"))
            start_response(
                "401 Unauthorized",
                [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Type", "text/plain")],
            )
            return [b"authentication required\n"]
        status, headers, body = self._backend(environ)
        self.requests.append(HttpRequest(method, path, auth, status.split()[0]))
        start_response(status, headers)
        return [body]

    def _backend(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi_env = {
            "PATH": "/usr/bin:/bin",
            "GIT_PROJECT_ROOT": str(self.repos.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "PATH_INFO": environ.get("PATH_INFO", ""),
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "token-user",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.repos.root),
        }
        for key in ("HTTP_GIT_PROTOCOL", "HTTP_CONTENT_ENCODING"):
            if key in environ:
                cgi_env[key] = environ[key]
        if "HTTP_GIT_PROTOCOL" in environ:
            cgi_env["GIT_PROTOCOL"] = environ["HTTP_GIT_PROTOCOL"]
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=cgi_env, capture_output=True, check=False
        )
        if done.stderr:
            self.server_log.append(done.stderr.decode(errors="replace"))
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = done.stdout.partition(b"\n\n")
        status = "200 OK"
        headers: list[tuple[str, str]] = []
        for line in head.decode(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = value.strip()
            elif key:
                headers.append((key.strip(), value.strip()))
        return status, headers, payload


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log: list[str] | None = getattr(self.server, "request_log", None)
        if log is not None:
            log.append(format % args)


def _require_git() -> None:
    if GIT is None:
        unavailable("git is not installed")


@pytest.fixture
def git_repos(tmp_path_factory: pytest.TempPathFactory) -> GitRepos:
    """An empty folder of bare repositories."""
    _require_git()
    root = tmp_path_factory.mktemp("git-repos")
    return GitRepos(root)


@pytest.fixture
def git_daemon(git_repos: GitRepos) -> Iterator[GitDaemon]:
    """``git daemon`` on 127.0.0.1 serving ``git_repos`` over git://."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={git_repos.root}",
            "--informative-errors",
            str(git_repos.root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: proc.poll() is not None or port_open("127.0.0.1", port), 10, "git daemon to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"git daemon exited with status {proc.returncode}")
        yield GitDaemon(git_repos, port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def git_http(git_repos: GitRepos) -> Iterator[GitHttpServer]:
    """``git http-backend`` on http://127.0.0.1 requiring a token (``git_http.token``)."""
    yield from _serve(GitHttpServer(git_repos, 0, token=f"tok-{uuid.uuid4().hex}"))


@pytest.fixture
def git_https(git_repos: GitRepos, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttpServer]:
    """Like ``git_http`` over https://127.0.0.1 with a self-signed certificate (``ca_file``)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is not installed (needed for the https git server's certificate)")
    tls = tmp_path_factory.mktemp("git-tls")
    cert, key = tls / "cert.pem", tls / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=True,
    )
    state = GitHttpServer(git_repos, 0, token=f"tok-{uuid.uuid4().hex}", scheme="https", ca_file=cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    yield from _serve(state, context)


def _serve(server_state: GitHttpServer, tls: ssl.SSLContext | None = None) -> Iterator[GitHttpServer]:
    httpd = make_server(
        "127.0.0.1", 0, server_state.app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.request_log = server_state.server_log  # type: ignore[attr-defined]
    server_state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, name="git-http", daemon=True)
    thread.start()
    try:
        wait_for(lambda: port_open("127.0.0.1", server_state.port), 10, "the git http server to listen")
        yield server_state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@dataclass
class GitRedirect:
    """A server whose every answer is a 302 to ``target``, an open git server on another origin."""

    target: GitHttpServer
    port: int = 0
    requests: list[HttpRequest] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        self.requests.append(HttpRequest(environ["REQUEST_METHOD"], path, environ.get("HTTP_AUTHORIZATION"), "302"))
        location = f"http://localhost:{self.target.port}{path}" + (f"?{query}" if query else "")
        start_response("302 Found", [("Location", location), ("Content-Type", "text/plain")])
        return [b"moved\n"]


@pytest.fixture
def git_redirect(git_repos: GitRepos) -> Iterator[GitRedirect]:
    """A 302 from 127.0.0.1 to an open git server at ``localhost``: credentials must not follow it."""
    for target in _serve(GitHttpServer(git_repos, 0, token="", require_auth=False)):
        yield from _redirecting(GitRedirect(target))


def _redirecting(state: GitRedirect) -> Iterator[GitRedirect]:
    httpd = make_server("127.0.0.1", 0, state.app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, name="git-redirect", daemon=True)
    thread.start()
    try:
        wait_for(lambda: port_open("127.0.0.1", state.port), 10, "the redirecting server to listen")
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
