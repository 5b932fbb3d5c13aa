"""State stores: choose the transport from a URL (path or sqlite:///…, postgresql://…, http(s)://…)."""

from __future__ import annotations

from pathlib import Path

from buildsys.store.base import StateStore


def open_store(url: str, *, root: Path | None = None, key_env: str | None = None) -> StateStore:
    """Open the store a URL names; a bare path is a SQLite file relative to `root` (the project).
    `key_env` names the environment variable holding a Prefect API key (default PREFECT_API_KEY)."""
    if url.startswith(("prefect+http://", "prefect+https://")):
        from buildsys.store.prefect import PrefectStore

        return PrefectStore(url, key_env=key_env)
    if url.startswith(("http://", "https://")):
        from buildsys.store.http import HttpStore

        return HttpStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from buildsys.store.sql import SqlStore

        return SqlStore.postgres(url)
    from buildsys.store.sql import SqlStore

    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    p = Path(path)
    if not p.is_absolute() and root is not None:
        p = root / p
    return SqlStore.sqlite(p)
