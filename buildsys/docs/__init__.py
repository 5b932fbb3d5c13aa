"""Help topics shipped as package data: one Markdown file per topic, shown by `buildsys help TOPIC`.

A topic is `buildsys/docs/<name>.md`: a `# Title` line, then a first paragraph whose first sentence is
the one-line summary `buildsys help` lists. References that would drift if copied by hand (project
keys, pool variables) are generated from `schemas/` by `buildsys.docs.reference` instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files

from buildsys.errors import BuildsysError
from buildsys.suggest import closest

_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@dataclass(frozen=True)
class Topic:
    name: str
    title: str
    summary: str
    text: str
    generated: bool = False


class UnknownTopic(BuildsysError):
    """A help topic name that is neither a topic nor a command."""


def _parse(name: str, text: str) -> Topic:
    lines = text.splitlines()
    title = name
    if lines and lines[0].startswith("# "):
        title = lines[0][2:].strip()
    paragraph: list[str] = []
    for line in lines[1:] if lines and lines[0].startswith("# ") else lines:
        stripped = line.strip()
        if not stripped:
            if paragraph:
                break
            continue
        if stripped.startswith(("#", "```", "|", "<!--")):
            if paragraph:
                break
            continue
        paragraph.append(stripped)
    first = " ".join(paragraph)
    summary = _SENTENCE_END.split(first, maxsplit=1)[0] if first else title
    return Topic(name=name, title=title, summary=summary, text=text)


def _written() -> dict[str, Topic]:
    found: dict[str, Topic] = {}
    for entry in files(__name__).iterdir():
        if entry.name.endswith(".md") and entry.is_file():
            name = entry.name[: -len(".md")]
            found[name] = _parse(name, entry.read_text(encoding="utf-8"))
    return found


def _generated() -> dict[str, Callable[[], str]]:
    from buildsys.docs import reference

    return {"project-keys": reference.project_keys, "pool-variables": reference.pool_variables}


def topics() -> list[Topic]:
    """Every topic, written and generated, sorted by name."""
    found = _written()
    for name, make in _generated().items():
        found.setdefault(name, _generated_topic(name, make))
    return [found[name] for name in sorted(found)]


def _generated_topic(name: str, make: Callable[[], str]) -> Topic:
    parsed = _parse(name, make())
    return Topic(parsed.name, parsed.title, parsed.summary, parsed.text, generated=True)


def topic(name: str, commands: list[str] | None = None) -> Topic:
    """One topic by name; an unknown name is an error with a did-you-mean over topics and commands."""
    written = _written()
    if name in written:
        return written[name]
    generated = _generated()
    if name in generated:
        return _generated_topic(name, generated[name])
    known = sorted({*written, *generated, *(commands or [])})
    match = closest(name, known)
    hint = f"did you mean {match!r}? " if match else ""
    raise UnknownTopic(
        f"no help topic {name!r}",
        hint=f"{hint}`buildsys help` lists the topics ({', '.join(sorted({*written, *generated}))})",
    )
