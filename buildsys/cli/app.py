"""The application object every command receives, and the global options that fill it.

Importing this module imports no click (a plain `build` or `plan` runs without it:
`buildsys.cli.direct`); the options import it when used, the output functions only where click
would write other bytes than the text itself (`echo`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from buildsys.printable import printable

if TYPE_CHECKING:
    import click

    from buildsys.errors import Diagnostic
    from buildsys.model import Project
    from buildsys.reporter import Reporter
    from buildsys.store.base import StateStore

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_STATE = ".buildsys/state.db"


class App:
    """Global settings plus lazily created services (project, store, reporter). A plain class (one
    object per process; never compared): a dataclass's generated methods cost every start-up."""

    def __init__(
        self,
        file: str | None = None,
        state_url: str | None = None,
        state_key_env: str | None = None,
        json: bool = False,
        verbosity: int = 0,
        color: bool = True,
    ) -> None:
        self.file = file
        self.state_url = state_url
        self.state_key_env = state_key_env  # the variable holding a Prefect API key (prefect+http stores)
        self.json = json
        self.verbosity = verbosity
        self.color = color
        self._reporter: Reporter | None = None
        self.warnings: list[Diagnostic] = []  # under --json: part of the document
        self.json_lines = False  # the command streams JSON Lines (build events…): one object per line

    @property
    def project_file(self) -> Path:
        return Path(self.file or "prefect.yaml")

    @property
    def state(self) -> str:
        return self.state_url or os.environ.get("BUILDSYS_STATE") or DEFAULT_STATE

    @property
    def use_color(self) -> bool:
        return self.color and not os.environ.get("NO_COLOR") and sys.stdout.isatty()

    def load_project(self, *, strict: bool = False) -> Project:
        """Load and validate the project file (reused from the cache layer when unchanged); raises
        ProjectError listing every problem."""
        from buildsys.caches import load_project

        return load_project(self.project_file, strict=strict)

    def open_store(self) -> StateStore:
        from buildsys.store import open_store

        return open_store(self.state, root=self.project_file.resolve().parent, key_env=self.state_key_env)

    @contextmanager
    def store(self) -> Iterator[StateStore]:
        """The state store (`open_store`), closed when the block ends, however it ends."""
        store = self.open_store()
        try:
            yield store
        finally:
            store.close()

    @property
    def store_description(self) -> str:
        """The store plan and apply read and write, said for people (`SQLite file /abs/path`, …)."""
        from buildsys.store import describe_store

        return describe_store(self.state, root=self.project_file.resolve().parent)

    @property
    def reporter(self) -> Reporter:
        if self._reporter is None:
            from buildsys.reporter import make_reporter

            self._reporter = make_reporter(json=self.json, color=self.use_color, verbosity=self.verbosity)
            self.json_lines = self.json
        return self._reporter

    def echo(self, text: str = "", *, err: bool = False, styled: bool = False) -> None:
        """Human output; suppressed on stdout under --json (machine output only there). Control and
        bidi characters are shown as escapes (`buildsys.printable`); `styled` text was made
        printable by its renderer, which added its own colour codes."""
        if self.json and not err:
            return
        if self.verbosity < 0 and not err:
            return
        echo(text if styled else printable(text), err=err, color=self.use_color)

    def warn(self, warning: Diagnostic | str) -> None:
        """A warning: on stderr for people; under --json also in the command's JSON document."""
        from buildsys.errors import Diagnostic

        diagnostic = warning if isinstance(warning, Diagnostic) else Diagnostic("warning", warning)
        self.warnings.append(diagnostic)
        echo(printable(diagnostic.render()), err=True, color=self.use_color)

    def emit_json(self, payload: object) -> None:
        """The command's one JSON document on stdout; an object also carries the warnings said."""
        import json

        if isinstance(payload, dict) and self.warnings:
            said = [w.as_dict() for w in self.warnings]
            payload = {**payload, "warnings": [*said, *payload.get("warnings", ())]}
        echo(json.dumps(payload, indent=None if self.json_lines else 2, sort_keys=False, default=str))

    def emit_error(self, error: BaseException, exit_code: int, *, crash_log: str | None = None) -> None:
        """Under --json, a failed command's document: what went wrong, every problem, the warnings."""
        from buildsys.errors import BuildsysError, Diagnostic

        if isinstance(error, BuildsysError):
            problems = error.diagnostics()
            main = Diagnostic("error", error.message, error.location, error.path, error.hint)
        else:
            main = Diagnostic("error", _message_of(error), hint=f"the traceback is in {crash_log}" if crash_log else None)
            problems = [main]
        self.emit_json({"ok": False, "exit_code": exit_code, "error": main.as_dict(),
                        "problems": [p.as_dict() for p in problems]})


