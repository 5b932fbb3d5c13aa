"""Ownership: `buildsys import KIND NAME` (also `buildsys state adopt`) puts a resource made outside
buildsys (by hand, by `prefect deploy`) under this project's management, unchanged; the next plan
shows how it differs from the project. `buildsys state rm KIND NAME` is the reverse: the project
stops managing it and it stays in the store, as Terraform's `state rm` forgets a resource."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from buildsys.cli import completion
from buildsys.cli.app import App, common_options, pass_app

if TYPE_CHECKING:
    from buildsys.store.base import Resource

KIND = click.Choice(["deployment", "pool", "variable"])


@click.command("import")
@click.argument("kind", type=KIND)
@click.argument("name", metavar="NAME", shell_complete=completion.deployments)
@common_options
@pass_app
def import_(app: App, kind: str, name: str) -> None:
    """Make this project the owner of an unmanaged resource (NAME: `flow/deployment`, or a
    deployment name that only one flow uses). `buildsys state adopt` is the same command."""
    from buildsys.desired import project_identity
    from buildsys.reconcile import adopt as take_over

    owner = project_identity(app.load_project())
    with app.store() as store:
        full = full_name(store.list_resources(kind), kind, name)
        res = take_over(store, kind, full, owner)
    if app.json:
        app.emit_json({"kind": kind, "name": res.name, "owner": res.owner, "url": store.url})
    else:
        app.echo(f"Adopted {kind} {res.name}: now managed by project {owner!r}. Run `buildsys plan` to see how it differs.")


@click.command("rm")
@click.argument("kind", type=KIND)
@click.argument("name", metavar="NAME", shell_complete=completion.deployments)
@common_options
@pass_app
def rm(app: App, kind: str, name: str) -> None:
    """Stop this project managing a resource; it stays in the store, unchanged and unowned, so
    `--prune` never deletes it (NAME as for `buildsys import`)."""
    from buildsys.desired import project_identity
    from buildsys.reconcile import disown

    owner = project_identity(app.load_project())
    with app.store() as store:
        full = full_name(store.list_resources(kind), kind, name)
        before = store.get_resource(kind, full)
        res = disown(store, kind, full, owner)
    changed = before is not None and before.owner is not None
    if app.json:
        app.emit_json({"kind": kind, "name": res.name, "owner": None, "changed": changed, "url": store.url})
    elif changed:
        app.echo(f"Removed {kind} {res.name} from project {owner!r}'s state: it stays in the store, unmanaged. "
                 "Delete it from the project file too, or the next plan takes it over again.")
    else:
        app.echo(f"{kind} {res.name} is not managed by any project; nothing to do.")


def full_name(resources: list[Resource], kind: str, name: str) -> str:
    """A deployment given by its name alone, when only one flow has a deployment of that name."""
    from buildsys.errors import NotFoundError

    if kind != "deployment" or "/" in name:
        return name
    matches = sorted(r.name for r in resources if r.name.split("/", 1)[-1] == name)
    if len(matches) == 1:
        return str(matches[0])
    if not matches:
        raise NotFoundError(f"no deployment named {name!r} in the store", hint="see `buildsys state show --kind deployment`")
    raise NotFoundError(f"deployment name {name!r} is ambiguous: {', '.join(matches)}", hint="give it as FLOW/NAME")
