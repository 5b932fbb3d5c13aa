"""`buildsys runs ls / show / logs / cancel / retry / mark / delete`: flow runs in the state store."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import click

from buildsys.cli.app import App, ask_or_refuse, common_options, pass_app

if TYPE_CHECKING:
    from buildsys.store.base import Artifact, FlowRun, LogLine, RunState, StateStore, TaskRun


@click.group()
def runs() -> None:
    """List, inspect, follow, cancel, retry, mark and delete flow runs."""


@runs.command("ls")
@click.option("--deployment", "-d", help="Only runs of this deployment (FLOW/DEPLOYMENT).")
@click.option("--pool", help="Only runs on this work pool.")
@click.option("--status", "-s", "states", multiple=True, callback=lambda c, p, v: _known_states(v),
              help="Only runs in this state (repeatable), e.g. RUNNING.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@common_options
@pass_app
def ls(app: App, deployment: str | None, pool: str | None, states: tuple[str, ...], limit: int) -> None:
    """The newest runs first."""
    with app.store() as store:
        found = store.list_runs(
            deployment=deployment, pool=pool, states=[s.upper() for s in states] or None, limit=limit
        )
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


def _known_states(given: tuple[str, ...]) -> tuple[str, ...]:
    """A state filter that matches no state is a mistake, not "No flow runs."."""
    from buildsys.store.base import STATE_TYPES
    from buildsys.suggest import did_you_mean

    for state in given:
        if state.upper() not in STATE_TYPES:
            guess = did_you_mean(state.upper(), STATE_TYPES)
            raise click.BadParameter(
                f"{state!r} is not a run state; the states are {', '.join(STATE_TYPES)}" + (f" ({guess})" if guess else "")
            )
    return given


@runs.command("show")
@click.argument("run_id", metavar="ID")
@common_options
@pass_app
def show(app: App, run_id: str) -> None:
    """One run's fields, every state it entered, its task runs and its artifacts (ID may be a
    unique prefix or the name)."""
    with app.store() as store:
        run = store.get_run(run_id)
        states = store.list_run_states(run.id)
        tasks = store.list_task_runs(run.id)
        artifacts = store.list_artifacts(flow_run_id=run.id)
    if app.json:
        app.emit_json(
            {
                **run.to_dict(),
                "states": [s.to_dict() for s in states],
                "task_runs": [{**t.to_dict(), "tags": list(t.tags), "history": list(t.history)} for t in tasks],
                "artifacts": [a.to_dict() for a in artifacts],
            }
        )
        return
    for line in [*describe(run), *describe_states(run, states), *describe_tasks(tasks), *describe_artifacts(artifacts)]:
        app.echo(line)


def describe_states(run: FlowRun, states: Sequence[RunState]) -> list[str]:
    """The state history as a table: each state, when it was entered, how long the run stayed in it."""
    if not states:
        return []
    rows = [("STATE", "TYPE", "ENTERED", "FOR", "ATTEMPT", "WORKER", "MESSAGE")]
    ends = [s.ts for s in states[1:]] + [None if not run.is_terminal else states[-1].ts]
    for s, end in zip(states, ends, strict=True):
        stay = f"{(end if end is not None else time.time()) - s.ts:.1f}s" + ("" if end is not None else " so far")
        took = "" if end == s.ts and s is states[-1] else stay
        message = (s.message or "").splitlines()[0][:80] if s.message else ""
        rows.append((s.name, s.state, _when(s.ts), took, str(s.attempt), s.worker or "", message))
    return ["", *_table(rows)]


def describe_tasks(tasks: Sequence[TaskRun]) -> list[str]:
    """The task runs as a table: name, state, duration, attempts, cached."""
    if not tasks:
        return []
    rows = [("TASK RUN", "STATE", "DURATION", "ATTEMPTS", "CACHED")]
    for t in tasks:
        took = f"{t.ended_at - t.started_at:.2f}s" if t.started_at is not None and t.ended_at is not None else ""
        rows.append((t.name, t.state_name or t.state, took, str(t.attempts), "yes" if t.cached else ""))
    return ["", *_table(rows)]


def describe_artifacts(artifacts: Sequence[Artifact]) -> list[str]:
    if not artifacts:
        return []
    rows = [("ARTIFACT", "TYPE", "DESCRIPTION")]
    for a in artifacts:
        first = next((line for line in str(a.description or a.data or "").splitlines() if line.strip()), "")
        rows.append((a.key or a.id[:8], a.type or "", first[:60]))
    return ["", *_table(rows)]


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


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
    """The run's output, the worker's notes (marked [worker]) and the flow's and tasks' log records
    (time, level, logger and task run, as Prefect's engine sent them)."""
    store = app.open_store()
    app.json_lines = app.json  # under --json: one object per log line (JSON Lines), on stdout
    try:
        run = store.get_run(run_id)
        printer = LogPrinter(app, store, run.id, lines_as_json=app.json)
        printer.print_new()
        delay = 0.05
        while follow_ and not run.is_terminal:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
            run = store.get_run(run.id)
            delay = 0.05 if printer.print_new() else delay
        if follow_:
            printer.print_new()
            app.echo(f"Flow run {run.name} finished: {run.state}" + (f" ({run.state_message})" if run.state_message else ""), err=True)
    finally:
        store.close()


class LogPrinter:
    """Prints a run's log lines after the last one printed; Prefect records get their time, level,
    logger and task run's name."""

    def __init__(self, app: App, store: StateStore, run_id: str, *, lines_as_json: bool = False) -> None:
        self.app, self.store, self.run_id = app, store, run_id
        self.lines_as_json = lines_as_json  # `runs logs --json`: each line an object on stdout
        self.after = 0
        self.task_names: dict[str, str] = {}

    def print_new(self) -> int:
        printed = 0
        while True:
            lines = self.store.read_logs(self.run_id, after=self.after)
            for line in lines:
                self.after = line.seq
                if self.lines_as_json:
                    self.app.emit_json(self.as_dict(line))
                else:
                    self.app.echo(self.format(line), err=self.app.json)
            printed += len(lines)
            if len(lines) < 1000:
                return printed

    def format(self, line: LogLine) -> str:
        if line.stream == "worker":
            return f"[worker] {line.message}"
        if line.stream != "prefect":
            return line.message
        when = datetime.fromtimestamp(line.ts).strftime("%H:%M:%S.%f")[:-3]
        level = logging.getLevelName(line.level) if line.level is not None else ""
        source = line.logger or ""
        if line.task_run_id:
            source += f" {self._task_name(line.task_run_id)}"
        return f"{when} {level:<8} {source}: {line.message}"

    def as_dict(self, line: LogLine) -> dict[str, object]:
        """One line as `runs logs --json` writes it (schemas/cli/log-line.schema.json)."""
        return {
            "seq": line.seq,
            "time": datetime.fromtimestamp(line.ts).astimezone().isoformat(timespec="milliseconds"),
            "stream": line.stream,
            "level": logging.getLevelName(line.level) if line.level is not None else None,
            "logger": line.logger,
            "task_run": self._task_name(line.task_run_id) if line.task_run_id else None,
            "message": line.message,
        }

    def _task_name(self, task_run_id: str) -> str:
        if task_run_id not in self.task_names:
            self.task_names.update({t.id: t.name for t in self.store.list_task_runs(self.run_id)})
        return self.task_names.get(task_run_id, task_run_id[:8])


@runs.command("cancel")
@click.argument("run_id", metavar="ID")
@common_options
@pass_app
def cancel(app: App, run_id: str) -> None:
    """Cancel a run: a scheduled one at once, a running one through its worker (SIGTERM, then SIGKILL)."""
    with app.store() as store:
        run = store.request_cancel(store.get_run(run_id).id)
    if app.json:
        app.emit_json(run.to_dict())
    elif run.state == "CANCELLED":
        app.echo(f"Cancelled flow run {run.name} ({run.id}).")
    else:
        app.echo(f"Cancellation of flow run {run.name} ({run.id}) requested; its worker will stop it.")


@runs.command("retry")
@click.argument("run_id", metavar="ID")
@click.option("--wait", is_flag=True, help="Wait until the new run finishes; exit 1 unless it completed.")
@click.option("--logs", is_flag=True, help="Follow the new run's logs (implies --wait).")
@common_options
@pass_app
def retry(app: App, run_id: str, wait: bool, logs: bool) -> None:
    """Run a finished run again: a new run of its deployment with the same parameters, job variables
    and tags (the finished run and its logs stay as they were)."""
    from buildsys.cli.run import finish
    from buildsys.errors import ConflictError

    with app.store() as store:
        old = store.get_run(run_id)
        if not old.is_terminal:
            raise ConflictError(
                f"flow run {old.name} is {old.state}; only a finished run (COMPLETED, FAILED, CANCELLED, CRASHED) is retried",
                hint=f"cancel it first (`buildsys runs cancel {old.id}`), or wait for it to end",
            )
        created = store.create_run(old.deployment, parameters=dict(old.parameters),
                                   job_variables=dict(old.job_variables), tags=old.tags)
        if app.json and not (wait or logs):
            app.emit_json({**created.to_dict(), "retry_of": old.id})
            return
        app.echo(f"Created flow run {created.name} ({created.id}) of {created.deployment} on pool {created.pool!r}, "
                 f"a retry of {old.name} ({old.state}).")
        if wait or logs:
            finish(app, store, created.id, logs=logs, timeout=None, extra={"retry_of": old.id})


@runs.command("mark")
@click.argument("run_id", metavar="ID")
@click.argument("new_state", metavar="STATE", type=click.Choice(["COMPLETED", "FAILED", "CANCELLED", "CRASHED"], case_sensitive=False))
@click.option("--message", "-m", help="Why: kept in the run's state history.")
@click.option("--force", is_flag=True, help="Replace a finished run's state too (and never retry a failure).")
@common_options
@pass_app
def mark(app: App, run_id: str, new_state: str, message: str | None, force: bool) -> None:
    """Set a run's final state by hand (as the UI's Change state): the API's transition rules apply
    unless --force. It does not stop a running flow; `runs cancel` does."""
    store = app.open_store()
    try:
        run = store.mark_run(store.get_run(run_id).id, new_state.upper(), message=message, force=force)
    finally:
        store.close()
    if app.json:
        app.emit_json(run.to_dict())
    else:
        app.echo(f"Flow run {run.name} ({run.id}) is now {run.state}.")


@runs.command("delete")
@click.argument("run_id", metavar="ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (needed without a terminal).")
@common_options
@pass_app
def delete(app: App, run_id: str, yes: bool) -> None:
    """Delete a finished or scheduled run with its logs, state history and task runs (a run a worker
    may hold is refused: cancel it first)."""
    from buildsys.errors import BuildsysError

    store = app.open_store()
    try:
        run = store.get_run(run_id)
        if not yes:
            ask_or_refuse(
                f"Delete flow run {run.name} ({run.state}) with its logs, states and task runs?",
                BuildsysError(
                    f"deleting flow run {run.name} ({run.id}) needs confirmation, and there is no terminal to ask on; nothing was deleted",
                    hint="pass --yes",
                ),
            )
        gone = store.delete_run(run.id)
    finally:
        store.close()
    if app.json:
        app.emit_json({**gone.to_dict(), "deleted": True})
    else:
        app.echo(f"Deleted flow run {gone.name} ({gone.id}) with its logs, states and task runs.")


@runs.command("limits")
@common_options
@pass_app
def limits(app: App) -> None:
    """Concurrency limits on tagged tasks (Prefect's tag limits) and the slots in use now."""
    with app.store() as store:
        found = store.list_concurrency_limits()
    if app.json:
        app.emit_json([x.to_dict() for x in found])
        return
    if not found:
        app.echo("No concurrency limits.")
        return
    for line in _table([("NAME", "LIMIT", "IN USE"), *((x.name, str(x.limit), str(x.active_slots)) for x in found)]):
        app.echo(line)


@runs.command("limit")
@click.argument("tag")
@click.argument("slots", type=click.IntRange(min=0, max=2**31 - 1), required=False)
@click.option("--delete", is_flag=True, help="Remove the limit.")
@common_options
@pass_app
def limit(app: App, tag: str, slots: int | None, delete: bool) -> None:
    """Allow at most SLOTS task runs tagged TAG to run at once (across all flow runs), as
    `prefect concurrency-limit create TAG SLOTS` does; --delete removes it. A full limit name
    (tag:TAG, or a global limit's name with a colon) is taken as it is."""
    if delete == (slots is not None):
        raise click.UsageError("give SLOTS to set the limit, or --delete to remove it")
    name = tag if ":" in tag else f"tag:{tag}"
    with app.store() as store:
        result = store.set_concurrency_limit(name, None if delete else slots)
    if app.json:
        app.emit_json(None if result is None else result.to_dict())
    elif result is None:
        app.echo(f"Removed the concurrency limit {name}.")
    else:
        app.echo(f"Concurrency limit {name}: {result.limit} slot(s), {result.active_slots} in use.")


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
