"""`buildsys pull -d DEPLOYMENT`: run a deployment's pull steps here, as a worker would."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from buildsys.cli import completion
from buildsys.cli.app import App, common_options, pass_app

if TYPE_CHECKING:
    from buildsys.model import StepSpec


@click.command()
@click.option("-d", "--deployment", "deployment", required=True, help="The deployment whose pull steps to run.",
              shell_complete=completion.deployments)
@common_options
@pass_app
def pull(app: App, deployment: str) -> None:
    """Run the deployment's pull steps in order (Prefect's namespace rules).

    They run in the project directory (the one holding the project file); build outputs they
    reference come from the build cache, as `apply` would bake them in.
    """
    from buildsys.engine import cached_namespace
    from buildsys.errors import BuildsysError
    from buildsys.runtime import RuntimeFailure, run_pull_steps
    from buildsys.selector import select_deployments
    from buildsys.templating import Scope, render

    project = app.load_project()
    (dep,) = select_deployments(project, [deployment])[:1]
    namespace, pending = cached_namespace(project, dep.name)
    _require_built(dep.pull, pending)
    outputs = {k: v for k, v in namespace.items() if isinstance(v, dict)}
    baked = render([dict(s.raw) for s in dep.pull], Scope(outputs=outputs), missing="keep")
    variables = {v.name: v.value for v in project.variables}
    lines: list[str] = []

    def emit(line: str) -> None:
        lines.append(line)
        app.echo(line, err=app.json)

    try:
        result = run_pull_steps(baked, root=project.root, env=os.environ, variables=variables, emit=emit)
    except RuntimeFailure as exc:
        raise BuildsysError(str(exc)) from None
    if app.json:
        app.emit_json({"deployment": dep.name, "outputs": result})
    else:
        final = [o.get("directory") for o in result.values() if isinstance(o, dict) and o.get("directory")]
        app.echo(f"pull steps of {dep.name} done" + (f"; directory: {final[-1]}" if final else ""))


def _require_built(steps: Sequence[StepSpec], pending: set[str]) -> None:
    """A pull step that uses a build output needs that build step's cached result."""
    from buildsys.errors import BuildsysError
    from buildsys.templating import placeholders

    for spec in steps:
        for ph in placeholders(spec.inputs):
            if ph.kind == "output" and ph.step_id in pending:
                raise BuildsysError(
                    f"{ph.text} uses the output of build step {ph.step_id!r}, which has no result for the "
                    "current inputs (it never ran, or its last run failed)",
                    location=spec.location,
                    path=spec.path,
                    hint="run `buildsys build` (or `buildsys push`) first",
                )
