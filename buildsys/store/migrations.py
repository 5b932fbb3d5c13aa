"""The SQL store's schema as ordered migrations, applied when a store is opened.

The same DDL runs on SQLite and PostgreSQL (types both accept: TEXT, BIGINT, INTEGER, DOUBLE
PRECISION). A migration is never edited once released: a change is a new migration at the end.
`schema_migrations` records what has been applied; a store newer than this code is refused.
"""

from __future__ import annotations

from buildsys.errors import StateError
from buildsys.records import Record
from buildsys.store.dialect import Database, Tx, now

_set = object.__setattr__


class Migration(Record):
    __slots__ = __match_args__ = ("version", "name", "statements")
    version: int
    name: str
    statements: tuple[str, ...]

    def __init__(
        self,
        version: int,
        name: str,
        statements: tuple[str, ...],
    ) -> None:
        _set(self, "version", version)
        _set(self, "name", name)
        _set(self, "statements", statements)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema: serial, resources, flow runs, logs, workers",
        (
            """CREATE TABLE store_serial (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                serial BIGINT NOT NULL
            )""",
            "INSERT INTO store_serial (id, serial) VALUES (1, 0)",
            """CREATE TABLE resources (
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                id TEXT NOT NULL UNIQUE,
                spec TEXT NOT NULL,
                owner TEXT,
                source TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                serial BIGINT NOT NULL,
                pool TEXT,
                concurrency_limit BIGINT,
                PRIMARY KEY (kind, name)
            )""",
            "CREATE INDEX resources_pool ON resources (kind, pool)",
            """CREATE TABLE flow_runs (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                deployment TEXT NOT NULL,
                deployment_id TEXT NOT NULL,
                flow_name TEXT NOT NULL,
                pool TEXT NOT NULL,
                queue TEXT,
                parameters TEXT NOT NULL,
                job_variables TEXT NOT NULL,
                state TEXT NOT NULL,
                state_name TEXT NOT NULL,
                state_message TEXT,
                scheduled_at DOUBLE PRECISION NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                ended_at DOUBLE PRECISION,
                worker TEXT,
                lease_expires_at DOUBLE PRECISION,
                attempt INTEGER NOT NULL,
                max_retries INTEGER NOT NULL,
                retry_delay_seconds DOUBLE PRECISION NOT NULL,
                infrastructure_pid TEXT,
                auto_scheduled INTEGER NOT NULL,
                idempotency_key TEXT,
                tags TEXT NOT NULL,
                exit_code INTEGER,
                log_seq BIGINT NOT NULL DEFAULT 0,
                UNIQUE (deployment_id, idempotency_key)
            )""",
            "CREATE INDEX flow_runs_due ON flow_runs (pool, state, scheduled_at)",
            "CREATE INDEX flow_runs_deployment ON flow_runs (deployment, state)",
            "CREATE INDEX flow_runs_created ON flow_runs (created_at)",
            "CREATE INDEX flow_runs_lease ON flow_runs (state, lease_expires_at)",
            "CREATE INDEX flow_runs_name ON flow_runs (name)",
            """CREATE TABLE logs (
                run_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                stream TEXT NOT NULL,
                message TEXT NOT NULL,
                PRIMARY KEY (run_id, seq)
            )""",
            """CREATE TABLE workers (
                pool TEXT NOT NULL,
                name TEXT NOT NULL,
                last_heartbeat DOUBLE PRECISION NOT NULL,
                type TEXT,
                PRIMARY KEY (pool, name)
            )""",
        ),
    ),
    Migration(
        2,
        "claim indexes: due runs in scheduled order, per pool and per queue",
        (
            "DROP INDEX flow_runs_due",
            "CREATE INDEX flow_runs_due ON flow_runs (pool, state, scheduled_at, created_at)",
            "CREATE INDEX flow_runs_queue_due ON flow_runs (pool, state, queue, scheduled_at, created_at)",
        ),
    ),
    Migration(
        3,
        "what Prefect's engine records: task runs, artifacts, concurrency leases, flows, log levels",
        (
            "ALTER TABLE flow_runs ADD COLUMN parent_task_run_id TEXT",
            "ALTER TABLE flow_runs ADD COLUMN run_count INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE flow_runs ADD COLUMN prefect TEXT NOT NULL DEFAULT '{}'",
            "CREATE INDEX flow_runs_parent ON flow_runs (parent_task_run_id)",
            "ALTER TABLE logs ADD COLUMN level INTEGER",
            "ALTER TABLE logs ADD COLUMN logger TEXT",
            "ALTER TABLE logs ADD COLUMN task_run_id TEXT",
            """CREATE TABLE task_runs (
                id TEXT PRIMARY KEY,
                flow_run_id TEXT NOT NULL,
                name TEXT NOT NULL,
                task_key TEXT NOT NULL,
                dynamic_key TEXT NOT NULL,
                state TEXT NOT NULL,
                state_name TEXT NOT NULL,
                state_message TEXT,
                state_ts DOUBLE PRECISION NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                ended_at DOUBLE PRECISION,
                run_count INTEGER NOT NULL,
                cached INTEGER NOT NULL,
                tags TEXT NOT NULL,
                history TEXT NOT NULL
            )""",
            "CREATE INDEX task_runs_flow_run ON task_runs (flow_run_id, created_at)",
            """CREATE TABLE artifacts (
                id TEXT PRIMARY KEY,
                flow_run_id TEXT,
                task_run_id TEXT,
                key TEXT,
                type TEXT,
                description TEXT,
                data TEXT,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX artifacts_flow_run ON artifacts (flow_run_id, created_at)",
            "CREATE INDEX artifacts_key ON artifacts (key, created_at)",
            """CREATE TABLE concurrency_limits (
                name TEXT PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                slot_limit BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE concurrency_slots (
                lease_id TEXT NOT NULL,
                name TEXT NOT NULL,
                slots BIGINT NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                holder TEXT,
                PRIMARY KEY (lease_id, name)
            )""",
            "CREATE INDEX concurrency_slots_name ON concurrency_slots (name, expires_at)",
            """CREATE TABLE flows (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                created_at DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
    Migration(
        4,
        "listing indexes: the newest runs of a state, of a pool in a state, of a deployment (the UI's run lists)",
        (
            "CREATE INDEX flow_runs_state_created ON flow_runs (state, created_at)",
            "CREATE INDEX flow_runs_pool_state_created ON flow_runs (pool, state, created_at)",
            "CREATE INDEX flow_runs_deployment_created ON flow_runs (deployment, created_at)",
        ),
    ),
    Migration(
        5,
        "claim index: the pool's deployments that have a concurrency limit (every claim reads them; "
        "without it a claim walked every deployment of the pool, a cost that grows with the deployments)",
        (
            "CREATE INDEX resources_pool_limited ON resources (kind, pool) WHERE concurrency_limit IS NOT NULL",
        ),
    ),
    Migration(
        6,
        "flow-run state history: every state a run entered, in order (runs show, the UI's timeline)",
        (
            """CREATE TABLE flow_run_states (
                run_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                state TEXT NOT NULL,
                state_name TEXT NOT NULL,
                message TEXT,
                attempt INTEGER NOT NULL,
                worker TEXT,
                PRIMARY KEY (run_id, seq)
            )""",
        ),
    ),
    Migration(
        7,
        "apply history: what each apply wrote, specs before and after (the UI's plans on a server)",
        (
            """CREATE TABLE applies (
                serial BIGINT PRIMARY KEY,
                applied_at DOUBLE PRECISION NOT NULL,
                changes TEXT NOT NULL
            )""",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version

_CREATE_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)"""


def migrate(db: Database, where: str) -> int:
    """Bring the schema to LATEST (in one transaction, serialised across processes); returns it."""
    current = _read_version(db, where)
    if current == LATEST:
        return current
    with db.tx(write=True) as tx:
        tx.lock("buildsys:migrations")
        tx.run(_CREATE_TABLE)
        current = _applied_version(tx)
        _refuse_newer(current, where)
        for migration in MIGRATIONS:
            if migration.version > current:
                for statement in migration.statements:
                    try:
                        tx.run(statement)
                    except db.driver_errors() as exc:
                        if "already exists" not in str(exc):
                            raise
                        # migrations run one at a time under the lock: a table that exists before
                        # its migration means schema_migrations lost rows
                        raise StateError(
                            f"{where} is damaged: its record of schema migrations says version {current}, "
                            f"but migration {migration.version} ({migration.name}) finds {exc}",
                            hint="restore it from a `buildsys state export`, or move it away to start afresh",
                        ) from exc
                tx.run(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, now()),
                )
    return LATEST


def _read_version(db: Database, where: str) -> int | None:
    """The applied version, or None when the store is new; refuses foreign databases."""
    with db.tx() as tx:
        tables = {str(name) for (name,) in tx.run(db_tables_sql(db))}
        if "schema_migrations" not in tables:
            if tables - {"schema_migrations"}:
                raise StateError(
                    f"{where} is a database but not a buildsys state store "
                    f"(it has other tables: {', '.join(sorted(tables)[:5])})",
                    hint="point --state at a new file or an empty database",
                )
            return None
        version = _applied_version(tx)
    _refuse_newer(version, where)
    return version


def db_tables_sql(db: Database) -> str:
    if db.name == "sqlite":
        return "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    return "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"


def _applied_version(tx: Tx) -> int:
    row = tx.one("SELECT MAX(version) FROM schema_migrations")
    return int(row[0]) if row and row[0] is not None else 0


def _refuse_newer(version: int, where: str) -> None:
    if version > LATEST:
        raise StateError(
            f"the state store {where} has schema version {version}, newer than this buildsys "
            f"understands ({LATEST})",
            hint="upgrade buildsys to use this store",
        )
