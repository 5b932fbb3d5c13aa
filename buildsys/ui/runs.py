"""Flow runs: the filtered, paginated list; a run's page (state timeline, parameters, live logs);
cancel, retry, a final state set by hand, and delete (after a confirmation page). Logs follow by
long-poll: the page asks for the lines after the last one it shows, and the answer comes as soon
as a line is written (or the run ends, or 20 s pass)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from buildsys.errors import BuildsysError, ConflictError, NotFoundError, StateError
from buildsys.store.base import STATE_TYPES, TERMINAL, FlowRun, LogLine, RunState, StateStore, TaskRun
from buildsys.store.transitions import BY_HAND, HELD
from buildsys.ui.page import LOG_FILTERS, Ui, state_key
from buildsys.ui.session import Viewer, posted

PAGE_SIZE = 50
MAX_MESSAGE = 10_000  # characters of a state message typed by hand
FIRST_LOG_LINES = 2000
FOLLOW_SECONDS = 20.0
WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}  # the "created within" filter
SCAN_CHUNK = 500


def _filters(request: Request) -> dict[str, Any]:
    q = request.query_params
    states = [s for s in q.getlist("state") if s in STATE_TYPES]
    page = q.get("page", "1")
    return {
        "state": states,
        "deployment": q.get("deployment") or None,
        "pool": q.get("pool") or None,
        "since": q.get("since") if q.get("since") in WINDOWS else "",
        "page": max(1, int(page)) if page.isdigit() else 1,
    }


def list_page(store: Any, f: Mapping[str, Any]) -> tuple[list[FlowRun], bool]:
    """One page of runs matching the filters, and whether there is a next page. The time window
    is read newest first and stops at the first run older than it."""
    offset = (f["page"] - 1) * PAGE_SIZE
    query = {"deployment": f["deployment"], "pool": f["pool"], "states": f["state"] or None}
    if not f["since"]:
        found = store.list_runs(**query, limit=PAGE_SIZE + 1, offset=offset)
        return found[:PAGE_SIZE], len(found) > PAGE_SIZE
    cutoff = time.time() - WINDOWS[f["since"]]
    matched: list[FlowRun] = []
    scanned = 0
    while len(matched) <= offset + PAGE_SIZE:
        chunk = store.list_runs(**query, limit=SCAN_CHUNK, offset=scanned)
        scanned += len(chunk)
        recent = [r for r in chunk if r.created_at >= cutoff]
        matched.extend(recent)
        if len(chunk) < SCAN_CHUNK or len(recent) < len(chunk):
            break
    return matched[offset : offset + PAGE_SIZE], len(matched) > offset + PAGE_SIZE


async def runs_list(ui: Ui, request: Request, who: Viewer) -> Response:
    f = _filters(request)
    store = ui.services.store

    def read() -> tuple[list[FlowRun], bool, list[str], list[str]]:
        runs, more = list_page(store, f)
        deployments = [d.name for d in store.list_resources("deployment")]
        pools = [p.name for p in store.list_resources("pool")]
        return runs, more, deployments, pools

    runs, more, deployments, pools = await ui.sync(read)
    base = {k: v for k, v in f.items() if k != "page" and v}

    def link(page: int) -> str:
        return "/runs?" + urlencode({**base, "page": page}, doseq=True)

    return ui.render(
        request, who, "runs.html", runs=runs, f=f, states=STATE_TYPES, windows=list(WINDOWS),
        deployments=deployments, pools=pools, deleted=request.query_params.get("deleted"),
        prev=link(f["page"] - 1) if f["page"] > 1 else None, next=link(f["page"] + 1) if more else None,
    )


@dataclass(frozen=True)
class Stay:
    """A state of the run's history and how long the run stayed in it: until the next state, or
    until `now` for the state it is in (`current`); None for the state a finished run ended in."""

    state: RunState
    seconds: float | None
    current: bool = False


def stays(run: FlowRun, states: list[RunState], now: float) -> list[Stay]:
    out = [Stay(s, nxt.ts - s.ts) for s, nxt in pairwise(states)]
    if states:
        last = states[-1]
        out.append(Stay(last, None) if run.is_terminal else Stay(last, max(now - last.ts, 0.0), current=True))
    return out


def timeline(run: FlowRun) -> list[tuple[str, float]]:
    """The moments the run itself records, for a run made before the store kept state histories."""
    points = [("Created", run.created_at), ("Scheduled for", run.scheduled_at)]
    if run.started_at:
        points.append(("Started", run.started_at))
    if run.ended_at:
        points.append((run.state_name, run.ended_at))
    elif run.state not in ("SCHEDULED",):
        points.append((f"{run.state_name} (now)", time.time()))
    return sorted(points, key=lambda p: p[1])


async def run_page(ui: Ui, request: Request, who: Viewer, status: int = 200, **shown: Any) -> Response:
    """The run's page; `shown` adds what a refused change-state form shows again (its error, values)."""
    store = ui.services.store

    def read() -> tuple[FlowRun, list[LogLine], dict[str, Any]]:
        run = store.get_run(request.path_params["run_id"])
        return run, store.read_logs(run.id, limit=FIRST_LOG_LINES), extras(store, run)

    run, lines, extra = await ui.sync(read)
    last = lines[-1].seq if lines else 0
    only = log_filter(request)
    form = {"state": next(s for s in BY_HAND if s != run.state), "message": "", "force": False, "error": None,
            "hint": None, **shown}
    return ui.render(
        request, who, "run.html", status=status, run=run, lines=filtered_logs(lines, only), last=last,
        timeline=timeline(run), following=not run.is_terminal, more=len(lines) >= FIRST_LOG_LINES, only=only,
        by_hand=BY_HAND, change=form, **extra,
    )