def echo(text: str, *, err: bool = False, nl: bool = True, color: bool | None = None) -> None:
    """`click.echo(text, err=err, nl=nl, color=color)`, without importing click where click would
    write `text` to the stream as it is: a text stream with an encoding that is not ASCII and an
    error handler (click re-encodes any other stream), no escape sequence it would strip (click
    strips them unless `color` is true, or None on a terminal), and not Windows (its console)."""
    import codecs

    stream = sys.stderr if err else sys.stdout
    encoding = getattr(stream, "encoding", None)
    if ("click" in sys.modules or sys.platform == "win32" or not isinstance(encoding, str)
            or not isinstance(getattr(stream, "errors", None), str) or codecs.lookup(encoding).name == "ascii"
            or ("\x1b" in text and not color)):
        import click

        click.echo(text, err=err, nl=nl, color=color)
        return
    stream.write(text + "\n" if nl else text)
    stream.flush()


def ask_or_refuse(question: str, refusal: Exception) -> None:
    """The rule of every command that destroys or replaces something: ask `question` on a terminal
    (no is the default: the command aborts); without a terminal raise `refusal`, which says what was
    not done and which flag approves it (the caller skips this call when that flag was given)."""
    if not sys.stdin.isatty():
        raise refusal
    import click

    if not click.confirm(question, default=False):
        raise click.exceptions.Abort()


def _message_of(error: BaseException) -> str:
    click = sys.modules.get("click")  # a click exception exists only when click was imported
    if click is not None and isinstance(error, click.ClickException):
        return str(error.format_message())
    if click is not None and isinstance(error, click.exceptions.Abort):
        return "aborted"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return "internal error: buildsys crashed"


def _setter(attr: str, transform: Callable[[Any, App], Any] | None = None) -> Callable[..., Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        app = ctx.ensure_object(App)
        if value is None or value is False or value == 0 or value == ():
            return value
        setattr(app, attr, transform(value, app) if transform else value)
        return value

    return callback


def _one_file(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """-f names the one project file; given twice (before or after the command) it is an error."""
    import click

    app = ctx.ensure_object(App)
    given = ([app.file] if app.file else []) + list(value)
    if len(given) > 1:
        raise click.BadParameter(
            f"given {len(given)} times ({', '.join(given)}); a command reads one project file "
            "(`buildsys validate FILE…` checks several)",
            ctx=ctx, param=param,
        )
    if value:
        app.file = value[0]
    return value


def common_options(f: F) -> F:
    """The global options, accepted before or after the command name."""
    import click

    options = [
        click.option(
            "-f",
            "--file",
            "file_",
            metavar="PATH",
            multiple=True,  # so that a second -f is refused, not silently the one used
            help="Project file (default ./prefect.yaml).",
            expose_value=False,
            callback=_one_file,
        ),
        click.option(
            "--state",
            metavar="URL",
            help="State store: a path, sqlite:///…, http(s)://…, postgresql://… or prefect+http(s)://HOST/api (env BUILDSYS_STATE).",
            expose_value=False,
            callback=_setter("state_url"),
        ),
        click.option(
            "--state-key-env",
            metavar="NAME",
            help="Environment variable holding the API key of a prefect+http(s):// store (default PREFECT_API_KEY).",
            expose_value=False,
            callback=_setter("state_key_env"),
        ),
        click.option(
            "--json",
            "json_",
            is_flag=True,
            help="Machine output on stdout, nothing else there.",
            expose_value=False,
            callback=_setter("json"),
        ),
        click.option(
            "-v",
            "--verbose",
            count=True,
            help="More output.",
            expose_value=False,
            callback=_setter("verbosity", lambda v, app: app.verbosity + v),
        ),
        click.option(
            "-q",
            "--quiet",
            count=True,
            help="Less output.",
            expose_value=False,
            callback=_setter("verbosity", lambda v, app: app.verbosity - v),
        ),
        click.option(
            "--no-color",
            is_flag=True,
            help="No colour in output (also NO_COLOR).",
            expose_value=False,
            callback=_setter("color", lambda v, app: False),
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def pass_app(f: F) -> F:
    """Give a command the App object as its first argument."""
    import click

    return click.make_pass_decorator(App, ensure=True)(f)  # type: ignore[return-value]
