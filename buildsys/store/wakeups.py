"""Wake-ups for waiting claims on PostgreSQL: writes that can make a run claimable `NOTIFY` a
channel; one background connection per store `LISTEN`s and counts the notifications, so a waiting
claim notices new work within milliseconds instead of polling the database.

When the listener is not connected the count is unusable and waiting claims fall back to polling.
"""

from __future__ import annotations

import threading
from typing import Any

CHANNEL = "buildsys_runs"
GIVE_UP_AFTER = 3  # failed connects in a row (the database is gone): stop, claims poll instead


class Listener:
    """A daemon thread holding a LISTEN connection; `token()` changes whenever a NOTIFY arrives."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._count = 0
        self._healthy = False
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="buildsys-store-listen", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        self._ready.wait(timeout)
        return self._healthy

    def token(self) -> object:
        """The notification count, or a fresh object (never equal) while not listening."""
        return self._count if self._healthy else object()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        import psycopg

        failures = 0
        while not self._stop.is_set() and failures < GIVE_UP_AFTER:
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as conn:
                    failures = 0
                    self._listen(conn)
            except psycopg.Error:
                failures += 1
            self._healthy = False
            self._ready.set()
            self._stop.wait(0.5)

    def _listen(self, conn: Any) -> None:
        conn.execute(f"LISTEN {CHANNEL}")
        self._healthy = True
        self._ready.set()
        while not self._stop.is_set():
            for _ in conn.notifies(timeout=0.5):
                self._count += 1
