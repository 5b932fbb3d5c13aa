"""buildsys.sharedcache.http, the kept-alive client of the shared cache's server backend and of the
registry checks, against small local HTTP servers (127.0.0.1)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from buildsys.sharedcache.http import Client, Pool, RequestError
from tests.services.net import free_port
from tests.services.require import unavailable
from tests.services.serving import served

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
        self.modes: list[str] = []  # what the next requests get: drop | close-silently | stall
        self.closed = 0  # connections this server has closed
        self.release = threading.Event()  # a stalled request is answered once set

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

    def finish(self) -> None:
        super().finish()
        with self.server.lock:
            self.server.closed += 1

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        with self.server.lock:
            self.server.seen.append((self.command, self.path, dict(self.headers)))
            close, self.server.close_next = self.server.close_next, False
            mode = self.server.modes.pop(0) if self.server.modes else ""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if mode == "drop":  # read, then closed without an answer (processed or not: the client cannot tell)
            self.close_connection = True
            return
        if mode == "stall":
            self.server.release.wait(30)
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
        if close or mode == "close-silently":  # silently: the reply says nothing of it
            self.close_connection = True

    do_GET = do_HEAD = do_PUT = do_POST = _answer


@contextmanager
def _serving(redirect_to: str | None = None) -> Iterator[_Server]:
    server = _Server(redirect_to)
    with served(server):
        try:
            yield server
        finally:
            server.release.set()  # a request held open must end before the server can shut down


def test_requests_from_many_threads_share_kept_alive_connections() -> None:
    with _serving() as server:
        pool = Pool.to(server.origin, timeout=10, idle=4)
        with ThreadPoolExecutor(4) as threads:
            replies = list(threads.map(lambda n: pool.request("GET", f"/k/{n}"), range(40)))
        assert [r.data for r in replies] == [f"echo:/k/{n}:".encode() for n in range(40)]
        assert server.connections <= 4
        put = pool.request("PUT", "/k/x", body=b"payload", headers={"Content-Type": "application/json"})
        assert (put.status, put.data) == (200, b"echo:/k/x:payload")
        assert pool.request("HEAD", "/k/y").data == b""


def test_a_connection_the_server_closed_is_replaced() -> None:
    with _serving() as server:
        pool = Pool.to(server.origin, timeout=10)
        server.close_next = True  # answered, then closed: the pool must not reuse it
        assert pool.request("GET", "/a").status == 200
        assert pool.request("GET", "/b").data == b"echo:/b:"
        assert server.connections == 2


def test_only_an_idempotent_request_on_a_kept_alive_connection_the_server_closed_is_sent_again() -> None:
    with _serving() as server:
        pool = Pool.to(server.origin, timeout=10)
        assert pool.request("GET", "/a").status == 200  # its connection is kept
        server.modes = ["drop"]
        assert pool.request("GET", "/b").data == b"echo:/b:"  # sent again on a new connection
        assert [target for _, target, _ in server.seen].count("/b") == 2
        assert server.connections == 2
        for method in ("PUT", "POST"):
            server.modes = ["drop"]
            if method == "PUT":  # idempotent: again
                assert pool.request(method, "/put", body=b"x").status == 200
            else:  # the server may have acted on it: never twice
                with pytest.raises(RequestError) as err:
                    pool.request(method, "/post", body=b"x")
                assert err.value.kind == "RemoteDisconnected"
        assert [(m, t) for m, t, _ in server.seen if t in ("/put", "/post")] == [
            ("PUT", "/put"), ("PUT", "/put"), ("POST", "/post")]


def test_a_new_connection_closed_or_a_timeout_is_never_retried() -> None:
    with _serving() as server:
        server.modes = ["drop"]
        with pytest.raises(RequestError) as err:
            Pool.to(server.origin, timeout=10).request("GET", "/new")  # on a new connection: the server's answer
        assert err.value.kind == "RemoteDisconnected"
        pool = Pool.to(server.origin, timeout=0.2)
        assert pool.request("GET", "/kept").status == 200
        server.modes = ["stall"]
        with pytest.raises(RequestError) as err:
            pool.request("GET", "/slow")  # kept alive, but the server may be working on it
        assert err.value.kind == "Timeout"
        assert [target for _, target, _ in server.seen] == ["/new", "/kept", "/slow"]


def test_an_idle_connection_the_server_closed_is_not_used_even_for_a_post() -> None:
    from tests.services.waiting import wait_for

    with _serving() as server:
        pool = Pool.to(server.origin, timeout=10)
        server.modes = ["close-silently"]
        assert pool.request("GET", "/a").status == 200  # kept: nothing said the server would close it
        wait_for(lambda: server.closed == 1, 10, "the server to close the connection")
        assert pool.request("POST", "/p", body=b"once").data == b"echo:/p:once"
        assert (server.connections, [t for _, t, _ in server.seen]) == (2, ["/a", "/p"])


def test_nothing_listening_is_a_connect_error() -> None:
    pool = Pool.to(f"http://127.0.0.1:{free_port()}", timeout=10)
    with pytest.raises(RequestError) as err:
        pool.request("GET", "/")
    assert err.value.kind == "ConnectError"
    assert str(err.value).startswith("ConnectError: [Errno ")


def test_an_ascii_host_is_resolved_without_the_idna_codec() -> None:
    """A plain-HTTP request gives getaddrinfo its ASCII host name as bytes: a restored build that
    speaks only plain HTTP does not import encodings.idna (with stringprep and unicodedata) for it."""
    with _serving() as server:
        code = ("import sys\nfrom buildsys.sharedcache.http import Client\n"
                f"reply = Client(timeout=10).request('GET', '{server.origin}/x')\n"
                "print(reply.status, reply.data.decode(), 'encodings.idna' in sys.modules)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.split(), done.stderr) == (0, ["200", "echo:/x:", "False"], "")


def test_a_host_name_the_resolver_refuses_is_a_connect_error() -> None:
    """An empty label, which the idna codec refused with a UnicodeError out of the request, is
    refused by the resolver: no answer, as for any name that does not resolve."""
    with pytest.raises(RequestError) as err:
        Pool.to("http://registry..invalid:5000", timeout=10).request("GET", "/v2/")
    assert err.value.kind == "ConnectError"


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
        pool = Pool.to("http://registry.invalid:5000", timeout=10,
                    proxy=f"http://user:p%40ss@127.0.0.1:{proxy.server_address[1]}")
        assert pool.request("GET", "/v2/").status == 200
        method, target, headers = proxy.seen[-1]
        assert (method, target) == ("GET", "http://registry.invalid:5000/v2/")
        assert headers["Proxy-Authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is not installed (needed for the https test server's certificate)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   capture_output=True, check=True)
    return cert, key


class _Tunnel(socketserver.ThreadingTCPServer):
    """A CONNECT proxy: records each CONNECT request, then relays bytes both ways."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TunnelHandler)
        self.seen: list[list[bytes]] = []


