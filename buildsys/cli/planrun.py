"""The work of `buildsys plan` without click: the click command (`buildsys.cli.plan`) and the
launcher's direct path for plain argument lists (`buildsys.cli.direct`) both run it; and what
apply, deploy and show share with it (the --affected selection, the store named, the plan shown)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.cli.app import App

if TYPE_CHECKING:
    from buildsys.entrypoints import FlowInfo
    from buildsys.model import Project
    from buildsys.plan import Plan


def run_plan(
    app: App,
    *,
    ref: str | None,
    out: Path | None,
    prune: bool,
    detailed_exitcode: bool,
    deployments: tuple[str, ...],
    full: bool,
    affected_base: str | None,
) -> None:
    """Plan, say it, save it (`out`); exit 2 with `detailed_exitcode` when there are changes.
    `affected_base` and `ref` are not given together (the command refuses it)."""
    import os

    from buildsys.reconcile import cached_outputs, plan_project
    from buildsys.revision import reading_once

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
    from buildsys.cli.affectedrun import select_affected

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
