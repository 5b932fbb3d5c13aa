"""`buildsys recipes ls [SOURCE]` and `buildsys recipes show NAME`."""

from __future__ import annotations

import click

from buildsys.cli.app import App, common_options, pass_app
from buildsys.recipes.manifest import Recipe


@click.group("recipes")
@common_options
def recipes() -> None:
    """List and show recipes (built-in, or found in a git repository)."""


@recipes.command("ls")
@click.argument("source", required=False, metavar="[git+URL[@REV]]")
@common_options
@pass_app
def ls(app: App, source: str | None) -> None:
    """The built-in recipes, or the recipes found in a git repository."""
    from buildsys.recipes.cache import RecipeCache, is_git_source, parse_git_source
    from buildsys.recipes.manifest import RecipeSource, builtin_recipes, find_recipes

    if source is None:
        found = builtin_recipes()
    else:
        if not is_git_source(source):
            raise click.BadParameter("expected a git source: git+URL[@REV]", param_hint="SOURCE")
        ref = parse_git_source(source)
        out = RecipeCache().checkout(ref)
        for warning in out.warnings:
            app.warn(str(warning))
        prefix = f"{ref.subdir}/" if ref.subdir else ""
        found = [r for r in find_recipes(out.tree, RecipeSource("git", ref.url, ref.rev, out.commit))
                 if f"{r.source.subdir or ''}/".startswith(prefix)]
    if app.json:
        app.emit_json([_summary(r) for r in found])
        return
    if not found:
        app.echo("No recipes found.")
        return
    names = [_display_name(r, source) for r in found]
    width = max(len(n) for n in names)
    for name, recipe in zip(names, found, strict=True):
        app.echo(f"{name.ljust(width)}  {recipe.description}")


@recipes.command("show")
@click.argument("name", metavar="NAME|git+URL[@REV][#SUBDIR]")
@common_options
@pass_app
def show(app: App, name: str) -> None:
    """A recipe's description, fields and files."""
    from buildsys.recipes.cache import resolve_recipe

    recipe, warnings = resolve_recipe(name)
    for warning in warnings:
        app.warn(str(warning))
    files = sorted(p.relative_to(recipe.directory).as_posix() for p in recipe.directory.rglob("*")
                   if p.is_file() and p.name != "recipe.yaml" and "__pycache__" not in p.parts)
    if app.json:
        app.emit_json({**_summary(recipe), "files": files})
        return
    app.echo(f"{recipe.name}: {recipe.description}")
    app.echo("")
    app.echo("Fields:")
    for spec in recipe.fields:
        rule = f"one of {', '.join(spec.enum)}" if spec.enum else (f"matches {spec.pattern}" if spec.pattern else "")
        default = f"default {spec.default!r}" if spec.default is not None else "no default"
        env = f", env {spec.env}" if spec.env else ""
        need = "required" if spec.required else "optional"
        app.echo(f"  {spec.name}  ({need}, {default}{env}{', ' + rule if rule else ''})")
        app.echo(f"      {spec.description}")
    app.echo("")
    app.echo("Files:")
    for path in files:
        app.echo(f"  {path}")
    app.echo("")
    app.echo(f"Use it: buildsys init --recipe {name}" + "".join(
        f" --field {s.name}=…" for s in recipe.fields if s.required and s.default is None))


def _display_name(recipe: Recipe, source: str | None) -> str:
    if source is None:
        return recipe.name
    sub = recipe.source.subdir
    return f"{recipe.name} (#{sub})" if sub else recipe.name


def _summary(recipe: Recipe) -> dict[str, object]:
    return {
        "name": recipe.name,
        "description": recipe.description,
        **recipe.source.record(),
        "fields": [
            {"name": f.name, "description": f.description, "default": f.default, "env": f.env,
             "pattern": f.pattern, "enum": list(f.enum), "required": f.required}
            for f in recipe.fields
        ],
    }
