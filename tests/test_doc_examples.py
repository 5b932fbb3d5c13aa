"""Every shell example in the docs runs as written, or says in the doc why it is not run here.

The examples are the fenced ``console``, ``sh``, ``bash`` and ``shell`` blocks of the README, the help
topics (``buildsys/docs/*.md``, shown by ``buildsys help TOPIC``) and the examples' READMEs. Each is
preceded by HTML comments (invisible on GitHub and in ``buildsys help``) saying how it runs:

    <!-- run in: WHERE -->            an empty folder | the project above | a folder of the repository
    <!-- first: SHELL -->             optional: prepares WHERE before the example (a build, a change)
    <!-- exit codes: N N … -->        optional: each command's exit status, when not all 0

or why it is not run here:

    <!-- not run: REASON -->          a service, a long-running command, your shell's start-up file…

``the project above`` is the nearest ``yaml`` block above the example, written as ``prefect.yaml``.
A command is a ``$ `` line of a console block (the lines under it, up to the next ``$ ``, are what it
prints: each must appear in its output, in order; ``…`` or ``...`` stand for anything, durations
may differ) or a line of a sh/bash block. An example's commands run as at one terminal (a ``cd`` or
an ``export`` holds for the next ones) in the prepared folder, a plain ``buildsys ARGS`` in this
process, anything else in bash with the repository's ``buildsys`` first on PATH; a temp HOME and
no store configured.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from buildsys.cli import main

REPO = Path(__file__).resolve().parent.parent
SHELL_LANGUAGES = {"console", "sh", "bash", "shell"}
KEYS = ("run in", "first", "exit codes", "not run")
_MARKER = re.compile(r"<!-- (?P<key>run in|first|exit codes|not run): (?P<value>.+?) -->")
_DURATION = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s)\b")
EMPTY = "an empty folder"
ABOVE = "the project above"


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "buildsys" / "docs").glob("*.md")),
            *sorted((REPO / "examples").glob("*/README.md"))]


@dataclass(frozen=True)
class Command:
    text: str
    prints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Example:
    doc: str
    line: int  # of the opening fence
    language: str
    body: tuple[str, ...]
    notes: dict[str, str] = field(default_factory=dict)
    yaml_above: str | None = None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    def commands(self) -> list[Command]:
        if self.language == "console":
            found: list[Command] = []
            for line in self.body:
                if line.startswith("$ "):
                    found.append(Command(line[2:]))
                elif found:
                    last = found[-1]
                    found[-1] = Command(last.text, (*last.prints, line))
            return found
        return [Command(line) for line in self.body if line.strip() and not line.lstrip().startswith("#")]


def examples(path: Path) -> list[Example]:
    """The shell blocks of one Markdown file, with the marker comments right above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Example] = []
    yaml_above: str | None = None
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if not stripped.startswith("```"):
            i += 1
            continue
        indent = len(lines[i]) - len(stripped)
        language = stripped[3:].strip()
        end = i + 1
        while end < len(lines) and not lines[end].lstrip().startswith("```"):
            end += 1
        body = tuple(line[indent:] if not line[:indent].strip() else line for line in lines[i + 1:end])
        if language == "yaml":
            yaml_above = "\n".join(body) + "\n"
        elif language in SHELL_LANGUAGES:
            notes: dict[str, str] = {}
            k = i - 1
            while k >= 0 and (marker := _MARKER.fullmatch(lines[k].strip())):
                notes.setdefault(marker["key"], marker["value"])
                k -= 1
            found.append(Example(path.relative_to(REPO).as_posix(), i + 1, language, body, notes, yaml_above))
        i = end + 1
    return found


def every_example() -> list[Example]:
    return [example for path in documents() for example in examples(path)]


def problems_of(example: Example) -> list[str]:
    """What is wrong with how an example says it runs (or why it does not)."""
    notes = example.notes
    if ("run in" in notes) == ("not run" in notes):
        return ["say either <!-- run in: WHERE --> or <!-- not run: REASON --> right above it (see tests/test_doc_examples.py)"]
    if "not run" in notes:
        reason = notes["not run"]
        extra = sorted(set(notes) - {"not run"})
        if extra:
            return [f"not run, yet it has {', '.join(extra)}"]
        return [] if len(reason.split()) >= 4 else [f"not run: give a reason (a sentence), not {reason!r}"]
    errors = []
    where = notes["run in"]
    if where == ABOVE and example.yaml_above is None:
        errors.append("run in the project above, but there is no yaml block above it")
    elif where not in (EMPTY, ABOVE) and not (REPO / where).is_dir():
        errors.append(f"run in {where!r}: say {EMPTY!r}, {ABOVE!r} or a folder of the repository")
    commands = example.commands()
    if not commands:
        errors.append("it has no command to run")
    if "exit codes" in notes:
        codes = notes["exit codes"].split()
        if len(codes) != len(commands) or not all(c.isdigit() for c in codes):
            errors.append(f"exit codes {notes['exit codes']!r}: give one number for each of its {len(commands)} command(s)")
    return errors


def _normal(line: str) -> str:
    return _DURATION.sub("<duration>", " ".join(line.split()))


