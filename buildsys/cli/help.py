"""`buildsys help [TOPIC]`: the topics shipped in `buildsys/docs/`, and each command's own help."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import click

from buildsys.cli.app import App, common_options, pass_app

if TYPE_CHECKING:
    from buildsys.docs import Topic

_COMMENT = re.compile(r"<!--.*-->")


@click.command("help")
@click.argument("topic", required=False, metavar="[TOPIC]")
@common_options
@pass_app
@click.pass_context
def help_(ctx: click.Context, app: App, topic: str | None) -> None:
    """Read a help topic (without TOPIC: list them). A command's name shows that command's --help."""
    from buildsys import docs

    root = ctx.find_root()
    group = root.command
    commands = group.list_commands(root) if isinstance(group, click.Group) else []
    if topic is None:
        _list(app, docs.topics(), commands)
        return
    if topic in commands and topic not in {t.name for t in docs.topics()}:
        command = group.get_command(root, topic) if isinstance(group, click.Group) else None
        if command is not None:
            with click.Context(command, info_name=topic, parent=root) as sub:
                app.echo(command.get_help(sub))
            return
    found = docs.topic(topic, commands)
    if app.json:
        app.emit_json({"topic": found.name, "title": found.title, "summary": found.summary,
                       "generated": found.generated, "text": found.text})
        return
    _render(app, found.text)


def _list(app: App, items: list[Topic], commands: list[str]) -> None:
    if app.json:
        app.emit_json({"topics": [{"topic": t.name, "title": t.title, "summary": t.summary,
                                   "generated": t.generated} for t in items],
                       "commands": commands})
        return
    width = max((len(t.name) for t in items), default=0)
    app.echo("Help topics (buildsys help TOPIC):")
    for t in items:
        app.echo(f"  {t.name.ljust(width)}  {t.summary}")
    app.echo("")
    app.echo("Commands (buildsys help COMMAND, or buildsys COMMAND --help):")
    app.echo("  " + ", ".join(commands))


def _render(app: App, text: str) -> None:
    # Lines that are whole HTML comments are notes for the docs' tests (how an example runs), not text.
    text = "".join(line for line in text.splitlines(keepends=True) if not _COMMENT.fullmatch(line.strip()))
    if not app.use_color:
        app.echo(text.rstrip("\n"))
        return
    from rich.console import Console
    from rich.markdown import Markdown

    Console().print(Markdown(text))
