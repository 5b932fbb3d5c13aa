"""Tokens: made by the CLI, kept hashed, scoped, required off loopback, never logged; the client's
messages when the token is wrong or the server is unreachable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from buildsys.errors import NotFoundError
from buildsys.server.auth import Authenticator, TokenStore, database_for
from buildsys.server.serve import is_loopback
from buildsys.store.http import AuthenticationError, HttpStore, ServerUnreachableError
from tests.server.running import run_cli, server_process
from tests.services.net import free_port
from tests.services.waiting import wait_for

API = "/api/v1"


def create_token(db: Path, scope: str, cwd: Path) -> str:
    result = run_cli("server", "token", "create", "--scope", scope, "--db", str(db), cwd=cwd)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    token_id = lines[0].split("_")[1]
    assert result.stderr == f"token {token_id} (scope {scope}) created; it is shown only this once\n"
    return lines[0]


def test_tokens_are_stored_hashed_and_scoped(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    token = create_token(db, "worker", tmp_path)
    prefix, token_id, secret = token.split("_", 2)
    assert prefix == "bst" and len(token_id) == 12 and len(secret) >= 40
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, salt, digest, scope FROM server_tokens").fetchall()
    assert [(r[0], r[3]) for r in rows] == [(token_id, "worker")]
    assert secret not in rows[0][1] + rows[0][2]
    assert secret.encode() not in db.read_bytes()
    tokens = TokenStore(database_for(str(db)))
    found = tokens.verify(token)
    assert found is not None and (found.id, found.scope) == (token_id, "worker")
    assert tokens.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert tokens.verify(f"bst_{token_id}") is None
    assert tokens.verify("Bearer nonsense") is None
    listed = run_cli("server", "token", "ls", "--db", str(db), cwd=tmp_path)
    assert listed.stdout == f"{token_id}  worker\n"


def test_unknown_scope_is_refused(tmp_path: Path) -> None:
    result = run_cli(
        "server", "token", "create", "--scope", "root", "--db", str(tmp_path / "s.db"), cwd=tmp_path
    )
    assert result.returncode == 1
    assert (
        "Invalid value for '--scope': 'root' is not one of 'read', 'apply', 'worker', 'cache', 'admin'."
        in result.stderr
    )


def test_scopes_decide_what_a_token_may_do(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    tokens = {scope: create_token(db, scope, tmp_path) for scope in ("read", "apply", "worker", "cache", "admin")}
    with server_process(str(db), tmp_path, extra=["--auth"]) as server:

        def status(method: str, path: str, scope: str | None, body: object = None) -> int:
            headers = {"Authorization": f"Bearer {tokens[scope]}"} if scope else {}
            return httpx.request(
                method, server.url + path, json=body, headers=headers, timeout=30
            ).status_code

        apply_body = {"changes": [], "expected_serial": None}
        claim = {"pool": "p", "worker": "w"}
        ckey = "0123456789abcdef0123456789abcdef"
        entry = {"format": 1, "key": ckey, "writer": "w", "mac": "0" * 64, "payload": "{}"}
        cache = f"{API}/cache/{ckey}"
        table = {
            ("GET", f"{API}/serial", None): 401,
            ("GET", f"{API}/serial", "read"): 200,
            ("POST", f"{API}/apply", "read"): 403,
            ("POST", f"{API}/apply", "worker"): 403,
            ("POST", f"{API}/apply", "apply"): 200,
            ("POST", f"{API}/runs/claim", "apply"): 403,
            ("POST", f"{API}/runs/claim", "worker"): 200,
            ("GET", f"{API}/export", "apply"): 403,
            ("GET", f"{API}/export", "admin"): 200,
            ("POST", f"{API}/apply", "admin"): 200,
            ("GET", cache, None): 401,
            ("GET", cache, "worker"): 404,  # any token reads the shared cache (nothing stored yet)
            ("PUT", cache, "read"): 403,
            ("PUT", cache, "apply"): 403,
            ("PUT", cache, "cache"): 200,  # only `cache` (and admin) write it
            ("POST", f"{API}/apply", "cache"): 403,
            ("DELETE", f"{API}/runs/x", "read"): 403,
            ("DELETE", f"{API}/runs/x", "worker"): 403,
            ("DELETE", f"{API}/runs/x", "apply"): 404,  # allowed; no such run
            ("POST", f"{API}/runs/x/mark", "worker"): 403,
            ("POST", f"{API}/runs/x/mark", "apply"): 404,
            ("GET", "/healthz", None): 200,
            ("GET", f"{API}/openapi.json", None): 200,
        }
        bodies = {f"{API}/apply": apply_body, f"{API}/runs/claim": claim, cache: entry, f"{API}/runs/x/mark": {"state": "FAILED"}}
        seen = {key: status(key[0], key[1], key[2], bodies.get(key[1])) for key in table}
        assert seen == table
        r = httpx.get(server.url + f"{API}/serial", headers={"Authorization": "Bearer bst_000000000000_nope"})
        assert r.json() == {
            "error": {
                "code": "unauthorized",
                "message": "a valid bearer token is required (Authorization: Bearer <token>)",
            }
        }
        assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.post(
            server.url + f"{API}/apply",
            json=apply_body,
            headers={"Authorization": f"Bearer {tokens['read']}"},
        )
        assert r.json() == {
            "error": {"code": "forbidden", "message": "this token has scope 'read'; this call needs 'apply'"}
        }
        output = server.output()
    assert "GET /api/v1/serial HTTP/1.1" in output  # the access log is on…
    for token in tokens.values():  # …and still shows no token, not even the failed ones
        assert token not in output and token.split("_", 2)[2] not in output


def test_client_takes_the_token_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "server.db"
    token = create_token(db, "apply", tmp_path)
    with server_process(str(db), tmp_path, extra=["--auth"]) as server:
        monkeypatch.setenv("BUILDSYS_TOKEN", token)
        with HttpStore(server.url) as store:
            assert store.serial() == 0
            with pytest.raises(NotFoundError):
                store.get_run("missing")
        monkeypatch.setenv("BUILDSYS_TOKEN", "bst_123456789abc_wrong")
        with HttpStore(server.url) as store, pytest.raises(AuthenticationError) as info:
            store.serial()
        assert info.value.render() == (
            f"error: the buildsys server at {server.url} refused the request: a valid bearer token is required "
            "(Authorization: Bearer <token>)\n"
            "  hint: set BUILDSYS_TOKEN to a token made with `buildsys server token create`"
        )


def test_revoked_tokens_stop_working(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    token = create_token(db, "read", tmp_path)
    with server_process(str(db), tmp_path, extra=["--auth"]) as server:
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(server.url + f"{API}/serial", headers=headers).status_code == 200
        token_id = token.split("_")[1]
        result = run_cli("server", "token", "revoke", token_id, "--db", str(db), cwd=tmp_path)
        assert (result.returncode, result.stdout) == (0, f"token {token_id} revoked\n")
        wait_for(
            lambda: httpx.get(server.url + f"{API}/serial", headers=headers).status_code == 401,
            15,
            "the server to refuse the revoked token (cache of 5 s)",
        )
    again = run_cli("server", "token", "revoke", token_id, "--db", str(db), cwd=tmp_path)
    assert again.returncode == 1
    assert (
        again.stderr
        == f"error: no active token with id '{token_id}'\n  hint: see `buildsys server token ls`\n"
    )


def test_auth_is_required_off_loopback(tmp_path: Path) -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2", "0.0.0.0", "10.0.0.1", "example.org")] == [
        True, True, True, True, False, False, False,
    ]  # fmt: skip
    port = free_port()
    # no token yet: refuses before binding anything (so this never listens off loopback)
    result = run_cli(
        "server", "start", "--host", "0.0.0.0", "--port", str(port), "--db", "s.db", cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.endswith(
        "error: auth is required on 0.0.0.0 but the database has no token yet\n"
        "  hint: create one first: buildsys server token create --scope admin --db s.db\n"
    )


def test_authenticator_caches_only_good_tokens(tmp_path: Path) -> None:
    tokens = TokenStore(database_for(str(tmp_path / "s.db")))
    _, secret = tokens.create("admin")
    auth = Authenticator(tokens)
    assert auth.check(None) is None
    assert auth.check(f"Basic {secret}") is None
    good = auth.check(f"Bearer {secret}")
    assert good is not None and good.allows("worker") and good.allows("apply") and good.allows("read")
    _, read_secret = tokens.create("read")
    read = auth.check(f"Bearer {read_secret}")
    assert read is not None and read.allows("read") and not read.allows("apply") and not read.allows("admin")


def test_unreachable_server_is_one_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with HttpStore(url, retries=1) as store, pytest.raises(ServerUnreachableError) as info:
        store.serial()
    text = info.value.render()
    assert text.startswith(f"error: the buildsys server at {url} is unreachable: ")
    assert text.endswith(
        "  hint: check that `buildsys server start` runs there and that --state / BUILDSYS_STATE is right"
    )
