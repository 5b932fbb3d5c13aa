"""Starting the server: open the database, decide on auth, run uvicorn."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

from buildsys.errors import BuildsysError
from buildsys.server.app import Settings, create_app
from buildsys.server.auth import Authenticator, TokenStore, database_for
from buildsys.server.guard import GuardPolicy
from buildsys.store import open_store

DEFAULT_DB = "buildsys-server.db"
DEFAULT_PORT = 4300


class ServerError(BuildsysError):
    """The server cannot start as asked."""


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    db: str = DEFAULT_DB
    auth: bool = False  # loopback only; any other address always requires auth
    settings: Settings = field(default_factory=Settings)
    log_level: str = "info"
    allowed_hosts: tuple[str, ...] = ()  # more names (or origins) of this server; see server/guard.py


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(options: ServeOptions) -> None:
    """Serve until interrupted. Raises ServerError when auth is needed but no token exists yet."""
    import uvicorn

    if options.db.startswith(("http://", "https://")):
        raise ServerError(
            f"--db must name a database, not a server: {options.db}",
            hint="use a SQLite path or a postgresql:// URL",
        )
    auth = options.auth or not is_loopback(options.host)
    store = open_store(options.db)
    authenticator = None
    if auth:
        tokens = TokenStore(database_for(options.db))
        if not tokens.list():
            store.close()
            raise ServerError(
                f"auth is required on {options.host} but the database has no token yet",
                hint=f"create one first: buildsys server token create --scope admin --db {options.db}",
            )
        authenticator = Authenticator(tokens)
    logging.basicConfig(
        level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    guard = GuardPolicy.of(options.allowed_hosts)
    from buildsys.server.cachetable import CacheTable

    cache = CacheTable(database_for(options.db))
    app = create_app(store, authenticator=authenticator, settings=options.settings, guard=guard, cache=cache)
    from buildsys.interrupts import stop_on_signals

    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level=options.log_level,
        lifespan="on",
        timeout_graceful_shutdown=5,  # long-polls would otherwise hold a restart for up to 30 s
    )
    # uvicorn.Server, not uvicorn.run: run() turns a stop signal that lands while the server starts
    # (before uvicorn takes the signals over, or taken over but not yet serving) into exit 3, its
    # "startup failure"; a stop asked for is a clean stop whenever it comes. A real startup failure
    # (the port taken, the app's lifespan failing) still exits 3 from inside the server.
    try:
        stop_on_signals()  # inherited ignored or blocked signals back (uvicorn then installs its own)
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        pass  # stopped before uvicorn took the signals, or re-raised by it after a stop during start-up
    finally:
        store.close()
