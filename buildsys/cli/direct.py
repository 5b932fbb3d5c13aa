"""A plain `buildsys build`, `buildsys push` or `buildsys plan` without click: the launcher hands
this module the argument list when the no-op answer could not be given; when every argument is one
this module reads exactly as the click command does, the command runs without importing click or
the command modules (~20 ms of a rebuild's start, ~8 ms of a plan's); any other list (help, an
error, an option it does not read, a form it does not read, such as `-qv` or `-j2`, shell
completion) goes to click, which decides as always. A plan's global options may come before its
name (`--json plan`), as CI scripts write them; a build's go to click there.

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
COMPLETE_ENV = "_BUILDSYS_COMPLETE"  # click's shell completion answers instead of the command
# plan's own options (buildsys.cli.plan), besides the global ones (COUNTS, GLOBAL_FLAGS, GLOBAL_VALUED)
PLAN_FLAGS = {"--prune": "prune", "--detailed-exitcode": "detailed_exitcode", "--full": "full"}
GLOBAL_VALUED = {"-f": "file", "--file": "file", "--state": "state_url", "--state-key-env": "state_key_env"}
PLAN_VALUED = {**GLOBAL_VALUED, "--ref": "ref", "-o": "out", "--out": "out", "-d": "deployments", "--deployment": "deployments"}
AFFECTED = "--affected"  # its value is optional: alone, the merge base (buildsys.cli.affected.MERGE_BASE, "")
# what a build's last manifest cannot answer for: a build that bypasses or writes caches, installs
# requirements or only shows what would run (and one given --cache-from, checked in `parse`)
NOT_FROM_MANIFEST = ("no_cache", "install_requires", "dry_run", "cache_write")


class Direct:
    """What click would give the command: the sections, the App's settings and the parameters."""

    __slots__ = ("color", "command", "file", "json", "manifest_may_answer", "params", "sections", "state_key_env",
                 "state_url", "verbosity")

    def __init__(self, sections: tuple[str, ...], command: str = "build") -> None:
        self.command = command  # "build" (build or push: `sections` says which) or "plan"
        self.sections = sections
        self.file: str | None = None
        self.state_url: str | None = None
        self.state_key_env: str | None = None
        self.json = False
        self.verbosity = 0
        self.color = True
        self.manifest_may_answer = False  # a provable no-op may be answered from the manifest (`parse`)
        self.params: dict[str, Any] = {
            "deployments": (), "jobs": None, "no_cache": False, "explain": False, "keep_going": False,
            "install_requires": False, "dry_run": False, "affected_base": None, "cache_from": None,
            "cache_write": False,
        } if command == "build" else {
            "ref": None, "out": None, "prune": False, "detailed_exitcode": False, "deployments": (), "full": False,
            "affected_base": None,
        }

    def app(self) -> App:
        from buildsys.cli.app import App

        return App(file=self.file, state_url=self.state_url, state_key_env=self.state_key_env, json=self.json,
                   verbosity=self.verbosity, color=self.color)


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Direct | None:
    """The build or plan `argv` asks for, or None when click must read it."""
    if not argv or environ.get(COMPLETE_ENV):
        return None
    if argv[0] not in SECTIONS:
        return _parse_plan(argv)
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
        value = _value(eq, inline, rest)
        if value is None:
            return None
        if target == "deployments":
            deployments.append(value)
            continue
        if target in given:
            return None  # -f twice is an error; the others take the last: click decides
        given.add(target)
        if target == "file":
            out.file = value
        elif target == "jobs":
            if not _plain_count(value):
                return None
            out.params["jobs"] = int(value)
        else:
            out.params["cache_from"] = value
    out.params["deployments"] = tuple(deployments)
    out.manifest_may_answer = "cache_from" not in given and not any(out.params[p] for p in NOT_FROM_MANIFEST)
    if "cache_from" not in given:
        out.params["cache_from"] = environ.get(CACHE_ENV) or None  # click: an empty variable is unset
    return out


