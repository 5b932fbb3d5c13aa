"""`buildsys validate`: every problem in the project file, step inputs, templates and graph."""

from __future__ import annotations

import click

from buildsys.cli.app import App, common_options, pass_app


@click.command()
@click.option("--strict", is_flag=True, help="Treat warnings (unknown keys…) as errors.")
@common_options
@pass_app
def validate(app: App, strict: bool) -> None:
    """Load and check the project file, step inputs, templates and graph.

    Prints each problem as FILE:LINE:COL: error|warning: message, with the document path and a hint.
    Exit 0 when valid (warnings allowed unless --strict), 1 otherwise.
    """
    from buildsys.validation import validate_project

    problems, summary = validate_project(app.project_file, strict=strict)
    if app.json:
        app.emit_json({"valid": not any(p.is_error for p in problems), "problems": [p.as_dict() for p in problems], **summary})
    else:
        for p in problems:
            click.echo(p.render(), err=True)
        errors = sum(1 for p in problems if p.is_error)
        warnings = len(problems) - errors
        if errors:
            app.echo(f"{app.project_file}: invalid ({errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)})", err=True)
        else:
            app.echo(
                f"{app.project_file}: valid — {summary['deployments']} deployment(s), {summary['steps']} step(s)"
                + (f", {warnings} warning{'s' * (warnings != 1)}" if warnings else "")
            )
    if any(p.is_error for p in problems):
        raise SystemExit(1)
