"""`buildsys deploy`: build and push (cached), then plan and apply, in one go."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from buildsys.cli.affected import affected_option
from buildsys.cli.app import App, common_options, pass_app
from buildsys.cli.build import shared_cache_options
from buildsys.cli.planopts import prune_option
from buildsys.cli.select import deployments_option

if TYPE_CHECKING:
    from buildsys.desired import BuildOutputs, OutputsFor
    from buildsys.model import Deployment, Project
    from buildsys.sharedcache import SharedCache


@click.command("deploy")
@deployments_option
@click.option("-j", "--jobs", type=int, default=None, help="Steps run in parallel (default: CPU count).")
@click.option("--no-cache", is_flag=True, help="Run every step, ignoring the cache.")
@prune_option
@affected_option
@shared_cache_options
@common_options
@pass_app
def deploy(
    app: App, deployments: tuple[str, ...], jobs: int | None, no_cache: bool, prune: bool, affected_base: str | None,
    cache_from: str | None, cache_write: bool,
) -> None:
    """Build, push, plan and apply in one go (the plan is shown, then applied without asking)."""
    import os

    from buildsys.cli.apply import apply_saved, report
    from buildsys.cli.planrun import show_plan
    from buildsys.reconcile import plan_project
    from buildsys.validation import require_references

    project = app.load_project()
    require_references(project)  # before anything is built or pushed
    from buildsys.cli.build import open_shared_cache

    shared = open_shared_cache(app, {"cache_from": cache_from, "cache_write": cache_write}, app.reporter)
    only: list[str] | None = None
    build_needed = True
    if affected_base is not None:
        from buildsys.cli.affectedrun import as_patterns, select_affected

        found, only = select_affected(app, project, affected_base, deployments)
        if only is not None:
            deployments = as_patterns(only)
        build_needed = bool(only) if only is not None else bool(found.steps)
    # nothing affected: nothing to build, and the plan holds the pools and variables only
    outputs = (
        run_builds(app, project, deployments, jobs=jobs, use_cache=not no_cache, shared=shared) if build_needed else None
    )
    with app.store() as store:
        planned = plan_project(
            app.project_file, store, prune=prune, select=deployments, outputs=lambda _p: outputs,
            project=project, env=os.environ, store_url=app.state, only=only,
        )
        if not app.json:
            show_plan(app, planned)
        root = app.project_file.resolve().parent
        result = apply_saved(store, planned, root=root) if planned.has_changes else None
        report(app, planned, result)


def run_builds(
    app: App, project: Project, deployments: tuple[str, ...], *, jobs: int | None, use_cache: bool,
    shared: SharedCache | None = None,
) -> OutputsFor:
    """Run build + push for the selected deployments; their outputs by deployment."""
    from buildsys.compiled import compile_project
    from buildsys.desired import BuildOutputs
    from buildsys.engine import build
    from buildsys.errors import BuildsysError

    compiled = compile_project(project, sections=("build", "push"), deployments=deployments)
    result = build(
        project, compiled.graph, compiled.steps, jobs=jobs, use_cache=use_cache, reporter=app.reporter,
        shared=shared,
    )
    if not result.ok:
        raise BuildsysError("the build failed; nothing was applied", hint="see the failed step above")

    def outputs(d: Deployment) -> BuildOutputs | None:
        return BuildOutputs(result.namespace(d.name))

    return outputs
