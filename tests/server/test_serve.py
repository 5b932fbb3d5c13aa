"""`buildsys.server.serve`: a stop signal that lands while the server starts is a clean stop."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from buildsys.interrupts import STOP_SIGNALS
from buildsys.server import ServeOptions, serve


@pytest.fixture
def handlers() -> Iterator[None]:
    """serve() takes SIGINT and SIGTERM over in this (the test's) process: given back after."""
    saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("when", ["before uvicorn takes the signals", "after uvicorn took them"])
def test_a_stop_signal_while_the_server_starts_is_a_clean_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, handlers: None, when: str
) -> None:
    """uvicorn.run made either of these exit 3 ("startup failure"): a supervisor's SIGTERM while
    the server started looked like a crash (seen in tests/test_watch.py's signal test)."""

    async def starting(self: uvicorn.Server, sockets: Any = None) -> None:
        if when == "before uvicorn takes the signals":
            signal.raise_signal(signal.SIGTERM)  # serve()'s own handler: KeyboardInterrupt here
        with self.capture_signals():  # uvicorn's handler notes it, and raises it again on the way out
            signal.raise_signal(signal.SIGTERM)
            assert self.should_exit

    monkeypatch.setattr(uvicorn.Server, "serve", starting)
    serve(ServeOptions(port=0, db=str(tmp_path / "server.db")))  # returns: no SystemExit(3)
