"""The documentation cannot name what does not exist: every `buildsys …` command and option that the
README, the help topics and the examples' READMEs mention is checked against the real click tree; the
generated references cover their schemas; the README stays a ten-minute read and its walk-through runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from buildsys import docs
from buildsys.cli import COMMANDS, cli
from buildsys.docs import reference

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "buildsys" / "docs"
SCHEMAS = REPO / "schemas"


def documents() -> list[Path]:
    return [REPO / "README.md", REPO / "tests" / "bench" / "README.md", *sorted(DOCS.glob("*.md")),
            *sorted((REPO / "examples").glob("*/README.md")), REPO / "examples" / "README.md"]


# ---------------------------------------------------------------------------------------------------
# finding `buildsys …` in Markdown

_INLINE = re.compile(r"`([^`\n]+)`")
_MENTION = re.compile(r"(?<![\w./-])buildsys((?:\s+[^\s&;|#>`)]+|\s+\|(?=[\w-]))+)")


@dataclass(frozen=True)
class Mention:
    doc: str
    line: int
    text: str


def mentions(path: Path) -> list[Mention]:
    """Every `buildsys …` in code: fenced blocks (each line) and inline code spans."""
    found: list[Mention] = []
    fence: str | None = None  # the open block's language
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.lstrip()[3:].strip()
            continue
        if fence == "console" and not line.startswith("$ "):
            continue  # a console block's output lines are not commands
        pieces = [line.split(" #", 1)[0]] if fence is not None else _INLINE.findall(line)
        for piece in pieces:
            piece = piece.replace("\\|", "|")
            for match in re.finditer(r"(?<![\w./$-])buildsys\s+(?=[a-z-])", piece):
                before = piece[:match.start()].split()
                if before and before[-1].startswith("-"):
                    continue  # an option's value (`bench.py --tools buildsys --sizes 50`), not the command
                rest = re.split(r"\s(?:&&|\|\||;|>|&|\|)\s|\)|\$\(|\s#", piece[match.end():])[0]
                found.append(Mention(path.relative_to(REPO).as_posix(), number, "buildsys " + rest.strip()))
    return found


def _tokens(text: str) -> list[str]:
    """Words of a mention with Markdown/usage decoration removed; `[--a X]` → `--a`, `X`."""
    words = []
    for raw in text.split()[1:]:
        word = raw.strip("[]()…,.'\"")
        word = word.removesuffix("...").removesuffix("…").rstrip("]")
        if word:
            words.append(word)
    return words


def _is_placeholder(word: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_./=:-]*(\|[A-Za-z+:/@#\[\]._-]+)*", word)) or not re.match(r"[a-z-]", word)


def _options(command: click.Command) -> dict[str, click.Option]:
    params = command.get_params(click.Context(command, help_option_names=["-h", "--help"]))
    return {name: p for p in params if isinstance(p, click.Option) for name in (*p.opts, *p.secondary_opts)}


def problems_of(mention: Mention) -> list[str]:
    """What in one mention does not exist: commands, subcommands, options, help topics."""
    ctx = click.Context(cli, info_name="buildsys")
    command: click.Command = cli
    path = ["buildsys"]
    words = _tokens(mention.text)
    errors: list[str] = []
    positional = 0
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "/" or word.startswith("/"):
            # `ls / show NAME`: alternatives of the same group
            command = cli if len(path) == 1 else _walk(path[:-1])
            path = path[:-1]
            positional = 0
            continue
        if word.startswith("-"):
            for alternative in word.split("|"):
                name = alternative.split("=", 1)[0]
                for n in [n for n in name.split("/") if n]:  # `-f/--file`
                    option = _options(command).get(n)
                    if option is None:
                        errors.append(f"{' '.join(path)} has no option {n}")
                    elif not (option.is_flag or option.count) and "=" not in alternative and i < len(words):
                        i += 1  # its value
            continue
        if isinstance(command, click.Group):
            if _is_placeholder(word):
                continue
            sub = command.get_command(ctx, word)
            if sub is None:
                errors.append(f"{' '.join(path)} has no command {word!r}")
                break
            command = sub
            path.append(word)
            positional = 0
            continue
        if path[1:] == ["help"] and positional == 0 and not _is_placeholder(word):
            try:
                docs.topic(word, list(COMMANDS))
            except docs.UnknownTopic:
                if word not in COMMANDS:
                    errors.append(f"buildsys help: no topic {word!r}")
        positional += 1
    return errors


def _walk(path: list[str]) -> click.Command:
    ctx = click.Context(cli, info_name="buildsys")
    command: click.Command = cli
    for name in path[1:]:
        assert isinstance(command, click.Group)
        sub = command.get_command(ctx, name)
        assert sub is not None
        command = sub
    return command


def test_every_command_and_option_the_docs_name_exists() -> None:
    found = [m for path in documents() for m in mentions(path)]
    assert len(found) > 150  # the parser sees the docs at all
    broken = [f"{m.doc}:{m.line}: `{m.text}`: {problem}" for m in found for problem in problems_of(m)]
    assert broken == []


def test_the_checker_catches_what_does_not_exist(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Run `buildsys biuld`, `buildsys build --jbos 2`, `buildsys runs lss` and `buildsys help nosuchtopic`.\n"
        "```console\n$ buildsys plan -o plan.json --detailed-exitcode && buildsys apply --yes plan.json\n```\n"
        "Fine: `buildsys build -j 2 --explain`, `buildsys pool ls / show NAME`, `buildsys help builds`.\n"
        "Not a command: `bench.py --tools buildsys --sizes 50`.\n"
    )
    relative = Path(os.path.relpath(page, REPO))
    found = mentions(REPO / relative)
    assert [m.text for m in found] == [
        "buildsys biuld", "buildsys build --jbos 2", "buildsys runs lss", "buildsys help nosuchtopic",
        "buildsys plan -o plan.json --detailed-exitcode", "buildsys apply --yes plan.json",
        "buildsys build -j 2 --explain", "buildsys pool ls / show NAME", "buildsys help builds",
    ]
    assert [problems_of(m) for m in found] == [
        ["buildsys has no command 'biuld'"],
        ["buildsys build has no option --jbos"],
        ["buildsys runs has no command 'lss'"],
        ["buildsys help: no topic 'nosuchtopic'"],
        [],
        ["buildsys apply has no option --yes"],
        [],
        [],
        [],
    ]


# ---------------------------------------------------------------------------------------------------
# the topics and the generated references


def test_every_topic_has_a_title_and_a_one_line_summary() -> None:
    topics = docs.topics()
    names = {t.name for t in topics}
    assert {p.stem for p in DOCS.glob("*.md")} | {"project-keys", "pool-variables"} == names
    for t in topics:
        assert t.title and t.title != t.name, t.name
        assert t.summary and "\n" not in t.summary and len(t.summary) <= 200, (t.name, t.summary)


def test_project_keys_cover_every_key_of_the_schema() -> None:
    schema = json.loads((SCHEMAS / "project.schema.json").read_text())
    text = reference.project_keys()
    for key in schema["properties"]:
        assert f"| `{key}` |" in text, key
    for name in ("deployment", "work_pool_ref", "schedule", "pool", "queue", "trigger"):
        for key in schema["$defs"][name]["properties"]:
            assert f"| `{key}` |" in text, (name, key)
    assert "| `entrypoint` | string \\| null | The flow: " in text


def test_pool_variables_cover_every_variable_of_every_type() -> None:
    text = reference.pool_variables()
    from buildsys.infra import pool_types

    for pool_type in pool_types():
        template = json.loads((SCHEMAS / "job-templates" / f"{pool_type}.json").read_text())
        section = text.split(f"## {pool_type}\n", 1)[1].split("\n## ", 1)[0]
        for key in template["variables"]["properties"]:
            assert f"| `{key}` |" in section, (pool_type, key)
    assert "| `stream_output` | boolean | `true` | Copy the flow run's output to the worker's output. |" in text


# ---------------------------------------------------------------------------------------------------
# the README


def test_readme_is_a_short_read_in_the_promised_order() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text) < 25_000
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["## Two commands", "## What it does", "## Getting started: from nothing to a finished run",
                        "## The command line", "## Where to read more", "## Layout"]
    assert "python3 tests/run.py\n" in text
    table = text.split("## The command line", 1)[1].split("## Where to read more", 1)[0]
    listed = set(re.findall(r"`buildsys ([a-z]+)", table)) | set(re.findall(r"`buildsys build / ([a-z]+)", table))
    assert listed == set(COMMANDS)


def _walkthrough() -> tuple[list[str], str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Getting started", 1)[1].split("\n## ", 1)[0]
    block = section.split("```console\n", 1)[1].split("```", 1)[0]
    commands = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    return commands, block


def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    commands, block = _walkthrough()
    assert commands[0].startswith("mkdir ") and len(commands) == 8
    bindir = Path(sys.executable).parent
    if not (bindir / "buildsys").exists():
        pytest.skip("the buildsys console script is not installed next to this interpreter")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    outputs = []
    cwd = tmp_path
    for command in commands:
        script = f"cd {cwd} && {command} && pwd > {tmp_path / 'cwd'}"
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=180)
        assert r.returncode == 0, (command, r.stdout, r.stderr)
        cwd = Path((tmp_path / "cwd").read_text().strip())
        outputs.append(r.stdout)
    printed = _as_in_readme("\n".join(outputs), cwd)
    expected = [" ".join(line.split()) for line in block.splitlines()
                if line and not line.startswith(("$ ", "…")) and not re.search(r"\d{4}-\d\d-\d\d", line)]
    assert [line for line in expected if line not in printed] == []


def _as_in_readme(output: str, project: Path) -> list[str]:
    """The walk-through's output with what differs per machine and run (directory, worker and run names)
    replaced by the README's values, whitespace collapsed (column widths follow the names)."""
    run = re.search(r"Created flow run (\S+) \(([0-9a-f]{8})(-[0-9a-f-]{27})\)", output)
    worker = re.search(r"Worker '([^']+)' started", output)
    assert run and worker, output
    for actual, shown in ((str(project), "/tmp/walk/hello-flows"), (run.group(3), "-…"), (run.group(1), "silent-ibis-1706"),
                          (run.group(2), "da34f92c"), (worker.group(1), "vm-30353-2f0090")):
        output = output.replace(actual, shown)
    return [" ".join(line.split()) for line in output.splitlines()]
