"""`buildsys plan`: desired state (working tree or --ref) against the store, as a diff (the
options; the work is `buildsys.cli.planrun`'s)."""

from __future__ import annotations

from pathlib import Path

import click

from buildsys.cli.affected import affected_option
from buildsys.cli.app import App, common_options, pass_app
from buildsys.cli.planopts import full_option, prune_option
from buildsys.cli.planrun import run_plan
from buildsys.cli.select import deployments_option


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
    if affected_base is not None and ref is not None:
        raise click.UsageError("--affected compares the working tree with a ref; it cannot plan --ref")
    run_plan(app, ref=ref, out=out, prune=prune, detailed_exitcode=detailed_exitcode, deployments=deployments,
             full=full, affected_base=affected_base)
