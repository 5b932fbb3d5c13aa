"""`buildsys plan`: desired state (working tree or --ref) against the store, as a diff."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from buildsys.cli.affected import affected_option
from buildsys.cli.app import App, common_options, pass_app
from buildsys.cli.planopts import full_option, prune_option
from buildsys.cli.select import deployments_option

if TYPE_CHECKING:
    from buildsys.entrypoints import FlowInfo
    from buildsys.model import Project
    from buildsys.plan import Plan


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
@prune_option
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when there are changes (0 none, 1 error).")
@deployments_option
@full_option
@affected_option
@common_options
@pass_app
def plan(
    app: App,
    ref: str | None,
    out: Path | None,
    prune: bool,
    detailed_exitcode: bool,
    deployments: tuple[str, ...],
    full: bool,
    affected_base: str | None,
) -> None:
    """Show what `apply` would change in the state store."""
    import os

    from buildsys.reconcile import cached_outputs, plan_project
    from buildsys.revision import reading_once

    if affected_base is not None and ref is not None:
        raise click.UsageError("--affected compares the working tree with a ref; it cannot plan --ref")
    flows: dict[str, FlowInfo] = {}  # the affected deployments' flows, read once for the analysis and the plan
    with reading_once():  # --affected and the plan read the same working tree: ask git once
        project, only = affected_selection(app, affected_base, deployments, flows=flows)
        if project is None and ref is None:
            project = app.load_project()  # the cache layer's load; --ref reads git
        with app.store() as store:
            result = plan_project(
                app.project_file, store, ref=ref, prune=prune, select=deployments, outputs=cached_outputs,
                project=project, env=os.environ, store_url=app.state, only=only, flows=flows if ref is None else None,
            )
    name_store(app)
    if out is not None:
        from buildsys.reconcile import write_plan_file

        write_plan_file(result, out)
    show_plan(app, result, full=full)
    if out is not None:
        app.echo(f"Saved the plan to {out}. Apply exactly this plan with: buildsys apply {out}")
    if detailed_exitcode and result.has_changes:
        # not click's Exit: `cli.main(standalone_mode=False)` returns its code instead of exiting
        sys.exit(2)


def affected_selection(
    app: App, affected_base: str | None, deployments: Sequence[str], *, flows: dict[str, FlowInfo] | None = None
) -> tuple[Project | None, list[str] | None]:
    """For `--affected[=REF]`: the loaded project and the names of the deployments to plan;
    (None, None) without the option. `flows`: filled with the working tree's entrypoints the
    analysis read, for the plan that follows (within the same `revision.reading_once`)."""
    if affected_base is None:
        return None, None
    from buildsys.cli.affected import select_affected

    project = app.load_project()
    _, names = select_affected(app, project, affected_base, deployments, flows=flows)
    return project, names


def name_store(app: App) -> None:
    """Say which store is read and written (on stderr, as Terraform names its backend; under
    --json the plan's `store` says it)."""
    if app.verbosity >= 0 and not app.json:
        app.echo(f"State store: {app.store_description}", err=True)


def show_plan(app: App, result: Plan, *, full: bool = False) -> None:
    from buildsys.plan_view import render_plan

    if app.json:
        app.emit_json(result.to_dict())
    else:
        app.echo(render_plan(result, color=app.use_color, full=full).rstrip("\n"), styled=True)
