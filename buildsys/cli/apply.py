"""`buildsys apply`: apply a saved plan exactly, or plan, show, ask and apply."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from buildsys.cli.affected import affected_option
from buildsys.cli.app import App, ask_or_refuse, common_options, pass_app
from buildsys.cli.planopts import full_option, prune_option
from buildsys.cli.select import deployments_option

if TYPE_CHECKING:
    from buildsys.entrypoints import FlowInfo
    from buildsys.plan import Plan
    from buildsys.reconcile import ApplyResult
    from buildsys.store.base import StateStore


@click.command("apply")
@click.argument(
    "plan_file", metavar="[PLAN]", required=False, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--auto-approve", is_flag=True, help="Apply without asking (needed when there is no terminal).")
@prune_option
@deployments_option
@full_option
@affected_option
@common_options
@pass_app
def apply(
    app: App,
    plan_file: Path | None,
    auto_approve: bool,
    prune: bool,
    deployments: tuple[str, ...],
    full: bool,
    affected_base: str | None,
) -> None:
    """Apply a saved plan exactly, or plan and apply (asking first)."""
    import os

    from buildsys.cli.planrun import affected_selection, show_plan
    from buildsys.reconcile import cached_outputs, plan_project, read_plan_file

    for given, name in ((prune, "--prune"), (deployments, "-d/--deployment"), (affected_base is not None, "--affected")):
        if plan_file is not None and given:
            raise click.UsageError(
                f"{name} is decided when the plan is made: use `buildsys plan {name.split('/')[0]} … -o PLAN`"
            )
    with app.store() as store:
        if plan_file is not None:
            result = apply_saved(store, read_plan_file(plan_file), root=_root(app))
            report(app, None, result)
            return
        from buildsys.revision import reading_once

        flows: dict[str, FlowInfo] = {}  # read once for the analysis and the plan
        with reading_once():  # --affected and the plan read the same working tree: ask git once
            project, only = affected_selection(app, affected_base, deployments, flows=flows)
            planned = plan_project(
                app.project_file, store, prune=prune, select=deployments, outputs=cached_outputs,
                project=project if project is not None else app.load_project(), env=os.environ, store_url=app.state,
                only=only, flows=flows,
            )
        if not app.json:
            show_plan(app, planned, full=full)
        if not planned.has_changes:
            report(app, planned, None)
            return
        confirm(auto_approve)
        report(app, planned, apply_saved(store, planned, root=_root(app)))


def apply_saved(store: StateStore, plan: Plan, *, root: Path | None = None) -> ApplyResult:
    """Apply `plan`; with `root`, keep it in the project's plan history (the UI's Plans page)."""
    from buildsys.reconcile import apply_plan

    result = apply_plan(store, plan)
    if root is not None and result.applied:
        from buildsys.ui.history import remember

        remember(root, plan, result.serial)
    return result


def _root(app: App) -> Path:
    return app.project_file.resolve().parent


def confirm(auto_approve: bool) -> None:
    """Ask on a terminal; refuse without one unless --auto-approve (CI must say so explicitly)."""
    if auto_approve:
        return
    from buildsys.errors import BuildsysError

    ask_or_refuse(
        "Apply these changes?",
        BuildsysError(
            "apply needs approval, and there is no terminal to ask on; nothing was applied",
            hint="pass --auto-approve, or apply a reviewed plan file: `buildsys plan -o PLAN` then `buildsys apply PLAN`",
        ),
    )


def report(app: App, plan: Plan | None, result: ApplyResult | None) -> None:
    if app.json:
        app.emit_json(
            {
                "applied": result.applied if result else 0,
                "serial": result.serial if result else (plan.serial if plan else None),
                "plan": plan.to_dict() if plan else None,
            }
        )
        return
    if result is None:
        return
    from buildsys.cli.planrun import name_store

    name_store(app)
    if result.applied == 0:
        app.echo(f"No changes to apply (store serial {result.serial}).")
        return
    app.echo(f"Apply complete: {result.applied} change(s) written (store serial {result.serial}).")
