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
