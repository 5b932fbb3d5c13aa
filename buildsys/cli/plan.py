"""`buildsys plan`: desired state (working tree or --ref) against the store, as a diff."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from buildsys.cli import completion
from buildsys.cli.app import App, common_options, pass_app

if TYPE_CHECKING:
    from collections.abc import Callable

    from buildsys.desired import OutputsFor
    from buildsys.model import Deployment, Project
    from buildsys.plan import Plan
    from buildsys.store.base import StateStore


@click.command("plan")
@click.option("--ref", metavar="REV", help="Read the project at this commit, branch or tag (no checkout).")
@click.option(
    "-o",
    "--out",
    "out",
    metavar="PLAN",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save the plan (JSON) for `apply PLAN`.",
)
@click.option("--prune", is_flag=True, help="Delete resources this project owns but no longer declares.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when there are changes (0 none, 1 error).")
@click.option(
    "-d",
    "--deployment",
    "deployments",
    multiple=True,
    metavar="NAME",
    help="Only these deployments (names or globs).",
    shell_complete=completion.deployments,
)
@common_options
@pass_app
def plan(
    app: App,
    ref: str | None,
    out: Path | None,
    prune: bool,
    detailed_exitcode: bool,
    deployments: tuple[str, ...],
) -> None:
    """Show what `apply` would change in the state store."""
    store = app.open_store()
    try:
        result = make_plan(app, store, ref=ref, prune=prune, select=deployments, outputs=cached_outputs)
    finally:
        store.close()
    name_store(app)
    if out is not None:
        from buildsys.reconcile import write_plan_file

        write_plan_file(result, out)
    show_plan(app, result)
    if out is not None:
        app.echo(f"Saved the plan to {out}. Apply exactly this plan with: buildsys apply {out}")
    if detailed_exitcode and result.has_changes:
        # not click's Exit: `cli.main(standalone_mode=False)` returns its code instead of exiting
        sys.exit(2)


def make_plan(
    app: App,
    store: StateStore,
    *,
    ref: str | None = None,
    prune: bool = False,
    select: Sequence[str] = (),
    outputs: Callable[[Project], OutputsFor | None] | None = None,
    project: Project | None = None,
) -> Plan:
    """Desired state of the project file against a consistent snapshot of the store."""
    import os

    from buildsys.desired import read_desired
    from buildsys.plan import plan as compute
    from buildsys.reconcile import snapshot, stepwise
    from buildsys.revision import strip_credentials

    if project is None and ref is None:
        project = app.load_project()  # the command chooses the cached load; --ref reads git
    # deploy-time values, as `prefect deploy` resolves them: this environment, the store's variables
    variables = {r.name: r.spec.get("value") for r in store.list_resources("variable")}
    _, desired = read_desired(
        app.project_file,
        ref=ref,
        select=list(select) or None,
        outputs=outputs,
        loaded=project,
        env=os.environ,
        variables=variables,
    )
    serial, actual = snapshot(store)
    # the URL goes into plan files and CI logs: never with a password or token in it
    return compute(
        desired, actual, serial=serial, prune=prune, store=strip_credentials(app.state), stepwise=stepwise(store)
    )


def name_store(app: App) -> None:
    """Say which store is read and written (on stderr, as Terraform names its backend; under
    --json the plan's `store` says it)."""
    if app.verbosity >= 0 and not app.json:
        app.echo(f"State store: {app.store_description}", err=True)


def show_plan(app: App, result: Plan) -> None:
    from buildsys.plan_view import render_plan

    if app.json:
        app.emit_json(result.to_dict())
    else:
        app.echo(render_plan(result, color=app.use_color).rstrip("\n"))


def cached_outputs(project: Project) -> OutputsFor:
    """Build outputs from the cache, without running anything (missing → known after build)."""
    from buildsys.desired import BuildOutputs
    from buildsys.engine import cached_namespace

    def outputs(d: Deployment) -> BuildOutputs | None:
        if not (d.build or d.push):
            return BuildOutputs({})
        namespace, pending = cached_namespace(project, d.name)
        return BuildOutputs(namespace, frozenset(pending))

    return outputs
