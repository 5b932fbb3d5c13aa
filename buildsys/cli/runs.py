"""`buildsys runs ls / show / logs / cancel`: flow runs in the state store."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING

import click

from buildsys.cli.app import App, common_options, pass_app

if TYPE_CHECKING:
    from buildsys.store.base import FlowRun


@click.group()
def runs() -> None:
    """List, inspect, follow and cancel flow runs."""


@runs.command("ls")
@click.option("--deployment", "-d", help="Only runs of this deployment (FLOW/DEPLOYMENT).")
@click.option("--pool", help="Only runs on this work pool.")
@click.option("--status", "-s", "states", multiple=True, help="Only runs in this state (repeatable), e.g. RUNNING.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@common_options
@pass_app
def ls(app: App, deployment: str | None, pool: str | None, states: tuple[str, ...], limit: int) -> None:
    """The newest runs first."""
    store = app.open_store()
    try:
        found = store.list_runs(
            deployment=deployment, pool=pool, states=[s.upper() for s in states] or None, limit=limit
        )
    finally:
        store.close()
    if app.json:
        app.emit_json([r.to_dict() for r in found])
        return
    if not found:
        app.echo("No flow runs.")
        return
    rows = [("ID", "NAME", "DEPLOYMENT", "STATE", "CREATED", "DURATION")]
    rows += [(r.id[:8], r.name, r.deployment, r.state_name, _when(r.created_at), _duration(r)) for r in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        app.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@runs.command("show")
@click.argument("run_id", metavar="ID")
@common_options
@pass_app
def show(app: App, run_id: str) -> None:
    """One run's fields (ID may be a unique prefix or the run's name)."""
    store = app.open_store()
    try:
        run = store.get_run(run_id)
    finally:
        store.close()
    if app.json:
        app.emit_json(run.to_dict())
        return
    for line in describe(run):
        app.echo(line)


def describe(run: FlowRun) -> list[str]:
    fields = [
        ("id", run.id),
        ("name", run.name),
        ("deployment", run.deployment),
        ("flow", run.flow_name),
        ("pool", run.pool + (f" / queue {run.queue}" if run.queue else "")),
        ("state", run.state + (f" ({run.state_name})" if run.state_name.upper() != run.state else "")),
        ("message", run.state_message or ""),
        ("attempt", f"{run.attempt} of {run.max_retries + 1}"),
        ("scheduled", _when(run.scheduled_at)),
        ("started", _when(run.started_at)),
        ("ended", _when(run.ended_at)),
        ("duration", _duration(run)),
        ("worker", run.worker or ""),
        ("infrastructure", run.infrastructure_pid or ""),
        ("exit code", "" if run.exit_code is None else str(run.exit_code)),
        ("parameters", _json(run.parameters)),
        ("job variables", _json(run.job_variables)),
    ]
    return [f"{k + ':':<15} {v}" for k, v in fields if v]


@runs.command("logs")
@click.argument("run_id", metavar="ID")
@click.option("--follow", "follow_", is_flag=True, help="Keep printing new lines until the run ends.")
@common_options
@pass_app
def logs(app: App, run_id: str, follow_: bool) -> None:
    """The run's output (and the worker's notes, marked [worker])."""
    from buildsys.cli.run import print_logs

    store = app.open_store()
    try:
        run = store.get_run(run_id)
        seq = print_logs(app, store, run.id, 0)
        delay = 0.05
        while follow_ and not run.is_terminal:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
            run = store.get_run(run.id)
            seq = print_logs(app, store, run.id, seq)
        if follow_:
            print_logs(app, store, run.id, seq)
            app.echo(f"Flow run {run.name} finished: {run.state}" + (f" ({run.state_message})" if run.state_message else ""), err=True)
    finally:
        store.close()


@runs.command("cancel")
@click.argument("run_id", metavar="ID")
@common_options
@pass_app
def cancel(app: App, run_id: str) -> None:
    """Cancel a run: a scheduled one at once, a running one through its worker (SIGTERM, then SIGKILL)."""
    store = app.open_store()
    try:
        run = store.request_cancel(store.get_run(run_id).id)
    finally:
        store.close()
    if app.json:
        app.emit_json(run.to_dict())
    elif run.state == "CANCELLED":
        app.echo(f"Cancelled flow run {run.name} ({run.id}).")
    else:
        app.echo(f"Cancellation of flow run {run.name} ({run.id}) requested; its worker will stop it.")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def _duration(run: FlowRun) -> str:
    if run.started_at is None:
        return ""
    end = run.ended_at or time.time()
    return f"{end - run.started_at:.1f}s"


def _json(value: object) -> str:
    import json

    return json.dumps(value, sort_keys=True) if value else ""
