"""Bounded waits for threads at shutdown: a thread that will not stop is named and left behind
(they are daemon threads), never waited for without end."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

__all__ = ["OUTPUT_GRACE_SECONDS", "join_within"]

# how long a run's output (a process's pipes, a container's log stream) may go on after the run
# exited before the worker stops reading it (buildsys.infra.process, buildsys.infra.docker)
OUTPUT_GRACE_SECONDS = 10.0


def join_within(threads: Iterable[threading.Thread], seconds: float) -> list[threading.Thread]:
    """Join `threads`, all within one deadline of `seconds`; returns those still alive."""
    deadline = time.monotonic() + seconds
    left = []
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            left.append(thread)
    return left
