"""The `buildsys` click group: lazy, one module per command of this package (`COMMANDS`)."""

from __future__ import annotations

import importlib

import click

from buildsys import __version__
from buildsys.cli.app import App, common_options

# command name -> (module, attribute)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("buildsys.cli.validate", "validate"),
    "graph": ("buildsys.cli.graph", "graph"),
    "build": ("buildsys.cli.build", "build"),
    "push": ("buildsys.cli.build", "push"),
    "pull": ("buildsys.cli.pull", "pull"),
    "plan": ("buildsys.cli.plan", "plan"),
    "affected": ("buildsys.cli.affected", "affected"),
    "apply": ("buildsys.cli.apply", "apply"),
    "deploy": ("buildsys.cli.deploy", "deploy"),
    "watch": ("buildsys.cli.watch", "watch"),
    "init": ("buildsys.cli.init", "init"),
    "recipes": ("buildsys.cli.recipes", "recipes"),
    "steps": ("buildsys.cli.steps", "steps"),
    "pool": ("buildsys.cli.pool", "pool"),
    "run": ("buildsys.cli.run", "run"),
    "runs": ("buildsys.cli.runs", "runs"),
    "worker": ("buildsys.cli.worker", "worker"),
    "server": ("buildsys.cli.server", "server"),
    "cache": ("buildsys.cli.cache", "cache"),
    "state": ("buildsys.cli.state", "state"),
    "import": ("buildsys.cli.adopt", "import_"),
    "deployment": ("buildsys.cli.deployment", "deployment"),
    "show": ("buildsys.cli.show", "show"),
    "output": ("buildsys.cli.output", "output"),
    "help": ("buildsys.cli.help", "help_"),
    "completion": ("buildsys.cli.completion", "completion"),
    "ui": ("buildsys.cli.ui", "ui"),
}

SHORT_HELP: dict[str, str] = {
    "validate": "Check the project file, step inputs, templates and graph.",
    "graph": "Show the step graph (text, dot, mermaid, json).",
    "build": "Run the build steps (cached, in parallel).",
    "push": "Run the build and push steps.",
    "pull": "Run a deployment's pull steps here, as a worker would.",
    "plan": "Show what apply would change in the state store.",
    "affected": "List the steps and deployments a change since a git ref affects.",
    "apply": "Apply a saved plan, or plan and apply.",
    "deploy": "Build, push, plan and apply in one go.",
    "watch": "Rebuild (and re-apply) on every change.",
    "init": "Start a project from a recipe.",
    "recipes": "List and show recipes.",
    "steps": "List and show the available steps.",
    "pool": "Work pools and the job a deployment would get.",
    "run": "Create a flow run of a deployment (and follow it).",
    "runs": "List, inspect, follow and cancel flow runs.",
    "worker": "Run the bundled worker.",
    "server": "Serve the state store over HTTP.",
    "cache": "Inspect and clean the build cache.",
    "state": "Show, export and import the state store; rm: stop managing a resource.",
    "import": "Make this project the owner of a resource made outside it.",
    "deployment": "Pause and resume a deployment's schedules.",
    "output": "Print a build output from the cache (e.g. the image tag a step made).",
    "show": "Render a saved plan (as plan printed it, or --json).",
    "help": "Read a help topic (`buildsys help` lists them).",
    "completion": "Print the shell completion script (bash, zsh, fish).",
    "ui": "Open the web UI for this project's state store.",
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module = importlib.import_module(target[0])
        cmd = getattr(module, target[1])
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="buildsys")  # not package_name: that reads the installed metadata
@common_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """buildsys: cached builds, plan/apply and a worker for prefect.yaml projects."""
    ctx.ensure_object(App)
