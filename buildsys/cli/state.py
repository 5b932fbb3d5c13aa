"""`buildsys state show / export / import / rm / adopt`: look at the state store, back it up, restore
it, and change which resources this project manages."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from buildsys.cli.adopt import import_ as adopt
from buildsys.cli.adopt import rm
from buildsys.cli.app import App, ask_or_refuse, common_options, pass_app
from buildsys.errors import StateError


@click.group()
def state() -> None:
    """Show, export and import the state store (--state, default .buildsys/state.db); `rm` and
    `adopt` change which resources this project manages."""


state.add_command(rm)
state.add_command(adopt, name="adopt")  # the same command as `buildsys import`


@state.command("show")
@click.option("--kind", type=click.Choice(["pool", "deployment", "variable"]), help="Only resources of this kind.")
@common_options
@pass_app
def show(app: App, kind: str | None) -> None:
    """The store's serial, its resources (who owns them, when they changed) and its workers."""
    with app.store() as store:
        serial = store.serial()
        resources = store.list_resources(kind)
        workers = store.list_workers()
    if app.json:
        app.emit_json(
            {
                "url": store.url,
                "serial": serial,
                "resources": [
                    {k: r.to_dict()[k] for k in ("kind", "name", "owner", "serial", "updated_at", "source")}
                    for r in resources
                ],
                "workers": [w.to_dict() for w in workers],
            }
        )
        return
    app.echo(f"store:  {store.url}")
    app.echo(f"serial: {serial}")
    app.echo(_resource_table(resources) if resources else "no resources")
    for w in workers:
        app.echo(f"worker {w.name} (pool {w.pool}): {w.status}, last seen {_when(w.last_heartbeat)}")


def _resource_table(resources: list[Any]) -> str:
    rows = [("KIND", "NAME", "OWNER", "SERIAL", "UPDATED")]
    rows += [(r.kind, r.name, r.owner or "-", str(r.serial), _when(r.updated_at)) for r in resources]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)).rstrip() for row in rows
    )


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@state.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE, not stdout.")
@common_options
@pass_app
def export(app: App, output: Path | None) -> None:
    """Everything in the store as one JSON document (resources, runs, logs, workers)."""
    with app.store() as store:
        data = store.export()
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    _write_atomically(output, text)
    app.echo(f"exported {_counts(data)} to {output} (serial {data['serial']})", err=True)


def _write_atomically(path: Path, text: str) -> None:
    """Readers never see half a file: write next to it, then rename over it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise StateError(f"cannot write the export to {path}: {exc.strerror or exc}") from exc


def _counts(data: dict[str, Any]) -> str:
    parts = [(len(data.get(key) or []), noun) for key, noun in (("resources", "resource"), ("runs", "run"), ("logs", "log line"))]
    return ", ".join(f"{n} {noun}{'' if n == 1 else 's'}" for n, noun in parts)


@state.command("import")
@click.argument("file", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-y", "--yes", is_flag=True, help="Replace a non-empty store without asking.")
@common_options
@pass_app
def import_(app: App, file: str, yes: bool) -> None:
    """Replace the store's contents with an export (FILE, or - for stdin), in one transaction."""
    data = _read_export(file)
    with app.store() as store:
        if not yes and (store.list_resources() or store.list_runs(limit=1)):
            _confirm(store.url)
        store.import_(data)
        serial = store.serial()
    if app.json:
        imported = {key: len(data.get(key) or []) for key in ("resources", "runs", "logs", "workers")}
        app.emit_json({"url": store.url, "serial": serial, "imported": imported})
    else:
        app.echo(f"imported {_counts(data)} into {store.url} (serial {serial})")


def _read_export(file: str) -> Any:
    name = "stdin" if file == "-" else file
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise StateError(f"cannot read {name}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise StateError(f"{name} is not a text file: {exc.reason}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(
            f"{name} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            hint="make one with `buildsys state export -o FILE`",
        ) from exc


def _confirm(url: str) -> None:
    ask_or_refuse(
        f"Replace everything in {url}?",
        StateError(
            f"the store {url} is not empty and an import replaces everything in it",
            hint="pass --yes to replace it (there is no terminal to ask on)",
        ),
    )
