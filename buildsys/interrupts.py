"""How long-running commands (watch, worker, server) stop: on SIGINT and SIGTERM, whatever
disposition they inherited.

A process started in the background of a non-interactive shell inherits SIGINT *ignored*, and a
parent may start it with signals blocked; Python then never raises KeyboardInterrupt and Ctrl-C
or `kill` does nothing. These commands take both signals back explicitly.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, FrameType | None], object]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_on_signals(handler: Handler | None = None) -> None:
    """Handle SIGINT and SIGTERM, then unblock them: with ``handler``, or by raising
    KeyboardInterrupt (the main thread only, as Python's signal handlers are).

    In that order: a signal sent while they were blocked (a supervisor stopping the command while
    it starts) is pending, and unblocking it under the inherited SIG_IGN would drop it; under the
    new handler it is handled here (so with the default handler this call may raise
    KeyboardInterrupt: call it inside the ``try`` that handles it)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler or _interrupt)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