class _TunnelHandler(socketserver.StreamRequestHandler):
    server: _Tunnel

    def handle(self) -> None:
        head = [self.rfile.readline()]
        while head[-1] not in (b"\r\n", b""):
            head.append(self.rfile.readline())
        self.server.seen.append(head)
        host, _, port = head[0].split()[1].decode().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            relay = threading.Thread(target=_pipe, args=(upstream, self.connection), daemon=True)
            relay.start()
            _pipe(self.connection, upstream)
            relay.join(10)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_https_directly_and_through_a_connect_proxy(certificate: tuple[Path, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    from buildsys.sharedcache import http

    cert, key = certificate
    trusting = ssl.create_default_context(cafile=str(cert))  # instead of the system's certificates
    monkeypatch.setattr(http, "_CONTEXT", trusting)
    with _serving() as server, served(_Tunnel()) as tunnel:
        serving_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        serving_tls.load_cert_chain(cert, key)
        server.socket = serving_tls.wrap_socket(server.socket, server_side=True)
        origin = f"https://127.0.0.1:{server.server_address[1]}"
        direct = Pool.to(origin, timeout=10)
        assert direct.request("GET", "/tls").data == b"echo:/tls:"
        through = Pool.to(origin, timeout=10, proxy=f"http://u:p@127.0.0.1:{tunnel.server_address[1]}")
        assert through.request("GET", "/tunnelled").data == b"echo:/tunnelled:"
        assert through.request("GET", "/again").data == b"echo:/again:"  # the same tunnel, kept alive
        connect = tunnel.seen[0]
        assert connect[0].startswith(f"CONNECT 127.0.0.1:{server.server_address[1]} HTTP/1.".encode())
        assert b"Proxy-Authorization: Basic dTpw\r\n" in connect  # u:p
        assert len(tunnel.seen) == 1
        # a certificate nothing vouches for is refused
        monkeypatch.setattr(http, "_CONTEXT", ssl.create_default_context())
        with pytest.raises(RequestError) as err:
            Pool.to(origin, timeout=10).request("GET", "/untrusted")
        assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)
