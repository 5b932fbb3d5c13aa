"""buildsys.sharedcache.http, the kept-alive client of the shared cache's server backend and of the
registry checks, against small local HTTP servers (127.0.0.1)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from buildsys.sharedcache.http import Client, Pool, RequestError
from tests.services.net import free_port

pytestmark = pytest.mark.unit


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, redirect_to: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.redirect_to = redirect_to
        self.connections = 0
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # (method, target, headers)
        self.lock = threading.Lock()
        self.close_next = False

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        with self.server.lock:
            self.server.seen.append((self.command, self.path, dict(self.headers)))
            close, self.server.close_next = self.server.close_next, False
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/moved") and self.server.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to + "/landed")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = b"echo:" + self.path.encode() + b":" + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        if close:
            self.close_connection = True

    do_GET = do_HEAD = do_PUT = _answer


@contextmanager
def _serving(redirect_to: str | None = None) -> Iterator[_Server]:
    server = _Server(redirect_to)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_requests_from_many_threads_share_kept_alive_connections() -> None:
    with _serving() as server:
        pool = Pool(server.origin, timeout=10, idle=4)
        with ThreadPoolExecutor(4) as threads:
            replies = list(threads.map(lambda n: pool.request("GET", f"/k/{n}"), range(40)))
        assert [r.data for r in replies] == [f"echo:/k/{n}:".encode() for n in range(40)]
        assert server.connections <= 4
        put = pool.request("PUT", "/k/x", body=b"payload", headers={"Content-Type": "application/json"})
        assert (put.status, put.data) == (200, b"echo:/k/x:payload")
        assert pool.request("HEAD", "/k/y").data == b""


def test_a_connection_the_server_closed_is_replaced() -> None:
    with _serving() as server:
        pool = Pool(server.origin, timeout=10)
        server.close_next = True  # answered, then closed: the pool must not reuse it
        assert pool.request("GET", "/a").status == 200
        assert pool.request("GET", "/b").data == b"echo:/b:"
        assert server.connections == 2


def test_nothing_listening_is_a_connect_error() -> None:
    pool = Pool(f"http://127.0.0.1:{free_port()}", timeout=10)
    with pytest.raises(RequestError) as err:
        pool.request("GET", "/")
    assert err.value.kind == "ConnectError"
    assert str(err.value).startswith("ConnectError: [Errno ")


def test_redirects_are_followed_and_credentials_stay_with_their_origin() -> None:
    with _serving() as elsewhere, _serving(redirect_to=None) as home:
        home.redirect_to = elsewhere.origin
        client = Client(timeout=10)
        reply = client.request("GET", f"{home.origin}/moved", headers={"Authorization": "Bearer t", "Accept": "x"})
        assert (reply.status, reply.data) == (200, b"echo:/landed:")
        assert home.seen[-1][2]["Authorization"] == "Bearer t"
        landed = elsewhere.seen[-1][2]
        assert "Authorization" not in landed and landed["Accept"] == "x"
        assert client.request("GET", f"{home.origin}/moved", redirects=0).status == 302


def test_a_plain_http_proxy_gets_the_absolute_url_and_its_login() -> None:
    with _serving() as proxy:
        pool = Pool("http://registry.invalid:5000", timeout=10,
                    proxy=f"http://user:p%40ss@127.0.0.1:{proxy.server_address[1]}")
        assert pool.request("GET", "/v2/").status == 200
        method, target, headers = proxy.seen[-1]
        assert (method, target) == ("GET", "http://registry.invalid:5000/v2/")
        assert headers["Proxy-Authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss
