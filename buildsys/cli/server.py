"""`buildsys server start` and `buildsys server token create|ls|revoke`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from buildsys.cli.app import App, common_options, pass_app

if TYPE_CHECKING:
    from buildsys.server.auth import TokenStore

DB_HELP = "Database: a SQLite path (default ./buildsys-server.db), sqlite:///… or postgresql://…"


@click.group("server")
@common_options
def server() -> None:
    """Serve the state store over HTTP."""


@server.command("start")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind; not loopback = auth required."
)
@click.option("--port", default=4300, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--db", "db", default=None, metavar="URL", help=DB_HELP)
@click.option("--auth", is_flag=True, help="Require bearer tokens on loopback too.")
@click.option(
    "--housekeeping-seconds",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="How often schedules become runs and expired leases are handled.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    envvar="BUILDSYS_SERVER_ALLOWED_HOSTS",
    help="Another name (or origin, https://name) clients use for this server; the bound address and "
    "localhost always are. Other Host and Origin headers are refused (see `buildsys help security`).",
)
@common_options
@pass_app
def start(
    app: App, host: str, port: int, db: str | None, auth: bool, housekeeping_seconds: float,
    allowed_hosts: tuple[str, ...],
) -> None:
    """Start the HTTP API (uvicorn) on the given database."""
    from buildsys.server import ServeOptions, Settings, serve
    from buildsys.server.serve import DEFAULT_DB, is_loopback

    database = db or DEFAULT_DB
    secured = auth or not is_loopback(host)
    app.echo(
        f"buildsys server on http://{host}:{port} (database {_display(database)}, "
        f"auth {'required' if secured else 'off'})",
        err=True,
    )
    app.echo(f"PREFECT_API_URL=http://{host}:{port}/prefect/api", err=True)
    settings = Settings(housekeeping_seconds=housekeeping_seconds)
    serve(ServeOptions(host=host, port=port, db=database, auth=auth, settings=settings,
                       allowed_hosts=allowed_hosts))


@server.group("token")
def token() -> None:
    """Bearer tokens for the server (kept hashed in its database)."""


@token.command("create")
@click.option(
    "--scope",
    required=True,
    type=click.Choice(["read", "apply", "worker", "cache", "admin"]),
    help="read: look (and read the shared cache); apply: plan/apply and create runs; worker: claim and "
    "report runs; cache: write the shared build cache; admin: all.",
)
@click.option("--description", default=None, help="A note on who or what uses it.")
@click.option("--db", "db", default=None, metavar="URL", help=DB_HELP)
@common_options
@pass_app
def token_create(app: App, scope: str, description: str | None, db: str | None) -> None:
    """Create a token; it is printed once and cannot be shown again."""
    tokens = _tokens(db)
    info, secret = tokens.create(scope, description)
    if app.json:
        app.emit_json({"id": info.id, "scope": info.scope, "token": secret})
        return
    click.echo(secret)
    app.echo(f"token {info.id} (scope {info.scope}) created; it is shown only this once", err=True)


@token.command("ls")
@click.option("--db", "db", default=None, metavar="URL", help=DB_HELP)
@common_options
@pass_app
def token_ls(app: App, db: str | None) -> None:
    """List the tokens (ids and scopes; the secrets are not kept)."""
    found = _tokens(db).list()
    if app.json:
        app.emit_json([{"id": t.id, "scope": t.scope, "description": t.description} for t in found])
        return
    for t in found:
        app.echo(f"{t.id}  {t.scope:<6}  {t.description or ''}".rstrip())


@token.command("revoke")
@click.argument("token_id")
@click.option("--db", "db", default=None, metavar="URL", help=DB_HELP)
@common_options
@pass_app
def token_revoke(app: App, token_id: str, db: str | None) -> None:
    """Revoke a token by id (servers stop accepting it within seconds)."""
    from buildsys.server.auth import AuthError

    if not _tokens(db).revoke(token_id):
        raise AuthError(f"no active token with id {token_id!r}", hint="see `buildsys server token ls`")
    app.echo(f"token {token_id} revoked")


def _tokens(db: str | None) -> TokenStore:
    from buildsys.server.auth import TokenStore, database_for
    from buildsys.server.serve import DEFAULT_DB

    return TokenStore(database_for(db or DEFAULT_DB))


def _display(url: str) -> str:
    from buildsys.store.dialect import redact

    return redact(url)
