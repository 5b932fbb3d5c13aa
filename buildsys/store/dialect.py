"""What differs between SQLite and PostgreSQL for the SQL store: connecting, transactions, locks,
placeholders and how driver errors read to a person. Everything else is shared SQL.

SQL is written once with `?` placeholders; `Tx.sql` rewrites it for psycopg (`%s`).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import ConflictError, StateError
from buildsys.sensitive import mask_url

if TYPE_CHECKING:
    from buildsys.store.wakeups import Listener

Row = tuple[Any, ...]

SQLITE_BUSY_TIMEOUT_S = 30.0


class Tx:
    """One open transaction: run statements, get rows back as tuples."""

    def __init__(self, db: Database, cursor: Any) -> None:
        self.db = db
        self.cursor = cursor

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.cursor.execute(self.db.sql(sql), tuple(params))
        if self.cursor.description is None:
            return []
        return list(self.cursor.fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self.run(sql, params)
        return rows[0] if rows else None

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.cursor.executemany(self.db.sql(sql), [tuple(r) for r in rows])

    @property
    def rowcount(self) -> int:
        return int(self.cursor.rowcount)

    def for_update(self, *, skip_locked: bool = False) -> str:
        """The row-lock clause to append to a SELECT (empty on SQLite: the write lock covers all)."""
        return self.db.for_update(skip_locked=skip_locked)

    def for_share(self) -> str:
        """The clause that keeps a read row from being changed or deleted until this transaction ends."""
        return self.db.for_share()

    def lock(self, key: str) -> None:
        """Serialise with every other transaction that locks `key` (until this one ends)."""
        self.db.lock(self, key)


class Database:
    """A connection source for one database, one connection per thread (and per process)."""

    name = "?"
    url = ""
    display_url = ""  # the URL for messages and logs (no password)

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[Any] = []
        self._guard = threading.Lock()
        self._pid = os.getpid()

    # --- per-dialect ----------------------------------------------------------------------
    def sql(self, text: str) -> str:
        return text

    def for_update(self, *, skip_locked: bool = False) -> str:
        return ""

    def for_share(self) -> str:
        return ""

    def lock(self, tx: Tx, key: str) -> None:
        return None

    def _connect(self) -> Any:
        raise NotImplementedError

    def _usable(self, conn: Any) -> bool:
        return True

    def _begin(self, conn: Any, write: bool) -> None:
        raise NotImplementedError

    def translate(self, exc: BaseException) -> StateError | None:
        """A driver error as a message for people, or None when it is a bug."""
        return None

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        """What the driver raises: a ROLLBACK or close on a broken connection fails with one of these."""
        raise NotImplementedError

    def change_token(self) -> object:
        """Something that changes whenever another connection commits work that may be claimable
        (used by waiting claims); None when the dialect cannot tell (then they poll)."""
        return None

    def poll_interval(self) -> float:
        """How often a waiting claim checks `change_token` (or polls, when there is none)."""
        return 0.05

    def notify(self, tx: Tx) -> None:
        """Tell waiting claims (in any process) that this transaction may make runs claimable."""
        return None

    # --- shared ---------------------------------------------------------------------------
    def connection(self) -> Any:
        if os.getpid() != self._pid:  # forked: never touch the parent's connections
            self._local = threading.local()
            self._all = []
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is not None and not self._usable(conn):
            with self._guard, suppress(ValueError):
                self._all.remove(conn)
            conn = None
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._guard:
                self._all.append(conn)
        return conn

    @contextmanager
    def tx(self, *, write: bool = False) -> Iterator[Tx]:
        """A transaction: BEGIN (IMMEDIATE for SQLite writes) … COMMIT, ROLLBACK on any error."""
        conn = self._begun(write)
        cursor = conn.cursor()
        try:
            yield Tx(self, cursor)
            cursor.execute("COMMIT")
        except BaseException as exc:
            with suppress(*self.driver_errors()):  # a broken connection: the error that broke it is raised
                cursor.execute("ROLLBACK")
            problem = self.translate(exc) if isinstance(exc, Exception) else None
            if problem is not None:
                raise problem from exc
            raise
        finally:
            cursor.close()

    def _begun(self, write: bool) -> Any:
        """A connection with a transaction begun; a connection the server dropped while idle is
        replaced once (nothing ran on it yet, so trying again is safe)."""
        for attempt in (1, 2):
            conn = self.connection()
            try:
                self._begin(conn, write)
                return conn
            except Exception as exc:
                if attempt == 1 and not self._usable(conn):
                    continue
                raise self._translated(exc) from exc
        raise AssertionError("unreachable")

    def _translated(self, exc: Exception) -> BaseException:
        return self.translate(exc) or exc

    def close(self) -> None:
        with self._guard:
            conns, self._all = self._all, []
        if os.getpid() != self._pid:
            return
        for conn in conns:
            with suppress(*self.driver_errors()):
                conn.close()
        self._local = threading.local()


def _create_atomically(path: Path) -> None:
    """A new store file appears whole (a SQLite header in WAL mode) or not at all: SQLite would
    create an empty file first, which another process opening the store at that moment (two
    applies at once) must not take for a truncated store."""
    import secrets  # on first use (random, base64: ~1.3 ms of every plan's start)

    temp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.new")
    os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask decides, as for SQLite's own
    try:
        conn = sqlite3.connect(temp)
        try:
            conn.execute("PRAGMA journal_mode = WAL")  # writes the header: the file is a database now
        finally:
            conn.close()
        try:
            os.link(temp, path)
        except FileExistsError:  # another process made it first: use theirs
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(temp, path)
    finally:
        for leftover in (temp, f"{temp}-wal", f"{temp}-shm"):
            with suppress(FileNotFoundError):
                os.unlink(leftover)


class SqliteDatabase(Database):
    """A SQLite file in WAL mode; writers take the lock up front (BEGIN IMMEDIATE)."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.url = f"sqlite:///{path}"
        self.display_url = str(path)
        if path.is_dir():
            raise StateError(
                f"the state store {path} is a directory, not a file",
                hint="point --state at a file such as .buildsys/state.db",
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                _create_atomically(path)
        except OSError as exc:
            raise StateError(f"cannot create the state store {path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            mode = _wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise self._translated(exc) from exc
        except UnicodeDecodeError as exc:  # the header's journal mode is damaged
            raise StateError(
                f"the state store {self.path} is not a readable buildsys store: its header is damaged ({exc.reason})",
                hint="restore it from a `buildsys state export`, or move it away to start afresh",
            ) from exc
        if mode is None or str(mode[0]).lower() != "wal":
            raise StateError(f"the state store {self.path} cannot use WAL mode (journal mode {mode})")
        return conn

    def _begin(self, conn: Any, write: bool) -> None:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def change_token(self) -> object:
        row = self.connection().execute("PRAGMA data_version").fetchone()
        return row[0] if row else None

    def poll_interval(self) -> float:
        return 0.01  # PRAGMA data_version is a cheap in-memory check

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def translate(self, exc: BaseException) -> StateError | None:
        if isinstance(exc, StateError):
            return exc
        if not isinstance(exc, sqlite3.Error):
            return None
        text = str(exc)
        if "Could not decode to UTF-8" in text:  # a byte flipped inside a text column
            return StateError(
                f"the state store {self.path} is damaged: a text column holds bytes that are not UTF-8 "
                f"({text.split(' with text ', 1)[0].removeprefix('Could not decode to UTF-8 ')})",
                hint="restore it from a `buildsys state export`, or move it away to start afresh",
            )
        if isinstance(exc, sqlite3.OperationalError) and text.startswith(("no such column", "no such table")):
            # the schema was migrated to the latest version when the store was opened: a part of it
            # missing now means the file's schema was damaged
            return StateError(
                f"the state store {self.path} is damaged: its schema lacks what this version wrote ({text})",
                hint="restore it from a `buildsys state export`, or move it away to start afresh",
            )
        if "not a database" in text or "malformed" in text or "file is encrypted" in text:
            return StateError(
                f"the state store {self.path} is not a readable buildsys store: {text}",
                hint="restore it from a `buildsys state export`, or move it away to start afresh",
            )
        if isinstance(exc, sqlite3.IntegrityError):
            return StateError(f"the state store refused the write: {text}")
        if "locked" in text or "busy" in text:
            return ConflictError(
                f"the state store {self.path} stayed locked by another process for more than "
                f"{SQLITE_BUSY_TIMEOUT_S:g} s",
                hint="another apply, worker or import holds it; try again",
            )
        if isinstance(exc, sqlite3.OperationalError) and (
            "unable to open" in text or "readonly" in text or "disk" in text
        ):
            return StateError(f"cannot use the state store {self.path}: {text}")
        return None


def _wal(conn: sqlite3.Connection) -> Any:
    """Switch to WAL mode. SQLite answers "database is locked" at once, without waiting, while
    another connection holds the file during its own switch (two processes opening a new store
    together), so this waits here, as the busy timeout would."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    delay = 0.002
    while True:
        try:
            return conn.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if not ("locked" in str(exc) or "busy" in str(exc)) or time.monotonic() > deadline:
                raise
        time.sleep(delay)  # a back-off, not synchronisation: the other side holds the lock briefly
        delay = min(delay * 2, 0.1)


_PLACEHOLDER = re.compile(r"\?")


class PostgresDatabase(Database):
    """PostgreSQL through psycopg 3; row locks (FOR UPDATE [SKIP LOCKED]) and advisory locks."""

    name = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.display_url = redact(url)
        self._sql_cache: dict[str, str] = {}
        self._listen: Listener | None = None
        self._listen_pid = 0
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise StateError(
                "PostgreSQL stores need psycopg",
                hint="install buildsys with the postgres extra: pip install 'buildsys[postgres]'",
            ) from exc

    def sql(self, text: str) -> str:
        out = self._sql_cache.get(text)
        if out is None:
            out = _PLACEHOLDER.sub("%s", text.replace("%", "%%"))
            self._sql_cache[text] = out
        return out

    def for_update(self, *, skip_locked: bool = False) -> str:
        return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"

    def for_share(self) -> str:
        return " FOR SHARE"

    def change_token(self) -> object:
        listener = self._listener()
        return listener.token() if listener is not None else None

    def poll_interval(self) -> float:
        listener = self._listener()
        return 0.01 if listener is not None and listener.healthy else 0.05

    def notify(self, tx: Tx) -> None:
        from buildsys.store.wakeups import CHANNEL

        tx.run(f"NOTIFY {CHANNEL}")

    def _listener(self) -> Listener | None:
        """The store's LISTEN thread, started on first use (and again after a fork)."""
        from buildsys.store.wakeups import Listener

        with self._guard:
            if self._listen is None or self._listen_pid != os.getpid():
                self._listen, self._listen_pid = Listener(self.url.replace("postgres://", "postgresql://", 1)), os.getpid()
                fresh = self._listen
            else:
                fresh = None
        if fresh is not None:
            fresh.wait_ready(2.0)
        return self._listen

    def close(self) -> None:
        with self._guard:
            listener, self._listen = self._listen, None
        if listener is not None and self._listen_pid == os.getpid():
            listener.close()
        super().close()

    def lock(self, tx: Tx, key: str) -> None:
        tx.run("SELECT pg_advisory_xact_lock(?)", (_lock_id(key),))

    def _connect(self) -> Any:
        import psycopg

        url = self.url.replace("postgres://", "postgresql://", 1)
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StateError(
                f"cannot connect to the PostgreSQL store {self.display_url}: {_first_line(exc)}",
                hint="check that the server runs and that the URL, user and password are right",
            ) from exc

    def _usable(self, conn: Any) -> bool:
        return not (conn.closed or conn.broken)  # the server went away: reconnect next time

    def _begin(self, conn: Any, write: bool) -> None:
        conn.execute("BEGIN")

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    def translate(self, exc: BaseException) -> StateError | None:
        import psycopg

        if isinstance(exc, StateError):
            return exc
        if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
            return ConflictError(f"a concurrent change to the store interfered: {_first_line(exc)}")
        if isinstance(exc, psycopg.errors.IntegrityError):
            return StateError(f"the state store refused the write: {_first_line(exc)}")
        if isinstance(exc, psycopg.OperationalError):
            return StateError(f"lost the connection to the PostgreSQL store {self.display_url}: {_first_line(exc)}")
        return None


def redact(url: str) -> str:
    """The URL without its password (for messages and logs): the one masking rule, sensitive.mask_url."""
    return mask_url(url)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lock_id(key: str) -> int:
    value = zlib.crc32(key.encode())
    return value - (1 << 32) if value >= (1 << 31) else value


def now() -> float:
    return time.time()


def marks(values: Sequence[Any]) -> str:
    """`?, ?, …`: one parameter placeholder per value (for `IN (…)` and `VALUES (…)`)."""
    return ", ".join("?" for _ in values)


def where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]] | None:
    """A ` WHERE …` clause ("" for none) and its parameters from (column, value) pairs: a None value
    is no condition, a sequence (not text) `column IN (…)`, anything else `column = ?`. None when a
    sequence is empty: no row can match."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in conditions:
        if value is None:
            continue
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):
            if not value:
                return None
            clauses.append(f"{column} IN ({marks(value)})")
            params.extend(value)
        else:
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
