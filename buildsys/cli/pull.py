"""`buildsys pull -d DEPLOYMENT`: run a deployment's pull steps here, as a worker would."""

from __future__ import annotations

import os

import click

from buildsys.cli.app import App, common_options, pass_app


@click.command()
@click.option("-d", "--deployment", "deployment", required=True, help="The deployment whose pull steps to run.")
@common_options
@pass_app
def pull(app: App, deployment: str) -> None:
    """Run the deployment's pull steps in order (Prefect's namespace rules).

    They run in the project directory (the one holding the project file); build outputs they
    reference come from the build cache, as `apply` would bake them in.
    """
    from buildsys.engine import cached_namespace
    from buildsys.errors import BuildsysError
    from buildsys.graph import select_deployments
    from buildsys.runtime import RuntimeFailure, run_pull_steps
    from buildsys.templating import Scope, render

    project = app.load_project()
    (dep,) = select_deployments(project, [deployment])[:1]
    namespace, _pending = cached_namespace(project, dep.name)
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