def log_filter(request: Request) -> str:
    wanted = request.query_params.get("logs", "")
    return wanted if wanted in LOG_FILTERS else ""


def filtered_logs(lines: list[LogLine], only: str) -> list[LogLine]:
    if only == "problems":
        return [x for x in lines if x.stream == "stderr" or (x.level is not None and x.level >= 30)]
    return lines


def extras(store: StateStore, run: FlowRun) -> dict[str, Any]:
    """The run's state history; task runs (with their timeline) and artifacts: what Prefect's
    engine recorded for the run."""
    task_runs = store.list_task_runs(run.id)
    return {
        "stays": stays(run, store.list_run_states(run.id), time.time()),
        "task_runs": task_runs,
        "task_svg": task_timeline_svg(task_runs) if task_runs else None,
        "artifacts": store.list_artifacts(flow_run_id=run.id),
    }


def task_timeline_svg(task_runs: list[TaskRun], *, width: int = 640, row: int = 22) -> str:
    """One bar per task run from its start to its end (or now), on the run's shared time axis."""
    from xml.sax.saxutils import escape

    now = time.time()
    spans = [(t, t.started_at or t.created_at, t.ended_at or (t.state_ts if t.state in TERMINAL else now))
             for t in task_runs]
    start = min(s for _, s, _ in spans)
    end = max(max(e for _, _, e in spans), start + 0.001)
    label_w, scale = 200, (width - 210) / (end - start)
    height = row * len(spans) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-labelledby="tasks-title" class="tasks">',
             f'<title id="tasks-title">Task runs over time: {len(spans)} task run(s), '
             f'{end - start:.2f} s from the first start to the last end</title>']
    for i, (t, s, e) in enumerate(spans):
        y = i * row + 4
        x = label_w + (s - start) * scale
        w = max((e - s) * scale, 2)
        fill = {"COMPLETED": "#1e7b34", "FAILED": "#b3261e", "CRASHED": "#b3261e"}.get(t.state, "#0b57d0")
        name = t.name if len(t.name) <= 28 else t.name[:27] + "…"
        parts.append(
            f'<g><title>{escape(t.name)}: {escape(t.state_name)}, {e - s:.2f} s</title>'
            f'<text x="0" y="{y + 14}" font-family="sans-serif" font-size="12" fill="#111">{escape(name)}</text>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 8}" rx="3" fill="{fill}"/></g>'
        )
    parts.append(f'<text x="{label_w}" y="{height - 4}" font-family="sans-serif" font-size="11" fill="#333">0 s</text>')
    parts.append(f'<text x="{width - 4}" y="{height - 4}" text-anchor="end" font-family="sans-serif" font-size="11" '
                 f'fill="#333">{end - start:.2f} s</text></svg>')
    return "".join(parts)


async def logs(ui: Ui, request: Request, who: Viewer) -> Response:
    """The log lines after `after`, waiting for them; the answer ends with the next follower."""
    after_text = request.query_params.get("after", "0")
    after = int(after_text) if after_text.isdigit() else 0
    shown = request.query_params.get("state")  # the state the page shows: a change answers at once
    services = ui.services
    deadline = time.monotonic() + FOLLOW_SECONDS
    while True:
        seen = services.logs_changed.generation
        try:
            run, lines = await ui.sync(_read_after, services.store, request.path_params["run_id"], after)
        except NotFoundError:
            if not request.headers.get("hx-request"):
                raise
            # the run a page follows was deleted meanwhile: end the follow instead of answering 404
            return ui.render(request, who, "log_lines.html", gone=True, lines=[], following=False)
        remaining = deadline - time.monotonic()
        moved = shown is not None and shown != state_key(run)
        if lines or run.is_terminal or remaining <= 0 or moved:
            break
        await services.logs_changed.wait(min(remaining, services.poll_interval), seen)
        if await request.is_disconnected():
            return Response(status_code=204)
    last = lines[-1].seq if lines else after
    states = await ui.sync(services.store.list_run_states, run.id)
    only = log_filter(request)
    return ui.render(
        request, who, "log_lines.html", run=run, lines=filtered_logs(lines, only), last=last, following=not run.is_terminal,
        stays=stays(run, states, time.time()), only=only,
    )


