"""The state store over HTTP: a client of `buildsys server` that implements the StateStore protocol.

Idempotent calls (reads, heartbeats, runs created with an idempotency key) are retried with backoff
on connection errors and 5xx answers; calls that change state once (apply, claim, state transitions,
log appends) are not, so a lost answer never applies twice. The token comes from BUILDSYS_TOKEN.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from buildsys.errors import ConflictError, NotFoundError, StateError
from buildsys.httpclient import ONE_ORIGIN, httpx
from buildsys.sensitive import mask_url
from buildsys.store.base import (
    KINDS,
    Artifact,
    Change,
    ConcurrencyLimit,
    FlowRun,
    LogEntry,
    LogLine,
    Resource,
    RunState,
    TaskRun,
    WorkerInfo,
)

API = "/api/v1"
PAGE = 1000  # runs per request (the server's maximum)
RESOURCE_PAGE = 10_000  # resources per request (the server's maximum)
MAX_SERVER_WAIT = 30.0
RETRIES = 4
BACKOFF = 0.2  # seconds; doubles per attempt


class ServerUnreachableError(StateError):
    """The server did not answer (down, wrong URL, network)."""


class AuthenticationError(StateError):
    """The server refused the token (missing, wrong, revoked, or not allowed this call)."""


class HttpStore:
    """StateStore over `buildsys server`'s JSON API."""

    schedules_itself = True  # the server turns schedules into runs; its workers need not (nor may, with a worker token)

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.shown_url = mask_url(self.url)  # what messages say: never the userinfo's password
        self.retries = retries
        self._timeout = timeout
        token = token if token is not None else os.environ.get("BUILDSYS_TOKEN") or None
        self.token = token  # also what a worker hands its runs' Prefect engines as PREFECT_API_KEY
        headers = {"Accept": "application/json", "User-Agent": "buildsys"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            limits=ONE_ORIGIN,
        )

    # --- transport -------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Any = None,
        idempotent: bool,
        timeout: float | None = None,
    ) -> Any:
        attempts = self.retries + 1 if idempotent else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._client.request(
                    method, path, json=body, params=params, timeout=timeout or httpx.USE_CLIENT_DEFAULT
                )
            except httpx.TransportError as exc:
                if last:
                    raise self._unreachable(exc) from None
            else:
                if response.status_code < 500 or last:
                    return self._result(response)
            time.sleep(BACKOFF * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _unreachable(self, exc: httpx.TransportError) -> ServerUnreachableError:
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "is unreachable"
        return ServerUnreachableError(
            f"the buildsys server at {self.shown_url} {kind}: {exc or type(exc).__name__}",
            hint="check that `buildsys server start` runs there and that --state / BUILDSYS_STATE is right",
        )

    def _result(self, response: httpx.Response) -> Any:
        status = response.status_code
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if 200 <= status < 300:
            return payload
        error = payload.get("error") if isinstance(payload, dict) else None
        message = (
            str(error.get("message"))
            if isinstance(error, dict)
            else response.text[:200] or response.reason_phrase
        )
        hint = str(error["hint"]) if isinstance(error, dict) and error.get("hint") else None
        where = f"the buildsys server at {self.shown_url}"
        if status == 401:
            raise AuthenticationError(
                f"{where} refused the request: {message}",
                hint="set BUILDSYS_TOKEN to a token made with `buildsys server token create`",
            )
        if status == 403:
            raise AuthenticationError(f"{where} refused the request: {message}", hint=hint)
        if status == 404:
            raise NotFoundError(message, hint=hint)
        if status == 409:
            raise ConflictError(message, hint=hint)
        if status in (400, 413, 422):
            raise StateError(message, hint=hint)
        raise StateError(f"{where} answered {status}: {message}", hint=hint)

    # --- desired state ---------------------------------------------------------------------
    def serial(self) -> int:
        return int(self._call("GET", f"{API}/serial", idempotent=True)["serial"])

    def list_resources(self, kind: str | None = None) -> list[Resource]:
        while True:  # pages of one serial only: start over if an apply lands in between
            items: list[Resource] = []
            serial = None
            offset = 0
            while True:
                params: dict[str, Any] = {"limit": RESOURCE_PAGE, "offset": offset}
                if kind is not None:
                    params["kind"] = kind
                page = self._call("GET", f"{API}/resources", params=params, idempotent=True)
                if serial is not None and page["serial"] != serial:
                    break
                serial = page["serial"]
                items.extend(_resource(r) for r in page["items"])
                offset += len(page["items"])
                if not page["items"] or offset >= page["total"]:
                    return items

    def get_resource(self, kind: str, name: str) -> Resource | None:
        if kind not in KINDS:  # the typed routes cannot carry it; say it as the store does
            raise StateError(f"unknown resource kind {kind!r}", hint=f"one of: {', '.join(KINDS)}")
        try:
            data = self._call("GET", f"{API}/{kind}s/{_segment(name)}", idempotent=True)
        except NotFoundError:
            return None
        return _resource(data)

    def apply(self, changes: Sequence[Change], *, expected_serial: int | None) -> int:
        body = {"changes": [c.to_dict() for c in changes], "expected_serial": expected_serial}
        return int(self._call("POST", f"{API}/apply", body=body, idempotent=False)["serial"])

    # --- flow runs -------------------------------------------------------------------------
    def create_run(
        self,
        deployment: str,
        *,
        parameters: Mapping[str, Any] | None = None,
        job_variables: Mapping[str, Any] | None = None,
        scheduled_at: float | None = None,
        queue: str | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
        auto_scheduled: bool = False,
        tags: Sequence[str] = (),
    ) -> FlowRun:
        body = {
            "deployment": deployment,
            "parameters": dict(parameters) if parameters is not None else None,
            "job_variables": dict(job_variables) if job_variables is not None else None,
            "scheduled_at": scheduled_at,
            "queue": queue,
            "name": name,
            "idempotency_key": idempotency_key,
            "auto_scheduled": auto_scheduled,
            "tags": list(tags),
        }
        data = self._call("POST", f"{API}/runs", body=body, idempotent=idempotency_key is not None)
        return FlowRun.from_dict(data)

    def get_run(self, run_id: str) -> FlowRun:
        if not run_id:
            raise NotFoundError("no flow run id given")
        return FlowRun.from_dict(self._call("GET", f"{API}/runs/{_segment(run_id)}", idempotent=True))

    def list_runs(
        self,
        *,
        deployment: str | None = None,
        pool: str | None = None,
        states: Sequence[str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[FlowRun]:
        runs: list[FlowRun] = []
        while len(runs) < limit:  # the server pages at PAGE
            params: list[tuple[str, str | int]] = [
                ("limit", min(PAGE, limit - len(runs))),
                ("offset", offset),
            ]
            params += [("deployment", deployment)] if deployment is not None else []
            params += [("pool", pool)] if pool is not None else []
            params += [("state", s) for s in states or ()]
            page = self._call("GET", f"{API}/runs", params=params, idempotent=True)["items"]
            runs.extend(FlowRun.from_dict(r) for r in page)
            offset += len(page)
            if len(page) < int(params[0][1]):
                break
        return runs

    def claim_runs(
        self,
        pool: str,
        worker: str,
        *,
        queues: Sequence[str] | None = None,
        limit: int = 1,
        lease_seconds: float = 30.0,
        wait: float = 0.0,
    ) -> list[FlowRun]:
        """Long-polls the server; waits longer than its cap are several polls in a row."""
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            chunk = min(MAX_SERVER_WAIT, max(0.0, deadline - time.monotonic()))
            body = {
                "pool": pool,
                "worker": worker,
                "queues": list(queues) if queues is not None else None,
                "limit": limit,
                "lease_seconds": lease_seconds,
                "wait": chunk,
            }
            data = self._call(
                "POST", f"{API}/runs/claim", body=body, idempotent=False, timeout=self._timeout + chunk
            )
            runs = [FlowRun.from_dict(r) for r in data["runs"]]
            if runs or time.monotonic() >= deadline:
                return runs

    def heartbeat(
        self, pool: str, worker: str, run_ids: Sequence[str], *, lease_seconds: float = 30.0
    ) -> list[str]:
        body = {"pool": pool, "worker": worker, "run_ids": list(run_ids), "lease_seconds": lease_seconds}
        return list(self._call("POST", f"{API}/workers/heartbeat", body=body, idempotent=True)["cancelling"])

    def set_run_state(
        self,
        run_id: str,
        state: str,
        *,
        name: str | None = None,
        message: str | None = None,
        worker: str | None = None,
        infrastructure_pid: str | None = None,
        exit_code: int | None = None,
    ) -> FlowRun:
        body = {
            "state": state,
            "name": name,
            "message": message,
            "worker": worker,
            "infrastructure_pid": infrastructure_pid,
            "exit_code": exit_code,
        }
        data = self._call("POST", f"{API}/runs/{_segment(run_id)}/state", body=body, idempotent=False)
        return FlowRun.from_dict(data)

    def request_cancel(self, run_id: str) -> FlowRun:
        return FlowRun.from_dict(
            self._call("POST", f"{API}/runs/{_segment(run_id)}/cancel", idempotent=False)
        )

    def mark_run(self, run_id: str, state: str, *, message: str | None = None, force: bool = False) -> FlowRun:
        body = {"state": state, "message": message, "force": force}
        return FlowRun.from_dict(
            self._call("POST", f"{API}/runs/{_segment(run_id)}/mark", body=body, idempotent=False)
        )

    def delete_run(self, run_id: str) -> FlowRun:
        return FlowRun.from_dict(self._call("DELETE", f"{API}/runs/{_segment(run_id)}", idempotent=False))

    def list_run_states(self, run_id: str) -> list[RunState]:
        data = self._call("GET", f"{API}/runs/{_segment(run_id)}/states", idempotent=True)
        return [RunState.from_dict(s) for s in data["items"]]

    def expire_leases(self, *, now: float | None = None) -> list[FlowRun]:
        data = self._call("POST", f"{API}/runs/expire", body={"now": now}, idempotent=False)
        return [FlowRun.from_dict(r) for r in data["runs"]]

    # --- logs and workers ------------------------------------------------------------------
    def append_logs(self, run_id: str, lines: Sequence[tuple[float, str, str] | LogEntry]) -> int:
        entries = [line if isinstance(line, LogEntry) else LogEntry(*line) for line in lines]
        body = {"lines": [_log_entry(e) for e in entries]}
        data = self._call("POST", f"{API}/runs/{_segment(run_id)}/logs", body=body, idempotent=False)
        return int(data["last_seq"])

    def read_logs(
        self, run_id: str, *, after: int = 0, limit: int = 1000, wait: float = 0.0
    ) -> list[LogLine]:
        """With `wait` > 0 a follow: waits (long-poll) until lines after `after` exist or the run ends."""
        return self.follow_logs(run_id, after=after, limit=limit, wait=wait)[0]

    def follow_logs(
        self, run_id: str, *, after: int = 0, limit: int = 1000, wait: float = 0.0
    ) -> tuple[list[LogLine], str]:
        """Lines after `after` and the run's state type (a follower stops at a terminal state)."""
        chunk = min(MAX_SERVER_WAIT, max(0.0, wait))
        params = {"after": after, "limit": limit, "wait": chunk}
        data = self._call(
            "GET",
            f"{API}/runs/{_segment(run_id)}/logs",
            params=params,
            idempotent=True,
            timeout=self._timeout + chunk,
        )
        return [LogLine.from_dict(x) for x in data["lines"]], str(data["state"])

    def list_workers(self, pool: str | None = None) -> list[WorkerInfo]:
        params = {"pool": pool} if pool is not None else None
        return [
            WorkerInfo.from_dict(w)
            for w in self._call("GET", f"{API}/workers", params=params, idempotent=True)["items"]
        ]

    # --- what Prefect's engine recorded -----------------------------------------------------
    def list_task_runs(self, flow_run_id: str) -> list[TaskRun]:
        data = self._call("GET", f"{API}/runs/{_segment(flow_run_id)}/task_runs", idempotent=True)
        return [TaskRun.from_dict(t) for t in data["items"]]

    def list_artifacts(self, *, flow_run_id: str | None = None, key: str | None = None) -> list[Artifact]:
        params = {k: v for k, v in (("run_id", flow_run_id), ("key", key)) if v is not None}
        data = self._call("GET", f"{API}/artifacts", params=params, idempotent=True)
        return [Artifact.from_dict(a) for a in data["items"]]

    def list_concurrency_limits(self) -> list[ConcurrencyLimit]:
        data = self._call("GET", f"{API}/concurrency_limits", idempotent=True)
        return [ConcurrencyLimit.from_dict(x) for x in data["items"]]

    def set_concurrency_limit(self, name: str, limit: int | None) -> ConcurrencyLimit | None:
        data = self._call(
            "PUT", f"{API}/concurrency_limits/{_segment(name)}", body={"limit": limit}, idempotent=True
        )
        return None if data["limit"] is None else ConcurrencyLimit.from_dict(data["limit"])

    # --- housekeeping ----------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        data: dict[str, Any] = self._call("GET", f"{API}/export", idempotent=True)
        return data

    def import_(self, data: Mapping[str, Any]) -> None:
        self._call("POST", f"{API}/import", body=dict(data), idempotent=True)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HttpStore({self.shown_url!r})"


def _log_entry(e: LogEntry) -> dict[str, Any]:
    line: dict[str, Any] = {"ts": e.ts, "stream": e.stream, "message": e.message}
    if e.stream == "prefect":
        line.update(level=e.level, logger=e.logger, task_run_id=e.task_run_id)
    return line


def _resource(data: dict[str, Any]) -> Resource:
    """Resource.from_dict without its per-call field introspection (plans read thousands)."""
    return Resource(
        kind=data["kind"],
        name=data["name"],
        spec=data["spec"],
        owner=data.get("owner"),
        source=data.get("source"),
        id=data.get("id", ""),
        created_at=data.get("created_at", 0.0),
        updated_at=data.get("updated_at", 0.0),
        serial=data.get("serial", 0),
    )


def _segment(value: str) -> str:
    """A name in a path; "/" is kept for names like flow/deployment (those routes take paths), and
    "." / ".." segments are escaped so no client normalises them away."""
    parts = quote(value, safe="/").split("/")
    return "/".join(p.replace(".", "%2E") if p in (".", "..") else p for p in parts)