def unmatched(prints: tuple[str, ...], output: str) -> list[str]:
    """The lines of `prints` not found in `output`, in order (`…`/`...` match anything)."""
    actual = [_normal(line) for line in output.splitlines()]
    missing = []
    position = 0
    for line in prints:
        want = _normal(line)
        if want in ("", "…", "..."):
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in re.split(r"…|\.\.\.", want)))
        for index in range(position, len(actual)):
            if pattern.fullmatch(actual[index]):
                position = index + 1
                break
        else:
            missing.append(line)
    return missing


def prepare(example: Example, folder: Path) -> Path:
    where = example.notes["run in"]
    if where == EMPTY:
        folder.mkdir()
    elif where == ABOVE:
        folder.mkdir()
        assert example.yaml_above is not None
        (folder / "prefect.yaml").write_text(example.yaml_above)
    else:
        shutil.copytree(REPO / where, folder, ignore=shutil.ignore_patterns(".buildsys", "__pycache__", "build"))
    return folder


def shell_env() -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "NO_COLOR": "1",
            "GIT_CONFIG_GLOBAL": os.devnull}


_SHELL = re.compile(r"[|&;<>()`$*?~]")  # a word with any of these is left to bash


class Session:
    """Commands as typed at one terminal: `export NAME=VALUE` and `cd DIR` hold for the next ones; a
    plain `buildsys ARGS` runs in this process (the CLI's own entry point, stdout and stderr into
    one buffer as on a terminal: cheaper than a process each); anything else runs in bash."""

    def __init__(self, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        monkeypatch.chdir(cwd)

    def run(self, text: str) -> tuple[int, str]:
        try:
            words = shlex.split(text, comments=True)
        except ValueError:
            words = []
        plain = bool(words) and not any(_SHELL.search(word) for word in words[1:])
        if plain and words[0] == "export" and all(re.fullmatch(r"[A-Za-z_]\w*=.*", w) for w in words[1:]):
            for word in words[1:]:
                name, _, value = word.partition("=")
                self.monkeypatch.setenv(name, value)
            return 0, ""
        if plain and words[0] == "cd" and len(words) == 2:
            self.monkeypatch.chdir(Path(words[1]))
            return 0, ""
        if plain and words[0] == "buildsys":
            return self._buildsys(words[1:])
        done = subprocess.run(["bash", "-c", text], cwd=Path.cwd(), env=shell_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=120)
        return done.returncode, done.stdout

    @staticmethod
    def _buildsys(args: list[str]) -> tuple[int, str]:
        printed = io.StringIO()
        code = 0
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            try:
                main(args)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code, printed.getvalue()


# ---------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_every_example_runs_or_says_why_not() -> None:
    found = every_example()
    assert len(found) > 25  # the parser sees the docs at all
    broken = [f"{e.id}: {problem}" for e in found for problem in problems_of(e)]
    assert broken == []
    assert sum("run in" in e.notes for e in found) >= 10


@pytest.mark.unit
def test_the_checks_catch_an_unmarked_example_and_wrong_output(tmp_path: Path) -> None:
    page = REPO / "tests" / "data" / "doc-example-page.md"
    found = examples(page)
    assert [(e.line, problems_of(e)) for e in found] == [
        (3, ["say either <!-- run in: WHERE --> or <!-- not run: REASON --> right above it (see tests/test_doc_examples.py)"]),
        (8, ["not run: give a reason (a sentence), not 'later'"]),
        (13, ["run in the project above, but there is no yaml block above it"]),
        (19, ["exit codes '0': give one number for each of its 2 command(s)"]),
        (28, []),
    ]
    last = found[-1].commands()
    assert [c.text for c in last] == ["buildsys validate", "buildsys plan"]
    assert last[0].prints == ("prefect.yaml: valid — 1 deployment(s), 0 step(s)",)
    printed = "prefect.yaml: valid —  1 deployment(s), 0 step(s)\nbuild ok: 1 ran in 12.5s\n"
    assert unmatched(last[0].prints, printed) == []
    assert unmatched(("build ok: 1 ran in 0.01s",), printed) == []  # durations differ
    assert unmatched(("build ok: … in 3s",), printed) == []
    assert unmatched(("prefect.yaml: valid — 2 deployment(s), 0 step(s)",), printed) == [
        "prefect.yaml: valid — 2 deployment(s), 0 step(s)"]
    assert unmatched(("build ok: 1 ran in 1s", "prefect.yaml: valid …"), printed) == ["prefect.yaml: valid …"]  # order


RUNNABLE = [e for e in every_example() if "run in" in e.notes]


@pytest.mark.parametrize("example", RUNNABLE, ids=[e.id for e in RUNNABLE])
def test_example_runs_as_written(example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems_of(example) == []
    session = Session(prepare(example, tmp_path / "project"), monkeypatch)
    if "first" in example.notes:
        code, printed = session.run(example.notes["first"])
        assert code == 0, f"{example.id}: its first: exited {code}:\n{printed}"
    commands = example.commands()
    codes = [int(c) for c in example.notes.get("exit codes", "").split()] or [0] * len(commands)
    for command, want in zip(commands, codes, strict=True):
        code, printed = session.run(command.text)
        assert code == want, f"{example.id}: `{command.text}` exited {code}, not {want}:\n{printed}"
        missing = unmatched(command.prints, printed)
        assert missing == [], f"{example.id}: `{command.text}` did not print these lines:\n" + "\n".join(
            missing) + f"\n--- it printed:\n{printed}"
