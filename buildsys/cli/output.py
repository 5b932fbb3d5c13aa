"""`buildsys output STEP[.KEY]`: a build output as the cache holds it for the current inputs (the image
tag a step produced, say), without running anything — as `terraform output` reads the state."""

from __future__ import annotations

import json
import sys

import click

from buildsys.cli import completion
from buildsys.cli.app import App, common_options, pass_app


@click.command("output")
@click.argument("reference", metavar="STEP[.KEY]", shell_complete=completion.step_ids)
@common_options
@pass_app
def output(app: App, reference: str) -> None:
    """Print STEP's outputs (JSON), or one of them (a string as it is), from the build cache.

    Refused when the step would run now (its inputs changed or it never ran): the outputs then are
    not known; `buildsys build` first."""
    from buildsys.caches import compiled_build
    from buildsys.engine import Engine
    from buildsys.errors import BuildsysError
    from buildsys.graph import find_node

    step, _, key = reference.partition(".")
    compiled = compiled_build(app.project_file, sections=("build", "push"), deployments=())
    target = find_node(compiled.graph, step)
    engine = Engine(compiled.project, compiled.graph, compiled.steps, dry_run=True)
    try:
        decision = engine.foresee()[target]
    finally:
        engine.cache.close()
    if not decision.cached:
        raise BuildsysError(f"step {step!r} has no outputs for its current inputs ({decision.reason})",
                            hint="run `buildsys build` (or `push`) first")
    outputs = decision.outputs or {}
    if key and key not in outputs:
        from buildsys.suggest import did_you_mean

        raise BuildsysError(f"step {step!r} has no output {key!r}",
                            hint=did_you_mean(key, outputs) or f"its outputs: {', '.join(sorted(outputs)) or 'none'}")
    value = outputs[key] if key else outputs
    if app.json:
        app.emit_json({"step": step, "key": key or None, "value": value})
    else:
        from buildsys.printable import printable

        text = value if isinstance(value, str) else json.dumps(value, indent=2, default=str)
        # exactly the value for `$(buildsys output …)`; on a terminal, shown printable like all output
        click.echo(printable(text) if sys.stdout.isatty() else text)
