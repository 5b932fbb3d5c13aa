"""The `buildsys` command line: a lazy click group (`buildsys.cli.group`), one module per command
under this package, and the entry point that turns failures into messages and exit codes.

Heavy modules are imported only by the command that needs them, so `--help` stays instant. This
module imports no click (a plain `build` or `push` runs without it: `buildsys.cli.direct`) and
nothing at all that the launcher's no-op answer does not (it asks `buildsys.cli.direct` first).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: the no-op answer imports nothing it does not need
if TYPE_CHECKING:
    from typing import NoReturn

    from buildsys.cli.app import App
    from buildsys.cli.group import COMMANDS as COMMANDS
    from buildsys.cli.group import SHORT_HELP as SHORT_HELP
    from buildsys.cli.group import LazyGroup as LazyGroup
    from buildsys.cli.group import cli as cli

def __getattr__(name: str) -> object:
    """`cli`, `LazyGroup`, `COMMANDS` and `SHORT_HELP` (buildsys.cli.group), imported with click
    when first asked for."""
    if name in ("cli", "LazyGroup", "COMMANDS", "SHORT_HELP"):
        from buildsys.cli import group

        return getattr(group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors → one message, exit 1; bugs → traceback in a log file, exit 3.

    Under --json a failure is also one JSON document on stdout (schemas/cli/error.schema.json)."""
    from buildsys.cli.app import App
    from buildsys.cli.group import cli

    app = App()
    args = sys.argv[1:] if argv is None else argv
    try:
        code = cli.main(args=argv, prog_name="buildsys", standalone_mode=False, obj=app)
        if isinstance(code, int) and code:
            sys.exit(code)  # standalone_mode=False returns ctx.exit(N)'s code instead of exiting
    except BaseException as exc:
        failed(app, args, exc)


def failed(app: App, args: list[str], exc: BaseException) -> NoReturn:
    """End a command that raised `exc` (re-raised when it is SystemExit): the one rule for the
    click group and the direct path (`buildsys.cli.direct`). A click exception can only have been
    raised when click was imported: it is not imported to ask."""
    import io

    from buildsys.errors import BuildsysError
    from buildsys.printable import printable

    click = sys.modules.get("click")
    if isinstance(exc, SystemExit):
        raise exc
    if click is not None and isinstance(exc, click.exceptions.Exit):
        sys.exit(exc.exit_code)
    if click is not None and isinstance(exc, click.exceptions.Abort):
        _say("Aborted.")
        _fail(app, args, exc, 1)
    if click is not None and isinstance(exc, click.ClickException):
        shown = io.StringIO()  # a usage error repeats what was typed: shown printable, as all output
        exc.show(file=shown)
        _say(printable(shown.getvalue()), nl=False)
        _fail(app, args, exc, 1 if exc.exit_code == 2 else exc.exit_code)
    if isinstance(exc, BuildsysError):
        _say(printable(exc.render()))
        _fail(app, args, exc, exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        _say("Interrupted.")
        _fail(app, args, exc, 130)
    path = _write_crash_log(exc)
    _say(f"internal error: buildsys crashed; the traceback is in {path}")
    _fail(app, args, exc, 3, crash_log=path)


def _say(text: str, *, nl: bool = True) -> None:
    """A message on stderr as `click.echo(text, err=True)` writes it (`buildsys.cli.app.echo`)."""
    from buildsys.cli.app import echo

    echo(text, err=True, nl=nl)


def _fail(app: App, args: list[str], error: BaseException, code: int, *, crash_log: str | None = None) -> NoReturn:
    if app.json or "--json" in args:  # a usage error may come before --json was parsed
        app.emit_error(error, code, crash_log=crash_log)
    sys.exit(code)


def _write_crash_log(exc: BaseException) -> str:
    import tempfile  # only after a crash: tempfile and traceback cost every command's start-up
    import traceback
    from datetime import datetime

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    fd, path = tempfile.mkstemp(prefix=f"buildsys-crash-{stamp}-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"buildsys {' '.join(sys.argv[1:])}\n\n")
        fh.write("".join(traceback.format_exception(exc)))
    return path
