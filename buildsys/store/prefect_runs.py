"""Flow runs and logs of a Prefect server, as buildsys FlowRun / LogLine records.

`run`, `runs ls/show/logs/cancel` work through Prefect's API; claiming runs, heartbeats and state
changes belong to Prefect's own workers, so those calls refuse with a clear error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from buildsys.errors import NotFoundError, StateError
from buildsys.store.base import (
    CANCELLED,
    CANCELLING,
    Artifact,
    ConcurrencyLimit,
    FlowRun,
    LogEntry,
    LogLine,
    RunState,
    TaskRun,
)
from buildsys.store.prefect_api import PrefectApi
from buildsys.timestamps import epoch


class WorkersElsewhereError(StateError):
    """A worker-side call against a Prefect server, whose runs Prefect's workers serve."""


class PrefectRuns:
    api: PrefectApi
    url: str

    def _deployment_names(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        raise NotImplementedError

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
        flow, _, dep = deployment.partition("/")
        try:
            found = self.api.get(f"/deployments/name/{quote(flow, safe='')}/{quote(dep, safe='')}")
        except NotFoundError:
            raise NotFoundError(
                f"no deployment {deployment!r} in Prefect at {self.url}", hint="see `buildsys state show --kind deployment`"
            ) from None
        when = datetime.fromtimestamp(scheduled_at, UTC) if scheduled_at is not None else datetime.now(UTC)
        body: dict[str, Any] = {
            "parameters": dict(parameters or {}),
            "tags": list(tags),
            "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": when.isoformat()}},
        }
        for key, value in (("job_variables", job_variables), ("name", name), ("idempotency_key", idempotency_key),
                           ("work_queue_name", queue)):
            if value is not None:
                body[key] = dict(value) if isinstance(value, Mapping) else value
        data = self.api.write("POST", f"/deployments/{found['id']}/create_flow_run", body)
        return self._runs([data])[0]

    def get_run(self, run_id: str) -> FlowRun:
        if not run_id:
            raise NotFoundError("no flow run id given")
        try:
            return self._runs([self.api.get(f"/flow_runs/{quote(run_id, safe='')}")])[0]
        except (NotFoundError, StateError):
            pass
        found = self.api.read("/flow_runs/filter", {"flow_runs": {"name": {"any_": [run_id]}}, "limit": 2})
        if len(found) == 1:
            return self._runs(found)[0]
        raise NotFoundError(f"no flow run {run_id!r} in Prefect at {self.url}", hint="list them with `buildsys runs ls`")

    def list_runs(
        self,
        *,
        deployment: str | None = None,
        pool: str | None = None,
        states: Sequence[str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[FlowRun]:
        body: dict[str, Any] = {"sort": "EXPECTED_START_TIME_DESC", "limit": min(limit, 200), "offset": offset}
        runs: dict[str, Any] = {}
        if states:
            runs["state"] = {"type": {"any_": list(states)}}
        body["flow_runs"] = runs
        if deployment:
            flow, _, dep = deployment.partition("/")
            body["deployments"] = {"name": {"any_": [dep]}}
            body["flows"] = {"name": {"any_": [flow]}}
        if pool:
            body["work_pools"] = {"name": {"any_": [pool]}}
        return self._runs(self.api.read("/flow_runs/filter", body))

    def request_cancel(self, run_id: str) -> FlowRun:
        run = self.get_run(run_id)
        if run.is_terminal:
            from buildsys.errors import ConflictError

            raise ConflictError(f"flow run {run.name} is already {run.state}")
        target = CANCELLED if run.state == "SCHEDULED" else CANCELLING
        self.api.write("POST", f"/flow_runs/{run.id}/set_state", {"state": {"type": target, "name": target.title()}})
        return self.get_run(run.id)

    def mark_run(self, run_id: str, state: str, *, message: str | None = None, force: bool = False) -> FlowRun:
        """Prefect's set_state with `force` as given, after buildsys's own rule for a person's
        change (transitions.mark: only a final state; a finished run only when forced)."""
        from buildsys.errors import ConflictError
        from buildsys.store.transitions import mark

        run = self.get_run(run_id)
        mark(run, state, 0.0, message=message, force=force)  # refuses what buildsys would refuse
        body = {"state": {"type": state, "name": state.title(), "message": message}, "force": force}
        answer = self.api.write("POST", f"/flow_runs/{run.id}/set_state", body)
        status = answer.get("status") if isinstance(answer, Mapping) else None
        if status not in (None, "ACCEPT"):
            details = answer.get("details") if isinstance(answer, Mapping) else None
            reason = details.get("reason") if isinstance(details, Mapping) else None
            raise ConflictError(f"Prefect did not accept {state} for flow run {run.name}: {status} ({reason or 'no reason given'})")
        return self.get_run(run.id)

    def delete_run(self, run_id: str) -> FlowRun:
        """Prefect's DELETE /flow_runs/{id} (its task runs go with it, its logs soon after), once
        buildsys's rule allows it (transitions.check_delete: not while it may be running)."""
        from buildsys.store.transitions import check_delete

        run = self.get_run(run_id)
        check_delete(run)
        self.api.write("DELETE", f"/flow_runs/{run.id}")
        return run

    def list_run_states(self, run_id: str) -> list[RunState]:
        """Prefect's own history of the run (it keeps every state it accepted)."""
        run = self.get_run(run_id)
        found = self.api.get(f"/flow_run_states/?flow_run_id={quote(run.id, safe='')}")
        states = [
            RunState(
                run_id=run.id,
                ts=epoch(s.get("timestamp")) or 0.0,
                state=str(s.get("type") or ""),
                name=str(s.get("name") or s.get("type") or ""),
                message=s.get("message") or None,
            )
            for s in found
            if isinstance(s, Mapping)
        ]
        return sorted(states, key=lambda s: s.ts)

    def read_logs(self, run_id: str, *, after: int = 0, limit: int = 1000) -> list[LogLine]:
        body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "offset": after, "limit": min(limit, 200)}
        return [
            LogLine(
                run_id=run_id,
                seq=after + i + 1,
                ts=epoch(line.get("timestamp")) or 0.0,
                message=str(line.get("message") or ""),
                stream="prefect",
                level=int(line.get("level") or 20),
                logger=line.get("name"),
                task_run_id=line.get("task_run_id"),
            )
            for i, line in enumerate(self.api.read("/logs/filter", body))
        ]

    # --- what Prefect's engine recorded (task runs, artifacts, concurrency limits) ---------
    def list_task_runs(self, flow_run_id: str) -> list[TaskRun]:
        body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 200}
        out = []
        for t in self.api.read("/task_runs/filter", body):
            state = t.get("state") or {}
            out.append(
                TaskRun(
                    id=str(t["id"]),
                    flow_run_id=flow_run_id,
                    name=str(t.get("name") or ""),
                    task_key=str(t.get("task_key") or ""),
                    dynamic_key=str(t.get("dynamic_key") or ""),
                    state=str(state.get("type") or "PENDING"),
                    state_name=str(state.get("name") or ""),
                    state_message=state.get("message"),
                    state_ts=epoch(state.get("timestamp")) or 0.0,
                    created_at=epoch(t.get("created")) or 0.0,
                    started_at=epoch(t.get("start_time")),
                    ended_at=epoch(t.get("end_time")),
                    run_count=int(t.get("run_count") or 0),
                    cached=state.get("name") == "Cached",
                    tags=tuple(t.get("tags") or ()),
                )
            )
        return out

    def list_artifacts(self, *, flow_run_id: str | None = None, key: str | None = None) -> list[Artifact]:
        where: dict[str, Any] = {}
        if flow_run_id is not None:
            where["flow_run_id"] = {"any_": [flow_run_id]}
        if key is not None:
            where["key"] = {"any_": [key]}
        # Prefect sorts artifacts newest first only: read that way, return oldest first
        found = self.api.read("/artifacts/filter", {"artifacts": where, "sort": "CREATED_DESC", "limit": 200})[::-1]
        return [
            Artifact(
                id=str(a["id"]), flow_run_id=a.get("flow_run_id"), task_run_id=a.get("task_run_id"), key=a.get("key"),
                type=a.get("type"), description=a.get("description"), data=a.get("data"),
                created_at=epoch(a.get("created")) or 0.0,
            )
            for a in found
        ]

    def list_concurrency_limits(self) -> list[ConcurrencyLimit]:
        return [
            ConcurrencyLimit(name=str(x["name"]), limit=int(x["limit"]), active_slots=int(x.get("active_slots") or 0),
                             id=str(x.get("id") or ""), created_at=epoch(x.get("created")) or 0.0)
            for x in self.api.read("/v2/concurrency_limits/filter", {"limit": 200})
        ]

    def set_concurrency_limit(self, name: str, limit: int | None) -> ConcurrencyLimit | None:
        path = f"/v2/concurrency_limits/{quote(name, safe='')}"
        if limit is None:
            self.api.write("DELETE", path)
            return None
        try:
            self.api.write("PATCH", path, {"limit": limit})
        except NotFoundError:
            self.api.write("POST", "/v2/concurrency_limits/", {"name": name, "limit": limit})
        x = self.api.get(path)
        return ConcurrencyLimit(name=name, limit=int(x["limit"]), active_slots=int(x.get("active_slots") or 0), id=str(x.get("id") or ""))

    # --- what Prefect's workers do --------------------------------------------------------
    def _elsewhere(self) -> WorkersElsewhereError:
        return WorkersElsewhereError(
            f"{self.url} is a Prefect server: its runs are claimed and run by Prefect's own workers",
            hint="start one with `prefect worker start --pool POOL`",
        )

    def claim_runs(self, pool: str, worker: str, **_: Any) -> list[FlowRun]:
        raise self._elsewhere()

    def heartbeat(self, pool: str, worker: str, run_ids: Sequence[str], **_: Any) -> list[str]:
        raise self._elsewhere()

    def set_run_state(self, run_id: str, state: str, **_: Any) -> FlowRun:
        raise self._elsewhere()

    def expire_leases(self, *, now: float | None = None) -> list[FlowRun]:
        raise self._elsewhere()

    def append_logs(self, run_id: str, lines: Sequence[tuple[float, str, str] | LogEntry]) -> int:
        raise self._elsewhere()

    # --- records ----------------------------------------------------------------------------
    def _runs(self, data: Sequence[Mapping[str, Any]]) -> list[FlowRun]:
        names = self._deployment_names([str(d["deployment_id"]) for d in data if d.get("deployment_id")])
        return [_run(d, names.get(str(d.get("deployment_id")))) for d in data]


