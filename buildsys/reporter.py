"""The one output channel for builds: rich on a terminal, plain lines otherwise, JSON events for CI.

The engine reports events (started, cached, finished, failed, skipped, log lines); reporters decide
how they look. Library code never prints.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import IO, Any, Protocol

from buildsys.printable import printable
from buildsys.records import NEW_DICT, Record

_set = object.__setattr__


class Event(Record):
    __slots__ = __match_args__ = ("kind", "label", "reason", "duration", "text", "data")
    kind: str  # start | cached | done | failed | skipped | log | summary | message
    label: str
    reason: str
    duration: float
    text: str
    data: dict[str, Any]

    def __init__(
        self,
        kind: str,
        label: str = "",
        reason: str = "",
        duration: float = 0.0,
        text: str = "",
        data: dict[str, Any] = NEW_DICT,
    ) -> None:
        _set(self, "kind", kind)
        _set(self, "label", label)
        _set(self, "reason", reason)
        _set(self, "duration", duration)
        _set(self, "text", text)
        _set(self, "data", {} if data is NEW_DICT else data)


class Reporter(Protocol):
    def event(self, event: Event) -> None: ...

    def close(self) -> None: ...


def report_all(reporter: Reporter, batch: Sequence[Event]) -> None:
    """Events that happened at once, in order: written together by a reporter that can (`events`),
    else one by one."""
    together = getattr(reporter, "events", None)
    if together is not None:
        together(batch)
        return
    for e in batch:
        reporter.event(e)


class PlainReporter:
    """One line per event; log lines of steps are prefixed with the step label."""

    def __init__(self, stream: IO[str] | None = None, *, verbosity: int = 0, explain: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbosity = verbosity
        self.explain = explain
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def event(self, e: Event) -> None:
        line = self.format(e)
        if line is not None:
            self.write(line)

    def events(self, batch: Iterable[Event]) -> None:
        """Several events that happened at once (a build's unchanged steps): written together."""
        lines = [line for line in map(self.format, batch) if line is not None]
        if lines:
            self.write("\n".join(lines))

    def format(self, e: Event) -> str | None:
        """The line an event prints as (control and bidi characters shown as escapes), or None when
        it prints nothing at this verbosity."""
        line = self._format(e)
        return None if line is None else printable(line)

    def _format(self, e: Event) -> str | None:
        if self.verbosity < 0 and e.kind not in ("failed", "summary", "message"):
            return None
        if e.kind == "start":
            return f"▶ {e.label}" + (f"  ({e.reason})" if e.reason and self.explain else "")
        if e.kind == "cached":
            return f"= {e.label}  cached ({e.reason})" if self.explain or self.verbosity > 0 else None
        if e.kind == "done":
            return f"✓ {e.label}  {e.duration:.2f}s"
        if e.kind == "failed":
            return f"✗ {e.label}  failed: {e.text}"
        if e.kind == "skipped":
            return f"- {e.label}  not run: {e.reason}"
        if e.kind == "log":
            return f"  {e.label} │ {printable(e.text, one_line=True)}" if self.verbosity >= 0 else None
        if e.kind in ("summary", "message"):
            return e.text
        return None

    def close(self) -> None:
        pass


_ENCODER = json.JSONEncoder(default=str)  # json.dumps(…, default=str) makes one per call


class JsonReporter:
    """One JSON object per line on stdout (nothing else goes there)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def event(self, e: Event) -> None:
        self.events((e,))

    def events(self, batch: Iterable[Event]) -> None:
        """Several events that happened at once (a build's unchanged steps): one write."""
        now = round(time.time(), 3)
        encode = _ENCODER.encode
        text = "".join(encode(self._payload(e, now)) + "\n" for e in batch)
        with self._lock:
            self.stream.write(text)
            self.stream.flush()

    @staticmethod
    def _payload(e: Event, now: float) -> dict[str, Any]:
        payload: dict[str, Any] = {"event": e.kind, "time": now}
        if e.label:
            payload["step"] = e.label
        if e.reason:
            payload["reason"] = e.reason
        if e.kind in ("done", "failed"):
            payload["duration"] = round(e.duration, 4)
        if e.text:
            payload["message" if e.kind != "log" else "line"] = e.text
        payload.update(e.data)
        return payload

    def close(self) -> None:
        pass


class RichReporter:
    """Live progress on a terminal: a spinner line per running step above the finished ones."""

    def __init__(self, *, verbosity: int = 0, explain: bool = False) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self.plain = PlainReporter(verbosity=verbosity, explain=explain)
        self.running: dict[str, float] = {}
        self._lock = threading.Lock()
        self.live = Live(console=self.console, refresh_per_second=8, transient=True, get_renderable=self._render)
        self.live.start()

    def _render(self) -> Any:
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        now = time.monotonic()
        with self._lock:
            items = list(self.running.items())
        for label, started in items:
            # Text, never markup strings: a label such as `build[0: x]` is shown as it is, and no
            # style tag can leak into the output as text
            table.add_row(Spinner("dots"), Text(printable(label)), Text(f"{now - started:.1f}s", style="dim"))
        return table

    def event(self, e: Event) -> None:
        with self._lock:
            if e.kind == "start":
                self.running[e.label] = time.monotonic()
            elif e.kind in ("done", "failed", "skipped", "cached"):
                self.running.pop(e.label, None)
        style = {"done": "green", "failed": "red", "cached": "dim", "skipped": "yellow"}.get(e.kind)
        line = self.plain.format(e)
        if line is not None:
            self.console.print(line, style=style, markup=False, highlight=False)

    def close(self) -> None:
        self.live.stop()


class NullReporter:
    def event(self, event: Event) -> None:
        pass

    def close(self) -> None:
        pass


def make_reporter(*, json: bool = False, color: bool = True, verbosity: int = 0, explain: bool = False) -> Reporter:
    if json:
        return JsonReporter()
    if color and sys.stderr.isatty():
        return RichReporter(verbosity=verbosity, explain=explain)
    return PlainReporter(verbosity=verbosity, explain=explain)
