"""`buildsys state adopt KIND NAME`: put a resource made outside buildsys (by hand, by `prefect deploy`)
under this project's management, unchanged; the next plan shows how it differs from the project."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from buildsys.cli.app import App, common_options, pass_app

if TYPE_CHECKING:
    from buildsys.store.base import Resource


@click.command("adopt")
@click.argument("kind", type=click.Choice(["deployment", "pool", "variable"]))
@click.argument("name", metavar="NAME")
@common_options
@pass_app
def adopt(app: App, kind: str, name: str) -> None:
    """Make this project the owner of an unmanaged resource (NAME: `flow/deployment`, or a
    deployment name that only one flow uses)."""
    from buildsys.desired import project_identity
    from buildsys.reconcile import adopt as take_over

    owner = project_identity(app.load_project())
    store = app.open_store()
    try:
        full = _full_name(store.list_resources(kind), kind, name)
        res = take_over(store, kind, full, owner)
    finally:
        store.close()
    if app.json:
        app.emit_json({"kind": kind, "name": res.name, "owner": res.owner, "url": store.url})
    else:
        app.echo(f"Adopted {kind} {res.name}: now managed by project {owner!r}. Run `buildsys plan` to see how it differs.")


def _full_name(resources: list[Resource], kind: str, name: str) -> str:
    from buildsys.errors import NotFoundError

    if kind != "deployment" or "/" in name:
        return name
    matches = sorted(r.name for r in resources if r.name.split("/", 1)[-1] == name)
    if len(matches) == 1:
        return str(matches[0])
    if not matches:
        raise NotFoundError(f"no deployment named {name!r} in the store", hint="see `buildsys state show --kind deployment`")
    raise NotFoundError(f"deployment name {name!r} is ambiguous: {', '.join(matches)}", hint="give it as FLOW/NAME")
