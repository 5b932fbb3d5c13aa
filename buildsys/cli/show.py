"""`buildsys show PLAN`: a saved plan, rendered as `plan` printed it (or as JSON), without a store."""

from __future__ import annotations

from pathlib import Path

import click

from buildsys.cli.app import App, common_options, pass_app
from buildsys.cli.planopts import full_option


@click.command("show")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@full_option
@common_options
@pass_app
def show(app: App, plan_file: Path, full: bool) -> None:
    """Render a plan saved with `plan -o PLAN` (checked as `apply PLAN` checks it: format and hash)."""
    from buildsys.cli.planrun import show_plan
    from buildsys.reconcile import read_plan_file

    show_plan(app, read_plan_file(plan_file), full=full)
