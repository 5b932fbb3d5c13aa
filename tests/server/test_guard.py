"""The request guard (buildsys/server/guard.py) against CSRF and DNS-rebinding attempts, on a real
uvicorn over a real SQLite store: what a web page the user visits could send to 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from buildsys.server.app import Settings, create_app
from buildsys.server.guard import GuardPolicy
from buildsys.store.sql import SqlStore
from tests.server.running import ServerProcess, threaded_server
from tests.services.waiting import wait_for

API = "/api/v1"
SETUP = {
    "changes": [
        {"action": "create", "kind": "pool", "name": "local", "spec": {"type": "process"}},
        {"action": "create", "kind": "deployment", "name": "etl/nightly",
         "spec": {"flow_name": "etl", "name": "nightly", "entrypoint": "flows.py:etl", "work_pool_name": "local"}},
    ],
    "expected_serial": 0,
}
EVIL_RUN = b'{"deployment": "etl/nightly", "job_variables": {"command": "touch /tmp/x"}}'


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore.sqlite(tmp_path / "server.db")
    yield s
    s.close()


@pytest.fixture
def url(store: SqlStore) -> Iterator[str]:
    with threaded_server(store) as base:
        r = httpx.post(f"{base}{API}/apply", json=SETUP)
        assert r.status_code == 200, r.text
        yield base


def runs(store: SqlStore) -> list[Any]:
    return list(store.list_runs())


def test_a_text_plain_post_from_a_page_is_refused(url: str, store: SqlStore) -> None:
    # what `fetch(url, {method: "POST", mode: "no-cors", body: ...})` sends: no preflight, text/plain
    for ctype in ("text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = httpx.post(f"{url}{API}/runs", content=EVIL_RUN, headers={"content-type": ctype})
        assert r.status_code == 415, (ctype, r.text)
        assert r.json()["error"]["code"] == "unsupported_media_type"
    r = httpx.post(f"{url}{API}/runs", content=EVIL_RUN, headers={"content-type": ""})
    assert r.status_code == 415
    assert runs(store) == []


def test_a_foreign_origin_is_refused_even_with_a_json_body(url: str, store: SqlStore) -> None:
    evil = {"origin": "http://evil.example", "content-type": "application/json"}
    body = b'{"deployment": "etl/nightly"}'
    assert httpx.post(f"{url}{API}/runs", content=body, headers=evil).status_code == 403
    assert httpx.get(f"{url}{API}/export", headers={"origin": "http://evil.example"}).status_code == 403
    assert httpx.get(f"{url}{API}/export", headers={"origin": "null"}).status_code == 403
    r = httpx.get(f"{url}{API}/export", headers={"sec-fetch-site": "cross-site"})
    assert r.json() == {"error": {"code": "cross_origin", "message": "cross-site requests are refused"}}
    assert runs(store) == []
    # the server's own origin (its UI) is fine
    own = {"origin": url, "content-type": "application/json"}
    assert httpx.post(f"{url}{API}/runs", content=body, headers=own).status_code == 201


def test_dns_rebinding_a_foreign_host_name_is_refused(url: str) -> None:
    port = url.rsplit(":", 1)[1]
    r = httpx.get(f"{url}{API}/export", headers={"host": f"rebind.evil.example:{port}"})
    assert r.status_code == 421
    assert r.json()["error"]["code"] == "wrong_host"
    assert "rebind.evil.example" in r.json()["error"]["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(f"{url}{API}/export", headers={"host": host}).status_code == 200, host
    for bad in ("", "evil.example@127.0.0.1", "127.0.0.1.evil.example", "[::1"):
        assert httpx.get(f"{url}{API}/serial", headers={"host": bad}).status_code == 421, bad


def test_a_redirect_is_built_from_the_servers_own_base_url(url: str) -> None:
    r = httpx.get(f"{url}{API}/serial/", headers={"host": "localhost"})
    assert r.status_code == 307
    assert r.headers["location"] == f"{url}{API}/serial"


def test_a_run_may_not_override_the_command(url: str, store: SqlStore) -> None:
    r = httpx.post(f"{url}{API}/runs", content=EVIL_RUN, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "a run may not override 'command': it is set by the deployment or pool"
    assert runs(store) == []
    ok = httpx.post(f"{url}{API}/runs", json={"deployment": "etl/nightly", "job_variables": {"env": {"A": "1"}}})
    assert ok.status_code == 201


def test_everything_mounted_on_the_app_is_guarded(store: SqlStore) -> None:
    """The Prefect API at /prefect/api and the UI at / sit behind the same guard as /api/v1."""
    import threading

    import uvicorn

    from tests.services.net import free_port

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"got": (await request.body()).decode()})

    app = create_app(store, settings=Settings(housekeeping=False), guard=GuardPolicy.of(("build.internal",)))
    app.router.routes.append(Route("/test-form/action", echo, methods=["POST"]))  # a form page, like the UI's
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 15, "uvicorn to start")
        base = f"http://127.0.0.1:{port}"
        prefect = f"{base}/prefect/api/flow_runs/filter"
        plain = {"content-type": "text/plain"}
        assert httpx.post(prefect, content=b"{}", headers=plain).status_code == 415
        assert httpx.post(prefect, json={}).status_code == 200
        rebound = {"host": f"evil.example:{port}", "content-type": "application/json"}
        assert httpx.post(prefect, content=b"{}", headers=rebound).status_code == 421
        assert httpx.post(prefect, json={}, headers={"host": f"build.internal:{port}"}).status_code == 200
        assert httpx.get(f"{base}/", headers={"host": f"evil.example:{port}"}).status_code == 421
        # a form post: not a JSON endpoint, but a foreign origin is refused all the same
        form = {"content-type": "application/x-www-form-urlencoded"}
        assert httpx.post(f"{base}/test-form/action", content=b"a=1", headers=form).status_code == 200
        cross = {**form, "origin": "http://evil.example"}
        assert httpx.post(f"{base}/test-form/action", content=b"a=1", headers=cross).status_code == 403
        assert _websocket_status(port, origin=f"http://127.0.0.1:{port}") == 101
        assert _websocket_status(port, origin="http://evil.example") == 403
    finally:
        server.should_exit = True
        thread.join(15)


def _websocket_status(port: int, *, origin: str) -> int:
    """The status line of a websocket handshake (101: accepted)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            (
                f"GET /prefect/api/events/in HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
            ).encode()
        )
        head = sock.recv(1024).decode(errors="replace")
    return int(head.split()[1])


def test_server_start_allows_a_configured_name(tmp_path: Path) -> None:
    server = ServerProcess(str(tmp_path / "s.db"), tmp_path, extra=["--allowed-host", "build.internal"])
    try:
        server.wait_ready()
        port = server.port
        assert httpx.get(f"{server.url}{API}/serial", headers={"host": f"build.internal:{port}"}).status_code == 200
        assert httpx.get(f"{server.url}{API}/serial", headers={"host": f"other.internal:{port}"}).status_code == 421
    finally:
        server.stop()
