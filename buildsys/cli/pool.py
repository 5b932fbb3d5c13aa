"""`buildsys pool ls / show NAME / preview DEPLOYMENT`: work pools and the job a run would get."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click

from buildsys.cli import completion
from buildsys.cli.app import App, common_options, pass_app
from buildsys.errors import NotFoundError


@click.group()
def pool() -> None:
    """Work pools and the job a deployment would get."""


@pool.command("ls")
@common_options
@pass_app
def ls(app: App) -> None:
    """Every pool in the state store, with its workers."""
    with app.store() as store:
        pools = store.list_resources("pool")
        workers = store.list_workers()
    if app.json:
        app.emit_json([{"name": p.name, **dict(p.spec)} for p in pools])
        return
    if not pools:
        app.echo("No work pools. Declare one under work_pools: and apply, or run "
                 "`buildsys worker start --pool NAME --type process`.")
        return
    rows = [("NAME", "TYPE", "PAUSED", "LIMIT", "QUEUES", "WORKERS ONLINE")]
    for p in pools:
        online = sum(1 for w in workers if w.pool == p.name and w.status == "ONLINE")
        queues = ", ".join(q.get("name", "?") for q in p.spec.get("queues") or []) or "default"
        limit = p.spec.get("concurrency_limit")
        rows.append((p.name, str(p.spec.get("type")), "yes" if p.spec.get("paused") else "no",
                     "-" if limit is None else str(limit), queues, str(online)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        app.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@pool.command("show")
@click.argument("name")
@common_options
@pass_app
def show(app: App, name: str) -> None:
    """A pool's settings, queues and template variables (with their defaults)."""
    with app.store() as store:
        resource = store.get_resource("pool", name)
        if resource is None:
            known = ", ".join(p.name for p in store.list_resources("pool")) or "none"
            raise NotFoundError(f"no work pool {name!r} in the state store", hint=f"pools: {known}")
        workers = [w for w in store.list_workers(name)]
    spec = resource.spec
    if app.json:
        app.emit_json({"name": name, **dict(spec), "workers": [w.to_dict() for w in workers]})
        return
    app.echo(f"work pool {name} ({spec.get('type')})")
    if spec.get("description"):
        app.echo(f"  {spec['description']}")
    app.echo(f"  paused: {'yes' if spec.get('paused') else 'no'}; concurrency limit: {spec.get('concurrency_limit') or 'none'}")
    for q in spec.get("queues") or []:
        app.echo(f"  queue {q.get('name')}: priority {q.get('priority')}, limit {q.get('concurrency_limit') or 'none'}"
                 + (", paused" if q.get("paused") else ""))
    for w in workers:
        app.echo(f"  worker {w.name}: {w.status}")
    properties = ((spec.get("base_job_template") or {}).get("variables") or {}).get("properties") or {}
    if properties:
        app.echo("  job variables:")
        for var, schema in properties.items():
            default = json.dumps(schema.get("default")) if "default" in schema else "(no default)"
            app.echo(f"    {var} = {default}" + (f"  — {schema['description']}" if schema.get("description") else ""))


@pool.command("preview")
@click.argument("deployment", shell_complete=completion.deployments)
@click.option("--job-variable", "-jv", "job_vars", multiple=True, metavar="K=V", help="A run's override to preview.")
@common_options
@pass_app
def preview(app: App, deployment: str, job_vars: tuple[str, ...]) -> None:
    """The job configuration a run of DEPLOYMENT would get (from the store, else the project file).

    Environment and variable placeholders are shown as written and values under secret names
    masked, so secrets never print.
    """
    from buildsys.pools import job_configuration, parse_job_variable, pool_template
    from buildsys.sensitive import mask_named

    overrides = dict(parse_job_variable(j) for j in job_vars)
    dep_spec, pool_name, pool_spec, where = _resolve(app, deployment)
    template = pool_template(pool_spec)
    warnings: list[Any] = []
    config = job_configuration(
        template, _known(dep_spec.get("job_variables") or {}), overrides, env={}, warnings=warnings, resolve=False
    )
    for w in warnings:
        app.echo(w.render(), err=True)
    config = mask_named(config)
    if app.json:
        app.emit_json({"deployment": deployment, "pool": pool_name, "type": pool_spec.get("type"), "job_configuration": config})
        return
    app.echo(f"# deployment {dep_spec.get('flow_name')}/{dep_spec.get('name')} on work pool {pool_name} "
             f"({pool_spec.get('type')}), from {where}")
    app.echo(_yaml(config))


def _resolve(app: App, name: str) -> tuple[Mapping[str, Any], str, Mapping[str, Any], str]:
    """(deployment spec, pool name, pool spec, where they came from)."""
    from buildsys.selector import find_deployment

    with app.store() as store:
        try:
            resource = find_deployment(store, name)
            dep_spec, where = resource.spec, "the state store"
        except NotFoundError:
            if not app.project_file.is_file():
                raise
            dep_spec, where = _from_project(app, name), str(app.project_file)
        pool_name = str(dep_spec.get("work_pool_name") or "")
        stored = store.get_resource("pool", pool_name) if pool_name else None
    if stored is not None:
        return dep_spec, pool_name, stored.spec, where
    declared = _project_pool(app, pool_name)
    if declared is None:
        raise NotFoundError(
            f"work pool {pool_name!r} of deployment {name!r} is neither in the state store nor in the project",
            hint="declare it under work_pools: and apply, or start a worker with --type",
        )
    return dep_spec, pool_name, declared, where


def _from_project(app: App, name: str) -> Mapping[str, Any]:
    from buildsys.desired import read_desired
    from buildsys.reconcile import cached_outputs

    _project, state = read_desired(app.project_file, select=[name], outputs=cached_outputs, loaded=app.load_project())
    found = [r for r in state.resources if r.kind == "deployment"]
    if not found:
        raise NotFoundError(f"no deployment {name!r} in {app.project_file}")
    return found[0].spec


def _project_pool(app: App, pool_name: str) -> Mapping[str, Any] | None:
    if not pool_name or not app.project_file.is_file():
        return None
    from buildsys.desired import read_desired

    _project, state = read_desired(app.project_file, select=[], loaded=app.load_project())
    found = state.get("pool", pool_name)
    return found.spec if found is not None else None


def _known(value: Any) -> Any:
    """Values that need a build not yet run, shown as text (they are not a type error)."""
    from buildsys.templating import UNKNOWN

    if value is UNKNOWN:
        return str(UNKNOWN)
    if isinstance(value, Mapping):
        return {k: _known(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_known(v) for v in value]
    return value


def _yaml(value: Any) -> str:
    import yaml

    return str(yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True)).rstrip()
