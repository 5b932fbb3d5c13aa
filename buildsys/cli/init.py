"""`buildsys init`: render a recipe (built-in or from git) into a directory."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from buildsys.cli.app import App, common_options, pass_app
from buildsys.errors import BuildsysError
from buildsys.printable import printable
from buildsys.recipes.manifest import (
    FieldSpec,
    MissingFieldsError,
    Recipe,
    ResolvedFields,
    builtin_recipes,
    common_fields,
    infer_recipe_name,
    resolve_fields,
)
from buildsys.recipes.render import RenderResult, render_recipe

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@click.command("init")
@click.option("--recipe", "recipe_spec", metavar="NAME|git+URL[@REV][#SUBDIR]",
              help="A built-in recipe, a recipe folder, or a git source. Default: inferred from the directory.")
@click.option("--field", "field_args", multiple=True, metavar="KEY=VALUE", help="A recipe field (repeatable).")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
@click.option("--again", is_flag=True,
              help="Render the recipe recorded in DIRECTORY's prefect.yaml again, at its recorded commit and fields.")
@click.argument("directory", required=False, default=".", type=click.Path(file_okay=False, path_type=Path))
@common_options
@pass_app
def init(app: App, recipe_spec: str | None, field_args: tuple[str, ...], force: bool, again: bool,
         directory: Path) -> None:
    """Start a project from a recipe, in DIRECTORY (default: here). Never overwrites without --force."""
    from buildsys.recipes.cache import resolve_recipe

    given = parse_fields(field_args)
    interactive = sys.stdin.isatty() and not app.json
    if again:
        if recipe_spec is not None:
            raise click.UsageError("--again uses the recorded recipe; leave out --recipe")
        recipe_spec, recorded = _recorded(directory)
        given = {**recorded, **given}
    if recipe_spec is None:
        recipe_spec = _choose_recipe(app, directory, interactive)
    recipe, warnings = resolve_recipe(recipe_spec)
    for warning in warnings:
        app.warn(str(warning))
    resolved = _fields(app, recipe, given, directory, interactive)
    for name in resolved.unknown:
        app.warn(f"recipe {recipe.name!r} has no field {name!r}; ignored")
    result = render_recipe(recipe, directory, resolved.values, force=force)
    _report(app, recipe, result)


def _recorded(directory: Path) -> tuple[str, dict[str, str]]:
    from buildsys.recipes.render import read_record, record_source

    project_file = directory / "prefect.yaml"
    record = read_record(project_file)
    if record is None:
        raise BuildsysError(f"{project_file} records no recipe (no `buildsys: {{recipe: …}}`)",
                            hint="pass --recipe NAME to render one")
    fields = record.get("fields") or {}
    return record_source(record), {str(k): str(v) for k, v in fields.items()}


def parse_fields(args: tuple[str, ...]) -> dict[str, str]:
    """`KEY=VALUE` pairs, split at the first `=`."""
    fields: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not _KEY.match(key):
            raise BuildsysError(f"invalid --field {arg!r}", hint="write --field KEY=VALUE, e.g. --field image_name=app")
        fields[key] = value
    return fields


def _choose_recipe(app: App, directory: Path, interactive: bool) -> str:
    inferred = infer_recipe_name(directory)
    if not interactive:
        app.echo(f"No --recipe given: using {inferred!r} (inferred from the directory).", err=True)
        return inferred
    recipes = builtin_recipes()
    width = max(len(r.name) for r in recipes)
    app.echo("Recipes:", err=True)
    for r in recipes:
        app.echo(f"  {r.name.ljust(width)}  {r.description}", err=True)
    choice: str = click.prompt("Recipe", default=inferred, type=click.Choice([r.name for r in recipes]),
                               err=True)
    return choice


def _fields(app: App, recipe: Recipe, given: dict[str, str], directory: Path, interactive: bool) -> ResolvedFields:
    common = common_fields(directory)
    while True:
        try:
            return resolve_fields(recipe, given, common=common)
        except MissingFieldsError as exc:
            if not interactive:
                raise
            for spec in exc.missing:
                given[spec.name] = _prompt(spec)


def _prompt(spec: FieldSpec) -> str:
    while True:
        value: str = click.prompt(f"{spec.name} ({spec.description})", err=True)
        problem = spec.problem(value)
        if problem is None:
            return value
        click.echo(printable(f"  {spec.name} {problem}"), err=True)


def _report(app: App, recipe: Recipe, result: RenderResult) -> None:
    if app.json:
        app.emit_json({"recipe": recipe.name, **recipe.source.record(), "directory": str(result.target),
                       "written": list(result.written), "overwritten": list(result.overwritten),
                       "unchanged": list(result.unchanged)})
        return
    origin = recipe.source.record()
    where = " (built-in)" if recipe.source.kind == "builtin" else f" from {origin['source']}"
    where += f" at {origin['commit'][:12]}" if "commit" in origin else ""
    app.echo(f"Rendered recipe {recipe.name!r}{where} into {result.target}:")
    for path in result.written:
        app.echo(f"  + {path}")
    for path in result.overwritten:
        app.echo(f"  ~ {path} (overwritten)")
    for path in result.unchanged:
        app.echo(f"  = {path} (unchanged)")
    app.echo("Next: buildsys validate && buildsys build && buildsys plan  (see README.md)")
