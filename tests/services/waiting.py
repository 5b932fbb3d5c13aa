"""Wait on a condition with a deadline, never with a bare sleep.

    from tests.services.waiting import wait_for

    wait_for(lambda: port_open(host, port), timeout=10, what="the registry to listen")
    row = wait_for(lambda: store.get_run(run_id), 5, "the flow run to be recorded")

`wait_for` calls ``predicate`` until it returns something truthy and returns that value. When the
deadline passes it raises `WaitTimeout` (an ``AssertionError``, so pytest reports it as a failed
check) saying what was awaited, for how long, how many times it was tried and the last value or
exception seen. Exceptions of the types in ``ignore`` count as "not yet" (handy for connection
refused while a server starts); any other exception propagates at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["WaitTimeout", "process_alive", "wait_for"]


class WaitTimeout(AssertionError):
    """The awaited condition did not become true before the deadline."""


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    max_interval: float = 0.5,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned), or fail after ``timeout`` s.

    ``what`` completes the sentence "timed out after N s waiting for ...". The poll interval starts
    at ``interval`` and doubles up to ``max_interval``; the predicate is always tried at least once
    and once more right at the deadline.
    """
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout}")
    start = time.monotonic()
    deadline = start + timeout
    attempts = 0
    last_value: object = None
    last_error: BaseException | None = None
    delay = interval
    while True:
        attempts += 1
        try:
            value = predicate()
        except ignore as exc:
            last_error = exc
        else:
            if value:
                return value
            last_value = value
            last_error = None
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, max_interval)
    elapsed = time.monotonic() - start
    last = (
        f"last error: {type(last_error).__name__}: {last_error}"
        if last_error is not None
        else f"last value: {last_value!r}"
    )
    raise WaitTimeout(f"timed out after {elapsed:.1f} s waiting for {what} ({attempts} attempts; {last})")


def process_alive(pid: int) -> bool:
    """Whether a process still runs (a zombie of an exited child counts as gone), for
    ``wait_for(lambda: not process_alive(pid), ...)``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
