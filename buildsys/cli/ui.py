"""`buildsys ui`: the web UI over this project's state store, on loopback, for one user."""

from __future__ import annotations

import click

from buildsys.cli.app import App, common_options, pass_app


@click.command("ui")
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="TCP port on 127.0.0.1 (default: a free one).")
@click.option("--no-browser", is_flag=True, help="Do not open a browser; just print the address.")
@common_options
@pass_app
def ui(app: App, port: int, no_browser: bool) -> None:
    """Serve the web UI for this project's state store on 127.0.0.1 until Ctrl-C."""
    from buildsys.ui.local import serve_local

    serve_local(
        app.state,
        root=app.project_file.resolve().parent,
        port=port,
        open_browser=not no_browser,
        announce=lambda url: app.echo(f"buildsys ui on {url} (state {app.state}); Ctrl-C stops it", err=True),
    )
