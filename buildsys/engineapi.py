"""Where a run's Prefect engine reaches buildsys's Prefect-compatible API, and with which key.

With ``buildsys server`` as the store the engine calls the server's ``/prefect/api`` with the
worker's own token. With the embedded file store or a direct database URL there is no server: the
worker serves the same API itself (``buildsys.prefectapi.EmbeddedApi``, loopback, random port),
started on the first run, with a key per run that is revoked when the run ends.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import httpx

from buildsys.errors import StateError
from buildsys.prefectengine import API_AUTH_ENV, API_KEY_ENV, API_URL_ENV, RUN_ID_ENV
from buildsys.store.base import EngineRecords, StateStore

if TYPE_CHECKING:
    from buildsys.prefectapi import EmbeddedApi

__all__ = ["PREFECT_API_PATH", "EngineApi"]

PREFECT_API_PATH = "/prefect/api"


class EngineApi:
    """The Prefect API environment of each run a worker supervises."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._embedded: EmbeddedApi | None = None
        self._url = ""
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def remote(self) -> bool:
        return self.store.url.startswith(("http://", "https://"))

    def environment(self, run_id: str) -> dict[str, str]:
        """PREFECT_API_URL, PREFECT_API_KEY (and the same key as PREFECT_API_AUTH_STRING, for the
        events websockets) and PREFECT__FLOW_RUN_ID for one run."""
        env = {RUN_ID_ENV: run_id}
        if self.remote:
            env[API_URL_ENV] = self.store.url.rstrip("/") + PREFECT_API_PATH
            token = getattr(self.store, "token", None) or os.environ.get("BUILDSYS_TOKEN")
            if token:
                env.update(_credentials(str(token)))
            return env
        with self._lock:
            if self._embedded is None:
                from buildsys.prefectapi import EmbeddedApi

                self._embedded = EmbeddedApi(self.store)
                self._url = str(self._embedded.start())
            key = self._keys.get(run_id) or str(self._embedded.issue_key(run_id))
            self._keys[run_id] = key
        env[API_URL_ENV] = self._url
        env.update(_credentials(key))
        return env

    def note_infrastructure(self, run_id: str, identifier: str) -> None:
        """Record where a run handed to Prefect's engine runs (its pid, container or job), as
        Prefect's worker does with PATCH /flow_runs/{id}: the engine sets the run's states itself,
        so the worker's RUNNING transition, which records it for other runs, never happens."""
        if not self.remote:
            if not isinstance(self.store, EngineRecords):
                raise StateError(f"cannot record the infrastructure of run {run_id} in {self.store.url}")
            self.store.update_run(run_id, infrastructure_pid=identifier)
            return
        url = f"{self.store.url.rstrip('/')}{PREFECT_API_PATH}/flow_runs/{run_id}"
        token = getattr(self.store, "token", None) or os.environ.get("BUILDSYS_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = httpx.patch(url, json={"infrastructure_pid": identifier}, headers=headers, timeout=30)
        except httpx.HTTPError as exc:
            raise StateError(f"could not record the infrastructure of run {run_id}: {exc}") from None
        if response.status_code >= 400:
            raise StateError(
                f"could not record the infrastructure of run {run_id}: the server answered {response.status_code} {response.text[:200]}"
            )

    def release(self, run_id: str) -> None:
        """The run ended: its key stops working."""
        with self._lock:
            key = self._keys.pop(run_id, None)
            if key is not None and self._embedded is not None:
                self._embedded.revoke_key(key)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop serving; False when the embedded API's thread did not end within `timeout`."""
        with self._lock:
            embedded, self._embedded = self._embedded, None
            self._keys.clear()
        return embedded is None or embedded.stop(timeout)


def _credentials(key: str) -> dict[str, str]:
    return {API_KEY_ENV: key, API_AUTH_ENV: f"buildsys:{key}"}

