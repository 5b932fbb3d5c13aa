"""`buildsys completion SHELL`: the shell completion script, and the completers of names in the project.

Completers never fail: a project that does not load simply completes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from buildsys.cli.app import App, common_options, pass_app

if TYPE_CHECKING:  # click.shell_completion only when completing: every command imports this module
    from click.shell_completion import CompletionItem

SHELLS = ("bash", "zsh", "fish")


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@common_options
@pass_app
@click.pass_context
def completion(ctx: click.Context, app: App, shell: str) -> None:
    """Print the completion script for SHELL (see `buildsys help completion`)."""
    from click.shell_completion import get_completion_class

    root = ctx.find_root()
    cls = get_completion_class(shell)
    assert cls is not None  # every name in SHELLS is one of click's
    script = cls(root.command, {}, "buildsys", "_BUILDSYS_COMPLETE").source()
    click.echo(script)


def _project_for(ctx: click.Context) -> object | None:
    app = ctx.find_object(App)
    try:
        from buildsys.caches import load_project  # the cached load: completion must answer at once

        return load_project(app.project_file if app else App().project_file)
    except Exception:  # a broken or missing project completes nothing
        return None


def deployments(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Deployment names of the project file (for -d and DEPLOYMENT arguments)."""
    from click.shell_completion import CompletionItem

    project = _project_for(ctx)
    names = sorted({d.name for d in getattr(project, "deployments", ())})
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def step_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Ids of the project's build and push steps (for STEP arguments)."""
    from click.shell_completion import CompletionItem

    project = _project_for(ctx)
    specs = [*getattr(project, "build", ()), *getattr(project, "push", ())]
    for deployment in getattr(project, "deployments", ()):
        specs += [*deployment.build, *deployment.push]
    names = sorted({s.id for s in specs if s.id})
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def step_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Registered step names and aliases (for `steps show NAME`); reads metadata only."""
    from click.shell_completion import CompletionItem

    try:
        from buildsys import registry

        infos = registry.available()
    except Exception:
        return []
    names = sorted({n for i in infos for n in (i.name, *i.aliases)})
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]
