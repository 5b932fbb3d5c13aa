"""Bearer tokens with scopes (read, apply, worker, cache, admin), kept hashed in the server's database.

A token reads ``bst_<id>_<secret>``. The database keeps the id, a random salt and
HMAC-SHA256(salt, secret) — never the secret — so a leaked database does not leak usable tokens.
Every scope includes `read`; `admin` includes everything; `cache` writes shared-cache entries
(buildsys.sharedcache) and nothing else, so a trusted branch's CI can be given it alone.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from buildsys.errors import BuildsysError
from buildsys.store.dialect import Database, PostgresDatabase, SqliteDatabase
from buildsys.store.migrations import migrate

SCOPES = ("read", "apply", "worker", "cache", "admin")
PREFIX = "bst"
CACHE_SECONDS = 5.0  # a revoked token stops working within this long

_TABLE = """CREATE TABLE IF NOT EXISTS server_tokens (
    id TEXT PRIMARY KEY,
    salt TEXT NOT NULL,
    digest TEXT NOT NULL,
    scope TEXT NOT NULL,
    description TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
)"""


class AuthError(BuildsysError):
    """A token could not be made or checked (bad scope, unreadable database)."""


@dataclass(frozen=True)
class Token:
    id: str
    scope: str
    description: str | None = None
    created_at: float = 0.0

    def allows(self, needed: str) -> bool:
        return self.scope == "admin" or needed in (self.scope, "read")


def database_for(url: str) -> Database:
    """The database a server URL names: postgresql://…, sqlite:///path or a bare path."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    return SqliteDatabase(Path(path))


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


class TokenStore:
    """Create, verify and revoke tokens in the server's database (shared by all its servers)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # the tokens live next to a buildsys store: make it one first (the store refuses foreign
        # databases, and a token made before the first `server start` must not make it foreign)
        migrate(db, getattr(db, "display_url", db.url))
        with self.db.tx(write=True) as tx:
            tx.run(_TABLE)

    def create(self, scope: str, description: str | None = None) -> tuple[Token, str]:
        """A new token and its secret text (shown once; only its hash is kept)."""
        if scope not in SCOPES:
            raise AuthError(f"unknown scope {scope!r}", hint=f"use one of: {', '.join(SCOPES)}")
        token = Token(secrets.token_hex(6), scope, description, time.time())
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        with self.db.tx(write=True) as tx:
            tx.run(
                "INSERT INTO server_tokens (id, salt, digest, scope, description, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (token.id, salt, _digest(salt, secret), scope, description, token.created_at),
            )
        return token, f"{PREFIX}_{token.id}_{secret}"

    def verify(self, text: str) -> Token | None:
        """The token a bearer string stands for, or None (unknown, wrong secret, revoked)."""
        parts = text.split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
            return None
        with self.db.tx() as tx:
            row = tx.one(
                "SELECT salt, digest, scope, description, created_at FROM server_tokens "
                "WHERE id = ? AND revoked_at IS NULL",
                (parts[1],),
            )
        if row is None or not hmac.compare_digest(_digest(str(row[0]), parts[2]), str(row[1])):
            return None
        return Token(parts[1], str(row[2]), row[3], float(row[4]))

    def list(self) -> list[Token]:
        with self.db.tx() as tx:
            rows = tx.run(
                "SELECT id, scope, description, created_at FROM server_tokens WHERE revoked_at IS NULL ORDER BY created_at"
            )
        return [Token(str(r[0]), str(r[1]), r[2], float(r[3])) for r in rows]

    def revoke(self, token_id: str) -> bool:
        with self.db.tx(write=True) as tx:
            tx.run(
                "UPDATE server_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), token_id),
            )
            return tx.rowcount > 0


class Authenticator:
    """Checks Authorization headers, remembering good tokens for a few seconds."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens
        self._cache: dict[str, tuple[Token, float]] = {}
        self._lock = threading.Lock()

    def check(self, header: str | None) -> Token | None:
        """The token of a ``Bearer …`` header, or None when missing or not valid."""
        if not header or not header.startswith("Bearer "):
            return None
        text = header[len("Bearer ") :].strip()
        key = hashlib.sha256(text.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        token = self.tokens.verify(text)
        if token is not None:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[key] = (token, now + CACHE_SECONDS)
        return token
