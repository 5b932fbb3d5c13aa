"""`buildsys run DEPLOYMENT`: create a flow run (checked first) and optionally follow it.

Parameters are checked against the deployment's stored parameter schema when it enforces it
(buildsys.parameters, the checker plan's preflight uses too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from buildsys.cli import completion
from buildsys.cli.app import App, common_options, pass_app
from buildsys.errors import BuildsysError

if TYPE_CHECKING:
    from buildsys.store.base import FlowRun, Resource, StateStore


@click.command("run")
@click.argument("deployment", shell_complete=completion.deployments)
@click.option("--param", "-p", "params", multiple=True, metavar="K=V", help="Flow parameter (VALUE parsed as JSON if it parses).")
@click.option("--job-variable", "-jv", "job_vars", multiple=True, metavar="K=V", help="Job variable override for this run.")
@click.option("--wait", is_flag=True, help="Wait until the run finishes; exit 1 unless it completed.")
@click.option("--logs", is_flag=True, help="Follow the run's logs (implies --wait).")
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up waiting after this many seconds.")
@click.option("--at", "start_in", type=click.FloatRange(min=0), help="Start in this many seconds instead of now.")
@common_options
@pass_app
def run(
    app: App,
    deployment: str,
    params: tuple[str, ...],
    job_vars: tuple[str, ...],
    wait: bool,
    logs: bool,
    timeout: float | None,
    start_in: float | None,
) -> None:
    """Create a flow run of DEPLOYMENT ("flow/deployment", or the deployment name when unique)."""
    from buildsys.pools import parse_job_variable
    from buildsys.selector import find_deployment

    parameters = dict(parse_param(p) for p in params)
    job_variables = dict(parse_job_variable(j) for j in job_vars)
    with app.store() as store:
        resource = find_deployment(store, deployment)
        check_run(app, store, resource, parameters, job_variables)
        scheduled = time.time() + start_in if start_in else None
        created = store.create_run(resource.name, parameters=parameters, job_variables=job_variables, scheduled_at=scheduled)
        if app.json and not (wait or logs):
            app.emit_json(created.to_dict())
            return
        app.echo(f"Created flow run {created.name} ({created.id}) of {created.deployment} on pool {created.pool!r}.")
        if wait or logs:
            finish(app, store, created.id, logs=logs, timeout=timeout)


def parse_param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise click.UsageError(f"--param {text!r}: write KEY=VALUE")
    try:
        return key.strip(), json.loads(raw)
    except ValueError:
        return key.strip(), raw


def check_run(
    app: App, store: StateStore, deployment: Resource, parameters: Mapping[str, Any], job_variables: Mapping[str, Any]
) -> None:
    """Refuse a run that could only fail: bad job variables (pool template) or parameters."""
    from buildsys.pools import job_configuration, pool_template

    spec = deployment.spec
    pool = store.get_resource("pool", str(spec.get("work_pool_name") or ""))
    if pool is not None:
        template = pool_template(pool.spec)
        warnings: list[Any] = []
        job_configuration(template, spec.get("job_variables"), job_variables, env={}, warnings=warnings)
        for w in warnings:
            app.echo(w.render(), err=True)
    if spec.get("enforce_parameter_schema", True):  # Prefect 3's default
        from buildsys.parameters import enforce

        enforce(deployment.name, spec.get("parameter_schema"), {**(spec.get("parameters") or {}), **parameters})


def finish(
    app: App, store: StateStore, run_id: str, *, logs: bool, timeout: float | None, extra: Mapping[str, Any] | None = None
) -> None:
    """--wait/--logs: follow the run to its end, print it as JSON (with `extra`) for --json, and
    fail unless it completed."""
    done = follow(app, store, run_id, logs=logs, timeout=timeout)
    if app.json:
        app.emit_json({**done.to_dict(), **(extra or {})})
    if done.state != "COMPLETED":
        raise BuildsysError(
            f"flow run {done.name} ended {done.state}" + (f": {done.state_message}" if done.state_message else ""),
            hint=f"see its logs: buildsys runs logs {done.id}",
        )


def follow(app: App, store: StateStore, run_id: str, *, logs: bool, timeout: float | None) -> FlowRun:
    """Poll the run (and print its new log lines) until it ends."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seq = 0
    last_state = ""
    delay = 0.05
    while True:
        current = store.get_run(run_id)
        if logs:
            seq = print_logs(app, store, run_id, seq)
        if current.state_name != last_state:
            last_state = current.state_name
            if not logs and not app.json:
                app.echo(f"{current.name}: {current.state_name}", err=True)
        if current.is_terminal:
            if logs:
                seq = print_logs(app, store, run_id, seq)
            app.echo(
                f"Flow run {current.name} finished: {current.state}"
                + (f" ({current.state_message})" if current.state_message else ""),
                err=True,
            )
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise BuildsysError(
                f"flow run {current.name} is still {current.state} after {timeout:g} s",
                hint=f"follow it with: buildsys runs logs --follow {current.id}",
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def print_logs(app: App, store: StateStore, run_id: str, after: int) -> int:
    """Print the run's log lines after seq `after`; returns the last seq printed."""
    while True:
        lines = store.read_logs(run_id, after=after)
        for line in lines:
            after = line.seq
            app.echo(f"[worker] {line.message}" if line.stream == "worker" else line.message, err=app.json)
        if len(lines) < 1000:
            return after
