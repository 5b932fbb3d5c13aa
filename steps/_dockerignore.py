"""Which files of a build context Docker sends: ``.dockerignore`` matching by Docker's rules.

The rules are those of moby's ``patternmatcher`` and of the CLI that reads ``.dockerignore``
(https://docs.docker.com/build/concepts/context/#dockerignore-files):

* a line starting with ``#`` is a comment; a line is trimmed, and skipped when empty; a leading ``!`` makes
  the pattern an exception (a file it matches is sent after all); the rest is cleaned as Go's
  ``filepath.Clean`` does (``.`` and ``..`` elements, doubled and trailing slashes) and a leading
  ``/`` is dropped: patterns are relative to the context's root;
* ``*`` is any run of characters but ``/``, ``?`` one character but ``/``, ``[...]`` a class,
  ``\\`` escapes the next character, ``**`` any number of directories (zero included); matching is
  case-sensitive, on the path relative to the context;
* a pattern also matches everything under a directory it matches (``build`` excludes
  ``build/a/b``); the last pattern that matches a path decides (so ``!`` lines come after the
  lines they make exceptions to);
* a directory that is excluded is not walked unless an exception pattern names something in it;
* the Dockerfile and ``.dockerignore`` are always sent (the builder needs them).

Kept in buildsys rather than taken from the Docker SDK (``docker.utils.build.exclude_paths``), whose
import (requests, urllib3 and the rest of the SDK) costs more than the whole keying of a build
that is already cached; ``tests/steps/test_dockerignore.py`` checks this module against the SDK on
many patterns and trees. One deliberate difference: the SDK compares names case-insensitively,
Docker does not; a build's archive is made from this module's list, so the key and what the
engine gets always agree.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from pathlib import Path


def read_patterns(text: str) -> list[str]:
    """The patterns of a ``.dockerignore`` file's text (comments and empty lines dropped)."""
    lines = (line.strip() for line in text.lstrip("\ufeff").splitlines() if not line.startswith("#"))
    return [line for line in lines if line]  # `#` starts a comment only in a line's first column


class BadPattern(ValueError):
    """A ``.dockerignore`` line that Docker refuses (an unclosed ``[``, a trailing ``\\``)."""


class Pattern:
    """One cleaned pattern (a plain class: a dataclass costs more to define than a build uses it)."""

    __slots__ = ("depth", "exception", "kind", "regex", "text")

    def __init__(self, text: str, exception: bool, depth: int, kind: str, regex: re.Pattern[str] | None) -> None:
        self.text = text  # cleaned, without its `!`
        self.exception = exception
        self.depth = depth  # the number of path elements in the pattern
        self.kind = kind  # "exact", "prefix" (`dir/**`), "suffix" (`**/name`) or "regex", as moby decides
        self.regex = regex

    def matches(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        return self.regex is not None and self.regex.fullmatch(path) is not None


def compile_pattern(line: str) -> Pattern | None:
    """A pattern as Docker reads it from a ``.dockerignore`` line; None for an empty one.
    BadPattern for one Docker refuses."""
    text = line.strip()
    exception = text.startswith("!")
    if exception:
        text = text[1:].strip()
        if not text:
            raise BadPattern('"!" alone is not a pattern')
    if not text:
        return None
    text = _clean(text)
    if len(text) > 1 and text.startswith("/"):
        text = text[1:]
    _check_syntax(text)
    kind, source = _compile(text)
    try:
        regex = re.compile(source) if kind == "regex" else None
    except re.error as exc:
        raise BadPattern(f"{text!r} is not a valid pattern ({exc})") from None
    return Pattern(text, exception, len(text.split("/")), kind, regex)


def _clean(path: str) -> str:
    """Go's ``filepath.Clean`` (POSIX): ``posixpath.normpath``, but one leading slash, never two."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def _check_syntax(text: str) -> None:
    """What Go's ``filepath.Match`` refuses, which Docker checks every pattern with."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                raise BadPattern(f"{text!r} ends with an escaping backslash")
            i += 2
            continue
        if c == "[":
            j = i + 1
            if j < n and text[j] == "^":
                j += 1
            if j < n and text[j] == "]":
                raise BadPattern(f"{text!r} has an empty character class")
            while j < n and text[j] != "]":
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise BadPattern(f"{text!r} has a `[` that is never closed")
            i = j
        i += 1


_ESCAPED = set(".+()|{}$")


def _compile(pattern: str) -> tuple[str, str]:
    """How moby's patternmatcher matches a cleaned pattern: its kind, and the regular expression
    it builds one character at a time (`[` and `]` are passed through: classes are the regex's)."""
    out = ["^"]
    kind = "exact"
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        first = i == 0
        i += 1
        if c == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                if i >= n:
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        out.append(".*")
                        kind = "regex"
                else:
                    out.append("(.*/)?")
                    kind = "regex"
                if first:
                    kind = "suffix"
            else:
                out.append("[^/]*")
                kind = "regex"
        elif c == "?":
            out.append("[^/]")
            kind = "regex"
        elif c in _ESCAPED:
            out.append("\\" + c)
        elif c == "\\":
            if i < n:
                out.append(re.escape(pattern[i]))
                i += 1
                kind = "regex"
            else:
                out.append("\\\\")
        elif c in "[]":
            out.append(c)
            kind = "regex"
        else:
            out.append(c)
    return kind, "".join(out)


class Matcher:
    """Decides, for a path relative to the context, whether ``.dockerignore`` keeps it out."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.patterns = [p for p in (compile_pattern(line) for line in lines) if p is not None]
        self.exceptions = [p for p in self.patterns if p.exception]

    def excluded(self, path: str) -> bool:
        """moby's ``MatchesOrParentMatches``: the last pattern matching the path or one of its
        parent directories decides."""
        parts = path.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        excluded = False
        for pattern in self.patterns:
            if pattern.exception != excluded:
                continue  # an exception can only change an excluded path, and the reverse
            if pattern.matches(path) or any(pattern.matches(parent) for parent in parents):
                excluded = not pattern.exception
        return excluded

    def walk_into(self, directory: str) -> bool:
        """Whether an excluded directory must still be walked: an exception names something in it."""
        prefix = directory + "/"
        return any((p.text + "/").startswith(prefix) for p in self.exceptions)


def sent_paths(root: Path | str, lines: Iterable[str], dockerfile: str = "Dockerfile") -> set[str]:
    """Every path (files and directories, relative to `root`) that a build of `root` sends, with
    the ``.dockerignore`` patterns `lines`; the Dockerfile and ``.dockerignore`` are always sent."""
    matcher = Matcher([*lines, f"!{dockerfile}", "!.dockerignore"])
    return set(_walk(os.fspath(root), "", matcher))


def _walk(root: str, rel: str, matcher: Matcher) -> Iterator[str]:
    with os.scandir(os.path.join(root, rel) if rel else root) as entries:
        found = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for name, is_dir in found:
        path = f"{rel}/{name}" if rel else name
        excluded = matcher.excluded(path)
        if not excluded:
            yield path
        if is_dir and (not excluded or matcher.walk_into(path)):
            yield from _walk(root, path, matcher)
