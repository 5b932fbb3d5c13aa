"""The `buildsys` click group: lazy, one module per command under this package (`COMMANDS`)."""

from __future__ import annotations

import importlib

import click

from buildsys import __version__
from buildsys.cli import COMMANDS, SHORT_HELP
from buildsys.cli.app import App, common_options


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
