"""A plain `buildsys build` or `buildsys push` without click: the launcher hands this module the
argument list when the no-op answer could not be given; when every argument is one this module
reads exactly as the click command does, the build runs without importing click or the command
modules (~20 ms of a rebuild's start); any other list (help, an error, an option it does not
read, a form it does not read, such as `-qv` or `-j2`) goes to click, which decides as always.

The accepted forms are a subset of click's: `tests/cli/test_direct.py` checks them against the
click command's own parsing on a table of argument lists, errors and `--help` included."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: the launcher asks this module before its no-op answer
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from buildsys.cli.app import App

SECTIONS = {"build": ("build",), "push": ("build", "push")}
# option name -> the command's parameter it sets (as click names it)
FLAGS = {
    "--no-cache": "no_cache", "--explain": "explain", "--keep-going": "keep_going",
    "--install-requires": "install_requires", "-n": "dry_run", "--dry-run": "dry_run", "--cache-write": "cache_write",
}
GLOBAL_FLAGS = {"--json", "--no-color"}
COUNTS = {"-v": 1, "--verbose": 1, "-q": -1, "--quiet": -1}
VALUED = {
    "-f": "file", "--file": "file", "-d": "deployments", "--deployment": "deployments", "-j": "jobs", "--jobs": "jobs",
    "--cache-from": "cache_from",
}
CACHE_ENV = "BUILDSYS_CACHE"  # --cache-from's environment variable (buildsys.cli.build)
# what a build's last manifest cannot answer for: a build that bypasses or writes caches, installs
# requirements or only shows what would run (and one given --cache-from, checked in `parse`)
NOT_FROM_MANIFEST = ("no_cache", "install_requires", "dry_run", "cache_write")


class Direct:
    """What click would give the command: the sections, the App's settings and the parameters."""

    __slots__ = ("color", "file", "json", "manifest_may_answer", "params", "sections", "verbosity")

    def __init__(self, sections: tuple[str, ...]) -> None:
        self.sections = sections
        self.file: str | None = None
        self.json = False
        self.verbosity = 0
        self.color = True
        self.manifest_may_answer = False  # a provable no-op may be answered from the manifest (`parse`)
        self.params: dict[str, Any] = {
            "deployments": (), "jobs": None, "no_cache": False, "explain": False, "keep_going": False,
            "install_requires": False, "dry_run": False, "affected_base": None, "cache_from": None,
            "cache_write": False,
        }

    def app(self) -> App:
        from buildsys.cli.app import App

        return App(file=self.file, json=self.json, verbosity=self.verbosity, color=self.color)


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Direct | None:
    """The build `argv` asks for, or None when click must read it."""
    if not argv or argv[0] not in SECTIONS:
        return None
    out = Direct(SECTIONS[argv[0]])
    given: set[str] = set()
    deployments: list[str] = []
    rest = list(argv[1:])
    rest.reverse()
    while rest:
        token = rest.pop()
        name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        if name in FLAGS or name in GLOBAL_FLAGS or name in COUNTS:
            if eq:
                return None  # click: the option does not take a value
            if name in COUNTS:
                out.verbosity += COUNTS[name]
            elif name == "--json":
                out.json = True
            elif name == "--no-color":
                out.color = False
            else:
                out.params[FLAGS[name]] = True
            continue
        target = VALUED.get(name)
        if target is None:
            return None  # help, an unknown option, an argument, a combined or attached short form
        if not eq:
            if not rest:
                return None  # click: the option requires an argument
            inline = rest.pop()
        if not inline or inline.startswith("-"):
            return None  # empty, or a value click may read as an option: click decides
        if target == "deployments":
            deployments.append(inline)
            continue
        if target in given:
            return None  # -f twice is an error; the others take the last: click decides
        given.add(target)
        if target == "file":
            out.file = inline
        elif target == "jobs":
            if not _plain_count(inline):
                return None
            out.params["jobs"] = int(inline)
        else:
            out.params["cache_from"] = inline
    out.params["deployments"] = tuple(deployments)
    out.manifest_may_answer = "cache_from" not in given and not any(out.params[p] for p in NOT_FROM_MANIFEST)
    if "cache_from" not in given:
        out.params["cache_from"] = environ.get(CACHE_ENV) or None  # click: an empty variable is unset
    return out


def try_no_op(direct: Direct) -> int | None:
    """The exit code of a build the manifest proves a no-op, its output written as the build's
    reporter would write it (`buildsys.noop.answer_no_op`); None to run the build."""
    if not direct.manifest_may_answer:
        return None
    from buildsys.noop import answer_no_op

    # a step's `cached` line as the reporter shows it: with --explain or -v, never below verbosity 0
    explain = (direct.params["explain"] or direct.verbosity > 0) and direct.verbosity >= 0
    return answer_no_op(
        direct.file or "prefect.yaml", direct.sections, direct.params["deployments"], as_json=direct.json, explain=explain
    )


def _plain_count(text: str) -> bool:
    """1 to 999,999,999 in ASCII digits, no sign, space or leading zero: what int() and click's
    IntRange(min=1) read as that number (int() also takes "+3", " 3", "1_0", other scripts' digits)."""
    return text.isascii() and text.isdigit() and text[0] != "0" and len(text) <= 9


def run(direct: Direct, args: list[str]) -> None:
    """Run the build as the click command would, failures ended by the same rule (`cli.failed`)."""
    from buildsys.cli import failed
    from buildsys.cli.buildrun import run_sections

    app = direct.app()
    try:
        try:
            run_sections(app, direct.sections, **direct.params)
        except (EOFError, KeyboardInterrupt) as exc:  # as click's main turns them into Abort
            import click

            if sys.stderr is not None:
                sys.stderr.write("\n")  # click: the blank line that closes the terminal's ^C echo
            raise click.exceptions.Abort() from exc
    except BaseException as exc:
        failed(app, args, exc)
