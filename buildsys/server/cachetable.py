"""The server's side of the shared cache (buildsys.sharedcache): entries by content key in the
server's own database, beside its tokens, so several servers on one PostgreSQL serve one cache.

The server stores what a writer sent and hands it back; it never trusts or opens an entry (runners
check each one's seal). It keeps at most `max_entries`, dropping the oldest-written first.
"""

from __future__ import annotations

import time

from buildsys.store.dialect import Database

MAX_ENTRIES = 100_000

_TABLES = (
    """CREATE TABLE IF NOT EXISTS shared_cache (
    key TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS shared_cache_created ON shared_cache (created_at)",
)


class CacheTable:
    def __init__(self, db: Database, *, max_entries: int = MAX_ENTRIES) -> None:
        self.db = db
        self.max_entries = max_entries
        with self.db.tx(write=True) as tx:
            for sql in _TABLES:
                tx.run(sql)

    def get(self, key: str) -> str | None:
        with self.db.tx() as tx:
            row = tx.one("SELECT body FROM shared_cache WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def put(self, key: str, body: str) -> None:
        with self.db.tx(write=True) as tx:
            tx.run("DELETE FROM shared_cache WHERE key = ?", (key,))
            tx.run(
                "INSERT INTO shared_cache (key, body, size, created_at) VALUES (?, ?, ?, ?)",
                (key, body, len(body), time.time()),
            )
            row = tx.one("SELECT COUNT(*) FROM shared_cache")
            extra = int(row[0]) - self.max_entries if row is not None else 0
            if extra > 0:
                tx.run(
                    "DELETE FROM shared_cache WHERE key IN "
                    "(SELECT key FROM shared_cache ORDER BY created_at LIMIT ?)",
                    (extra,),
                )
