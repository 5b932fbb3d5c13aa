"""State stores: choose the transport from a URL (path or sqlite:///…, postgresql://…, http(s)://…).

A URL with any other scheme is an error, never a local path: `htps://host` must not quietly become
a folder named `htps:` holding a new, empty store.
"""

from __future__ import annotations

import re
from pathlib import Path

from buildsys.errors import StateError
from buildsys.store.base import StateStore

SCHEMES = ("sqlite:///", "postgresql://", "postgres://", "http://", "https://", "prefect+http://", "prefect+https://")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


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

    path = sqlite_path(url, root)
    if path.is_file() and path.stat().st_size == 0:
        # SQLite would take an empty file as a new database: a truncated store must not silently
        # become an empty one (the next apply would re-create everything, and lose all runs).
        raise StateError(
            f"the state store {path} is an empty file, not a buildsys store (was it truncated?)",
            hint="restore it from a `buildsys state export` file, or delete it to start a new store",
        )
    return SqlStore.sqlite(path)


def sqlite_path(url: str, root: Path | None = None) -> Path:
    """The file a `sqlite:///…` URL or a bare path names; any other scheme is an error."""
    check_scheme(url)
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    p = Path(path)
    if not p.is_absolute() and root is not None:
        p = root / p
    return p


def check_scheme(url: str) -> None:
    """Refuse a URL whose scheme no transport serves (a path has none: `./x`, `C:` aside)."""
    from buildsys.sensitive import mask_url
    from buildsys.suggest import closest

    if not url.strip():
        raise StateError("the state store URL is empty", hint="give --state PATH or URL, or unset BUILDSYS_STATE")
    match = _SCHEME.match(url)
    if url.startswith("sqlite:") and not url.startswith("sqlite:///"):
        raise StateError(
            f"unknown state store URL {mask_url(url)!r}",
            hint="a SQLite store is sqlite:///relative/path or sqlite:////absolute/path, or a plain path",
        )
    if match is None or url.startswith("sqlite:///") or (len(match.group(1)) == 1 and "://" not in url):
        return  # a plain path (a drive letter on Windows)
    scheme = match.group(1).lower()
    guess = closest(scheme, [s.split(":")[0] for s in SCHEMES])
    raise StateError(
        f"unknown state store URL scheme {scheme + ':'!r} in {mask_url(url)!r}",
        hint=(f"did you mean {guess}://? " if guess else "")
        + "a store is a path or sqlite:///…, postgresql://…, http(s)://…, prefect+http(s)://…/api "
        "(a path holding ':' can be written ./NAME)",
    )


def describe_store(url: str, root: Path | None = None) -> str:
    """The store a URL names, said for people (plan and apply name it, as Terraform names its backend)."""
    from buildsys.sensitive import mask_url

    if url.startswith(("prefect+http://", "prefect+https://")):
        return f"Prefect server {mask_url(url.removeprefix('prefect+')).rstrip('/')}"
    if url.startswith(("http://", "https://")):
        return f"buildsys server {mask_url(url).rstrip('/')}"
    if url.startswith(("postgresql://", "postgres://")):
        return f"PostgreSQL {mask_url(url)}"
    return f"SQLite file {sqlite_path(url, root).resolve()}"
