"""Errors meant for people: every user mistake carries where (file:line:col), what, and a hint.

Library code raises these; only the CLI turns them into messages and exit codes.
"""

from __future__ import annotations

from collections.abc import Iterable

from buildsys.records import Record

_set = object.__setattr__


class Location(Record):
    """A position in a source file (1-based line and column)."""

    __slots__ = __match_args__ = ("file", "line", "col")
    file: str
    line: int
    col: int

    def __init__(self, file: str, line: int, col: int) -> None:
        _set(self, "file", file)
        _set(self, "line", line)
        _set(self, "col", col)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class Diagnostic(Record):
    """One finding about a project: an error or a warning, located and explained."""

    __slots__ = __match_args__ = ("severity", "message", "location", "path", "hint")
    severity: str  # "error" | "warning"
    message: str
    location: Location | None
    path: str | None  # the path through the document, items named by id/name
    hint: str | None

    def __init__(self, severity: str, message: str, location: Location | None = None, path: str | None = None,
                 hint: str | None = None) -> None:
        _set(self, "severity", severity)
        _set(self, "message", message)
        _set(self, "location", location)
        _set(self, "path", path)
        _set(self, "hint", hint)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def render(self) -> str:
        where = f"{self.location}: " if self.location else ""
        text = f"{where}{self.severity}: {self.message}"
        if self.path:
            text += f"\n  at {self.path}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "severity": self.severity,
            "message": self.message,
            "file": self.location.file if self.location else None,
            "line": self.location.line if self.location else None,
            "col": self.location.col if self.location else None,
            "path": self.path,
            "hint": self.hint,
        }


def distinct(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Each finding once (the same severity, message, location and path; hints aside), in order."""
    seen: set[tuple[object, ...]] = set()
    out = []
    for d in diagnostics:
        k = (d.severity, d.message, d.location, d.path)
        if k not in seen:
            seen.add(k)
            out.append(d)
    return out


class BuildsysError(Exception):
    """A user-facing error: the CLI prints it (no traceback) and exits with `exit_code`."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        location: Location | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.path = path
        self.hint = hint

    def diagnostics(self) -> list[Diagnostic]:
        return [Diagnostic("error", self.message, self.location, self.path, self.hint)]

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics())


class ProjectError(BuildsysError):
    """The project file is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: Iterable[Diagnostic]) -> None:
        self.problems = list(problems)
        errors = [p for p in self.problems if p.is_error]
        first = errors[0] if errors else (self.problems[0] if self.problems else None)
        super().__init__(
            first.message if first else "invalid project",
            location=first.location if first else None,
            path=first.path if first else None,
            hint=first.hint if first else None,
        )

    def diagnostics(self) -> list[Diagnostic]:
        return list(self.problems)


class StepError(BuildsysError):
    """A step failed (or could not be prepared); raised by steps for expected failures."""


class TemplateError(BuildsysError):
    """A placeholder could not be resolved."""


class StateError(BuildsysError):
    """The state store refused an operation (conflict, missing resource, bad serial)."""


class ConflictError(StateError):
    """The store changed since the caller last read it (serial moved, concurrent write)."""


class NotFoundError(StateError):
    """A named resource does not exist in the store."""
