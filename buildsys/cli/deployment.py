"""`buildsys deployment pause / resume NAME`: stop and restart a deployment's schedules in the store,
as `prefect deployment pause/resume` does. The project file stays the source of truth: a project
that declares `paused:` shows the difference in its next plan."""

from __future__ import annotations

import click

from buildsys.cli import completion
from buildsys.cli.app import App, common_options, pass_app


@click.group()
def deployment() -> None:
    """Pause and resume a deployment's schedules."""


def _set(app: App, name: str, paused: bool) -> None:
    from buildsys.reconcile import set_paused
    from buildsys.selector import find_deployment

    with app.store() as store:
        have = find_deployment(store, name)
        res = set_paused(store, "deployment", have.name, paused)
    changed = bool(have.spec.get("paused")) != paused
    word = "paused" if paused else "resumed"
    if app.json:
        app.emit_json({"name": res.name, "paused": paused, "changed": changed, "url": store.url})
    elif changed:
        app.echo(f"Deployment {res.name} {word}: " + (
            "no new runs are scheduled until it is resumed." if paused else "its schedules make runs again."))
    else:
        app.echo(f"Deployment {res.name} was already {word.replace('resumed', 'active')}; nothing to do.")


@deployment.command("pause")
@click.argument("name", metavar="NAME", shell_complete=completion.deployments)
@common_options
@pass_app
def pause(app: App, name: str) -> None:
    """Pause NAME ("flow/deployment", or the deployment name when unique): its schedules stop
    making runs and the runs they had made ahead are removed, as Prefect does; `buildsys run`
    still works."""
    _set(app, name, True)


@deployment.command("resume")
@click.argument("name", metavar="NAME", shell_complete=completion.deployments)
@common_options
@pass_app
def resume(app: App, name: str) -> None:
    """Resume NAME: its schedules make runs again."""
    _set(app, name, False)
