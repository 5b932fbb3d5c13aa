"""`buildsys validate [FILE]…`: every problem in the project file(s), step inputs, templates and graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from buildsys.cli.app import App, common_options, pass_app


@click.command()
@click.argument("files", nargs=-1, metavar="[FILE]...", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--strict", is_flag=True, help="Treat warnings (unknown keys…) as errors.")
@common_options
@pass_app
def validate(app: App, files: tuple[Path, ...], strict: bool) -> None:
    """Load and check the project file(s), step inputs, templates and graph.

    Checks -f FILE (default ./prefect.yaml), or every FILE given (as the pre-commit hook passes them).
    Prints each problem as FILE:LINE:COL: error|warning: message, with the document path and a hint.
    Exit 0 when valid (warnings allowed unless --strict), 1 otherwise.
    """
    if files and app.file:
        raise click.UsageError("give the project files either as arguments or with -f, not both")
    results = [_check(app, path, strict) for path in (files or (app.project_file,))]
    if app.json:
        if files:
            app.emit_json({"valid": all(r["valid"] for r in results), "files": results})
        else:
            app.emit_json({key: value for key, value in results[0].items() if key != "file"})
    if not all(r["valid"] for r in results):
        raise SystemExit(1)


def _check(app: App, path: Path, strict: bool) -> dict[str, Any]:
    from buildsys.validation import validate_project

    problems, summary = validate_project(path, strict=strict)
    errors = sum(1 for p in problems if p.is_error)
    if not app.json:
        for p in problems:
            app.echo(p.render(), err=True)
        warnings = len(problems) - errors
        if errors:
            app.echo(f"{path}: invalid ({errors} error{'s' * (errors != 1)}, "
                     f"{warnings} warning{'s' * (warnings != 1)})", err=True)
        else:
            app.echo(f"{path}: valid — {summary['deployments']} deployment(s), {summary['steps']} step(s)"
                     + (f", {warnings} warning{'s' * (warnings != 1)}" if warnings else ""))
    return {"file": str(path), "valid": not errors, "problems": [p.as_dict() for p in problems], **summary}