def _run(d: Mapping[str, Any], names: tuple[str, str] | None) -> FlowRun:
    state = d.get("state") or {}
    flow, dep = names or ("?", "?")
    return FlowRun(
        id=str(d["id"]),
        name=str(d.get("name") or ""),
        deployment=f"{flow}/{dep}" if names else "",
        deployment_id=str(d.get("deployment_id") or ""),
        flow_name=flow,
        pool=str(d.get("work_pool_name") or ""),
        queue=d.get("work_queue_name"),
        parameters=d.get("parameters") or {},
        job_variables=d.get("job_variables") or {},
        state=str(d.get("state_type") or state.get("type") or "SCHEDULED"),
        state_name=str(d.get("state_name") or state.get("name") or ""),
        state_message=state.get("message"),
        scheduled_at=epoch(d.get("expected_start_time")) or 0.0,
        created_at=epoch(d.get("created")) or 0.0,
        started_at=epoch(d.get("start_time")),
        ended_at=epoch(d.get("end_time")),
        attempt=max(1, int(d.get("run_count") or 1)),
        infrastructure_pid=d.get("infrastructure_pid"),
        auto_scheduled=bool(d.get("auto_scheduled")),
        idempotency_key=d.get("idempotency_key"),
        tags=tuple(d.get("tags") or ()),
    )