def _parse_plan(argv: Sequence[str]) -> Direct | None:
    """`[GLOBAL OPTIONS] plan [OPTIONS]` as the group and the plan command read it, or None."""
    out = Direct((), command="plan")
    files: list[str] = []
    deployments: list[str] = []
    named = False  # the command's name was read: its options follow
    rest = list(argv)
    rest.reverse()
    while rest:
        token = rest.pop()
        if not named and not token.startswith("-"):
            if token != "plan":
                return None
            named = True
            continue
        name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        if name in GLOBAL_FLAGS or name in COUNTS or (named and name in PLAN_FLAGS):
            if eq:
                return None  # click: the option does not take a value
            if name in COUNTS:
                out.verbosity += COUNTS[name]  # the group's and the command's add up, as their callbacks do
            elif name == "--json":
                out.json = True
            elif name == "--no-color":
                out.color = False
            else:
                out.params[PLAN_FLAGS[name]] = True
            continue
        if named and name == AFFECTED:
            if out.params["affected_base"] is not None:
                return None
            if eq:
                base = inline
            elif not rest or (rest[-1].startswith("-") and len(rest[-1]) > 1):
                base = ""  # click: no value, or the next looks like an option
            else:
                base = rest.pop()  # click takes the next argument as its value
            if (eq or base) and (not base or base.startswith("-")):
                return None
            out.params["affected_base"] = base
            continue
        target = (PLAN_VALUED if named else GLOBAL_VALUED).get(name)
        if target is None:
            return None  # help, --version, an unknown option, an argument, a combined or attached short form
        value = _value(eq, inline, rest)
        if value is None:
            return None
        if target == "deployments":
            deployments.append(value)
        elif target == "file":
            files.append(value)  # more than one is an error, before or after the name
        elif target in ("ref", "out"):
            if out.params[target] is not None:
                return None  # twice: click takes the last; not read here
            out.params[target] = value
        else:
            setattr(out, target, value)  # the last one given, as the group's then the command's callbacks set it
    if not named or len(files) > 1 or (out.params["affected_base"] is not None and out.params["ref"] is not None):
        return None  # no command, -f twice, --affected with --ref: click (and the command) say why
    if out.params["out"] is not None:
        if not _new_or_readable_file(out.params["out"]):
            return None
        from pathlib import Path

        out.params["out"] = Path(out.params["out"])
    out.file = files[0] if files else None
    out.params["deployments"] = tuple(deployments)
    return out


def _value(eq: str, inline: str, rest: list[str]) -> str | None:
    """An option's value: after its `=`, else the next argument (taken off `rest`, which holds the
    arguments left in reverse); None where click must decide."""
    if not eq:
        if not rest:
            return None  # click: the option requires an argument
        inline = rest.pop()
    if not inline or inline.startswith("-"):
        return None  # empty, or a value click may read as an option: click decides
    return inline


def _new_or_readable_file(path: str) -> bool:
    """What click.Path(dir_okay=False) takes without a word: a path that is not there yet, or a
    readable one that is not a directory."""
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return True
    return not stat.S_ISDIR(mode) and os.access(path, os.R_OK)


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
    """Run the build or plan as the click command would, failures ended by the same rule (`cli.failed`)."""
    from buildsys.cli import failed

    app = direct.app()
    try:
        try:
            if direct.command == "plan":
                from buildsys.cli.planrun import run_plan

                run_plan(app, **direct.params)
            else:
                from buildsys.cli.buildrun import run_sections

                run_sections(app, direct.sections, **direct.params)
        except (EOFError, KeyboardInterrupt) as exc:  # as click's main turns them into Abort
            import click

            if sys.stderr is not None:
                sys.stderr.write("\n")  # click: the blank line that closes the terminal's ^C echo
            raise click.exceptions.Abort() from exc
    except BaseException as exc:
        failed(app, args, exc)