def _read_after(store: Any, run_id: str, after: int) -> tuple[FlowRun, list[LogLine]]:
    run = store.get_run(run_id)
    lines = store.read_logs(run.id, after=after, limit=FIRST_LOG_LINES)
    if lines and not run.is_terminal:
        run = store.get_run(run.id)  # the state the lines were written in, for the badge
    return run, lines


async def cancel(ui: Ui, request: Request, who: Viewer) -> Response:
    run = await ui.sync(ui.services.store.request_cancel, request.path_params["run_id"])
    ui.services.runs_changed.notify()
    ui.services.logs_changed.notify()
    return RedirectResponse(f"/runs/{run.id}", status_code=303)


async def retry(ui: Ui, request: Request, who: Viewer) -> Response:
    """A new run of the same deployment with the same parameters and job-variable overrides."""
    store = ui.services.store

    def again() -> FlowRun:
        run = store.get_run(request.path_params["run_id"])
        if run.state not in TERMINAL:
            raise ConflictError(f"run {run.name} is still {run.state_name}: only a finished run can be retried",
                                hint="cancel it first")
        return store.create_run(
            run.deployment, parameters=dict(run.parameters), job_variables=dict(run.job_variables) or None,
            tags=run.tags,
        )

    new = await ui.sync(again)
    ui.services.runs_changed.notify()
    return RedirectResponse(f"/runs/{new.id}", status_code=303)


async def change_state(ui: Ui, request: Request, who: Viewer) -> Response:
    """A final state set by hand (Prefect's "Change state"); a refusal shows the form again with
    its reason, what was typed kept."""
    form = await posted(request)
    state = form.get("state", "")
    message = form.get("message", "").strip() or None
    force = form.get("force") == "yes"
    try:
        if message is not None and len(message) > MAX_MESSAGE:
            raise StateError(f"the message is {len(message)} characters long; at most {MAX_MESSAGE} are kept")
        run = await ui.sync(ui.services.store.mark_run, request.path_params["run_id"], state, message=message, force=force)
    except NotFoundError:
        raise
    except BuildsysError as exc:
        status = 409 if isinstance(exc, ConflictError) else 422
        return await run_page(ui, request, who, status, state=state, message=message or "", force=force,
                              error=exc.message, hint=exc.hint)
    ui.services.runs_changed.notify()  # a retry may be claimable, a concurrency slot freed
    ui.services.logs_changed.notify()  # pages following the run see its new state
    return RedirectResponse(f"/runs/{run.id}", status_code=303)


async def confirm_delete(ui: Ui, request: Request, who: Viewer) -> Response:
    """What deleting the run takes with it, and the button that does it (or why it cannot be deleted)."""
    store = ui.services.store

    def read() -> tuple[FlowRun, int, int]:
        run = store.get_run(request.path_params["run_id"])
        return run, len(store.list_run_states(run.id)), len(store.list_task_runs(run.id))

    run, state_count, task_count = await ui.sync(read)
    refusal = (
        f"This run is {run.state_name} ({run.state}): a worker or its flow may still be running it, so it is "
        "not deleted. Cancel it first, and delete it once it has ended."
        if run.state in HELD else None
    )
    return ui.render(
        request, who, "run_delete.html", status=409 if refusal else 200, run=run, refusal=refusal,
        state_count=state_count, task_count=task_count,
    )


async def delete(ui: Ui, request: Request, who: Viewer) -> Response:
    run = await ui.sync(ui.services.store.delete_run, request.path_params["run_id"])
    ui.services.logs_changed.notify()  # a page following the run finds it gone
    return RedirectResponse("/runs?" + urlencode({"deleted": run.name}), status_code=303)


ROUTES = (
    ("/runs", "GET", "read", runs_list),
    ("/runs/{run_id}", "GET", "read", run_page),
    ("/runs/{run_id}/logs", "GET", "read", logs),
    ("/runs/{run_id}/cancel", "POST", "apply", cancel),
    ("/runs/{run_id}/retry", "POST", "apply", retry),
    ("/runs/{run_id}/state", "POST", "apply", change_state),
    ("/runs/{run_id}/delete", "GET", "apply", confirm_delete),
    ("/runs/{run_id}/delete", "POST", "apply", delete),
)
