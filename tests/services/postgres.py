"""A real PostgreSQL 15 server for the tests: a private, temporary cluster on loopback.

``postgres_server`` (session) runs ``initdb`` and ``pg_ctl start`` from ``/usr/lib/postgresql/15/bin``
in a temp dir (as the ``postgres`` OS user via ``runuser`` when the tests run as root), listening on
127.0.0.1 only, on a free port, with password (scram-sha-256) auth and durability switched off for
speed. At session end the server is stopped and its directory deleted.

* ``postgres_url`` (session): ``postgresql://buildsys:<password>@127.0.0.1:<port>/buildsys``.
* ``fresh_postgres_url`` (function): a new, empty database on that server for one test, dropped
  afterwards (connections still open are terminated).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services.net import free_port
from tests.services.require import unavailable

__all__ = ["PostgresServer", "fresh_database", "fresh_postgres_url", "postgres_server", "postgres_url"]

PG_VERSION = "15"
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")
OS_USER = "postgres"
DB_USER = "buildsys"
DB_NAME = "buildsys"
START_ATTEMPTS = 3


@dataclass(frozen=True)
class PostgresServer:
    """A running private cluster."""

    host: str
    port: int
    user: str
    password: str
    database: str
    directory: Path

    def url(self, database: str | None = None) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database or self.database}"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"


def _as_server_user() -> tuple[list[str], int | None, int | None]:
    """Command prefix that runs a PostgreSQL binary as a non-root user, and that user's ids."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        account = pwd.getpwnam(OS_USER)
    except KeyError:
        unavailable(f"running as root and there is no `{OS_USER}` user to run PostgreSQL as")
    runuser = shutil.which("runuser")
    if runuser is None:
        unavailable("running as root and `runuser` (util-linux) is missing to switch to the postgres user")
    return [runuser, "-u", OS_USER, "--"], account.pw_uid, account.pw_gid


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {(done.stdout + done.stderr).strip()}")


def _admin_execute(url: str, statement: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(statement.encode())


def start_postgres() -> Iterator[PostgresServer]:
    """Create and start a cluster (generator: stopped and deleted when closed)."""
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / name).is_file()]
    if missing:
        unavailable(
            f"PostgreSQL {PG_VERSION} is not installed ({', '.join(missing)} missing in {PG_BIN}; "
            "Debian package postgresql)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install 'psycopg[binary]')")
    prefix, uid, gid = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="buildsys-pg-"))
    data = root / "data"
    started = False
    try:
        password = secrets.token_urlsafe(18)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if uid is not None and gid is not None:
            os.chown(root, uid, gid)
            os.chown(pwfile, uid, gid)
        _run(
            [
                *prefix,
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                DB_USER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            "initdb",
        )
        pwfile.unlink()
        log = root / "postgres.log"
        port = 0
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            done = subprocess.run(
                [
                    *prefix,
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    options,
                    "start",
                ],
                capture_output=True,
                text=True,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if done.returncode == 0:
                started = True
                break
            if attempt == START_ATTEMPTS:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(
                    f"pg_ctl start failed {START_ATTEMPTS} times: {done.stdout}{done.stderr}\n{tail}"
                )
        server = PostgresServer("127.0.0.1", port, DB_USER, password, DB_NAME, root)
        _admin_execute(server.url("postgres"), f'CREATE DATABASE "{DB_NAME}"')
        yield server
    finally:
        if started:
            subprocess.run(
                [
                    *prefix,
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                ],
                capture_output=True,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's private PostgreSQL cluster."""
    yield from start_postgres()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """URL of the session's database (shared by every test that asks for it)."""
    return postgres_server.url()


def fresh_database(server: PostgresServer) -> Generator[str, None, None]:
    """Create an empty database and yield its URL; drop it (terminating its connections) on close."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = server.url("postgres")
    _admin_execute(admin, f'CREATE DATABASE "{name}"')
    try:
        yield server.url(name)
    finally:
        _admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a new empty database, dropped after the test."""
    yield from fresh_database(postgres_server)
