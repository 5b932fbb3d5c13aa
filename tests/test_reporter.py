"""The live reporter on a real terminal (a pseudo-terminal): finished steps print above the spinner
lines, and no rich markup ever reaches the screen as text."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""\
    from buildsys.reporter import Event, RichReporter
    from tests.services.waiting import wait_for

    r = RichReporter()
    r.event(Event("start", label="fetch_a"))
    r.event(Event("start", label="build[0: b]"))
    wait_for(lambda: r._render().row_count == 2 and r.live.is_started, 5, "the live display")
    r.live.refresh()
    r.event(Event("done", label="build[0: b]", duration=0.5))
    r.live.refresh()
    r.event(Event("done", label="fetch_a", duration=0.8))
    r.close()
""")


def test_live_output_on_a_terminal_has_no_markup_and_keeps_labels(tmp_path: Path) -> None:
    main, secondary = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=secondary, stdout=secondary,
                                stderr=secondary, cwd=Path(__file__).resolve().parent.parent,
                                env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "80"})
        os.close(secondary)
        chunks = []
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(main)
    screen = b"".join(chunks).decode()
    assert "[dim]" not in screen and "[/dim]" not in screen
    assert "build[0: b]" in screen
    assert "✓ build[0: b]  0.50s" in screen and "✓ fetch_a  0.80s" in screen


def test_events_reported_together_read_as_when_reported_one_by_one() -> None:
    """`report_all` (a build's unchanged steps at once): the same lines as one `event` each, in
    order, for the JSON and plain reporters, and for a reporter that only has `event`."""
    import io
    import json

    from buildsys.reporter import Event, JsonReporter, PlainReporter, report_all

    batch = [Event("cached", "a", reason="unchanged"), Event("cached", "b\x1b[31m", reason="unchanged"),
             Event("skipped", "c", reason="upstream step a failed"), Event("cached", "d", reason="unchanged")]

    def lines(make: object, together: bool) -> list[str]:
        out = io.StringIO()
        reporter = make(out)  # type: ignore[operator]
        if together:
            report_all(reporter, batch)
        else:
            for e in batch:
                reporter.event(e)
        return out.getvalue().splitlines()

    def untimed(text: list[str]) -> list[dict[str, object]]:
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in text]

    assert untimed(lines(JsonReporter, True)) == untimed(lines(JsonReporter, False)) == [
        {"event": "cached", "step": "a", "reason": "unchanged"},
        {"event": "cached", "step": "b\x1b[31m", "reason": "unchanged"},
        {"event": "skipped", "step": "c", "reason": "upstream step a failed"},
        {"event": "cached", "step": "d", "reason": "unchanged"},
    ]
    explained = lambda out: PlainReporter(out, explain=True)  # noqa: E731
    assert lines(explained, True) == lines(explained, False) == [
        "= a  cached (unchanged)", "= b\\x1b[31m  cached (unchanged)", "- c  not run: upstream step a failed",
        "= d  cached (unchanged)"]
    assert lines(PlainReporter, True) == lines(PlainReporter, False) == ["- c  not run: upstream step a failed"]

    class OneByOne:
        def __init__(self, out: io.StringIO) -> None:
            self.out = out

        def event(self, e: Event) -> None:
            self.out.write(f"{e.kind} {e.label}\n")

        def close(self) -> None:
            pass

    assert lines(OneByOne, True) == ["cached a", "cached b\x1b[31m", "skipped c", "cached d"]
