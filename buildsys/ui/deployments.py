"""Deployments: the list, a deployment's page, and its "Run" form (parameters from the
deployment's `parameter_schema`, job-variable overrides checked against the pool's template)."""

from __future__ import annotations

import copy
import datetime
import json
import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from buildsys.errors import BuildsysError, NotFoundError
from buildsys.pools import JobVariableError, job_configuration
from buildsys.store.base import Resource
from buildsys.ui.forms import Field, fields_for, read_form, submitted
from buildsys.ui.page import Ui
from buildsys.ui.pools import template_of, variables_schema
from buildsys.ui.session import Viewer, posted

JV = "jv."  # form-field prefix of the job-variable overrides
NEXT_TIMES = 3


async def deployments_list(ui: Ui, request: Request, who: Viewer) -> Response:
    found = await ui.sync(ui.services.store.list_resources, "deployment")
    return ui.render(request, who, "deployments.html", deployments=found)


async def _load(ui: Ui, name: str) -> tuple[Resource, Resource | None]:
    store = ui.services.store

    def read() -> tuple[Resource | None, Resource | None]:
        found = store.get_resource("deployment", name)
        pool = store.get_resource("pool", str(found.spec.get("work_pool_name") or "")) if found else None
        return found, pool

    deployment, pool = await ui.sync(read)
    if deployment is None:
        raise NotFoundError(f"deployment {name!r} does not exist", hint="names read FLOW/DEPLOYMENT")
    return deployment, pool


def parameter_schema(deployment: Resource) -> dict[str, Any]:
    schema = deployment.spec.get("parameter_schema")
    return dict(schema) if isinstance(schema, Mapping) else {"type": "object", "properties": {}}


def run_fields(deployment: Resource, pool: Resource | None) -> tuple[tuple[Field, ...], tuple[Field, ...]]:
    """The Run form: parameter fields (showing the deployment's values) and job-variable override
    fields (empty: only what is filled in overrides)."""
    params = fields_for(parameter_schema(deployment), dict(deployment.spec.get("parameters") or {}))
    job = fields_for(effective_schema(deployment, pool), prefix=JV, fill_defaults=False) if pool else ()
    return params, job


def effective_schema(deployment: Resource, pool: Resource) -> dict[str, Any]:
    """The pool's variables schema with each default as this deployment's runs get it (the
    deployment's job variables over the pool's), so an empty override field shows what applies."""
    schema = copy.deepcopy(variables_schema(template_of(pool)))
    properties = schema.get("properties", {})
    for name, value in dict(deployment.spec.get("job_variables") or {}).items():
        if isinstance(properties.get(name), dict):
            properties[name]["default"] = value
    return schema


async def deployment_page(ui: Ui, request: Request, who: Viewer) -> Response:
    deployment, pool = await _load(ui, request.path_params["name"])
    params, job = run_fields(deployment, pool)
    return await _page(ui, request, who, deployment, pool, params, job, {})


async def _page(
    ui: Ui,
    request: Request,
    who: Viewer,
    deployment: Resource,
    pool: Resource | None,
    params: tuple[Field, ...],
    job: tuple[Field, ...],
    errors: Mapping[str, str],
    status: int = 200,
    start_at: str = "",
) -> Response:
    from buildsys.ui.drift import drift, since_apply

    spec = deployment.spec
    store = ui.services.store
    compared = await ui.sync(drift, ui.project_root, store, deployment)
    since = await ui.sync(since_apply, store, deployment) if compared.status == "no project" else None
    return ui.render(
        request,
        who,
        "deployment.html",
        status=status,
        d=deployment,
        spec=spec,
        pool=pool,
        schedules=schedule_rows(deployment),
        params=params,
        job=job,
        errors=errors,
        drift=compared,
        since=since,
        start_at=start_at,
        free_parameters=not params,
        pretty=lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str),
    )


def schedule_rows(deployment: Resource) -> list[dict[str, Any]]:
    """Each schedule with its next times (or the error that keeps it from running)."""
    from buildsys.schedules import next_times, parse_schedule

    rows = []
    now = time.time()
    for i, item in enumerate(deployment.spec.get("schedules") or []):
        if not isinstance(item, Mapping):
            continue
        try:
            schedule = parse_schedule(item, f"schedules[{i}]")
            times: list[float] = []
            if schedule.active:
                for moment in next_times(schedule, now, anchor=deployment.created_at or now):
                    times.append(moment)
                    if len(times) >= NEXT_TIMES:
                        break
            rows.append({"item": item, "schedule": schedule, "next": times, "error": None})
        except BuildsysError as exc:
            rows.append({"item": item, "schedule": None, "next": [], "error": exc.render()})
    return rows


async def create_run(ui: Ui, request: Request, who: Viewer) -> Response:
    deployment, pool = await _load(ui, request.path_params["name"])
    form = await posted(request)
    data = form
    params, job = run_fields(deployment, pool)
    errors: dict[str, str] = {}
    parameters = _parameters(deployment, params, data, errors)
    overrides: dict[str, Any] = {}
    if pool is not None:
        schema = variables_schema(template_of(pool))
        read = read_form({k: v for k, v in schema.items() if k != "required"}, job, data, prefix=JV)
        errors.update(read.errors)
        overrides = read.values
        if not read.errors:
            try:  # the whole job, as the worker will make it: wrong types are errors here, not later
                job_configuration(template_of(pool), deployment.spec.get("job_variables"), overrides, env={})
            except JobVariableError as exc:
                errors[""] = exc.render()
    start_at = _start_at(data.get("start_at", ""), errors)
    if errors:
        shown_params = fields_for(parameter_schema(deployment), submitted(params, data), fill_defaults=False)
        shown_job = fields_for(
            effective_schema(deployment, pool), submitted(job, data, JV), prefix=JV, fill_defaults=False
        ) if pool else ()
        return await _page(ui, request, who, deployment, pool, shown_params, shown_job, errors, status=422,
                           start_at=data.get("start_at", ""))
    run = await ui.sync(
        ui.services.store.create_run, deployment.name, parameters=parameters, job_variables=overrides or None,
        scheduled_at=start_at,
    )
    ui.services.runs_changed.notify()
    return RedirectResponse(f"/runs/{run.id}", status_code=303)


def _start_at(text: str, errors: dict[str, str]) -> float | None:
    """The form's "start at" (UTC, as the pages show times): None for now."""
    text = text.strip()
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        errors["start_at"] = f"{text!r} is not a date and time (YYYY-MM-DDTHH:MM, UTC)"
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _parameters(deployment: Resource, params: tuple[Field, ...], data: Mapping[str, str], errors: dict[str, str]) -> dict[str, Any]:
    if params:
        read = read_form(parameter_schema(deployment), params, data)
        errors.update(read.errors)
        return read.values
    text = data.get("parameters", "").strip()  # no schema: parameters as one JSON object
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        errors["parameters"] = f"not valid JSON: {exc}"
        return {}
    if not isinstance(value, dict):
        errors["parameters"] = "must be a JSON object of parameter names to values"
        return {}
    return value


async def pause(ui: Ui, request: Request, who: Viewer) -> Response:
    return await _set_paused(ui, request, True)


async def resume(ui: Ui, request: Request, who: Viewer) -> Response:
    return await _set_paused(ui, request, False)


async def _set_paused(ui: Ui, request: Request, paused: bool) -> Response:
    """Its schedules stop (or start again) making runs, as `buildsys deployment pause/resume`;
    runs can still be started by hand."""
    from buildsys.reconcile import set_paused

    deployment, _ = await _load(ui, request.path_params["name"])
    await posted(request)  # the CSRF check reads the form
    await ui.sync(set_paused, ui.services.store, "deployment", deployment.name, paused)
    ui.services.resources_changed.notify()
    return RedirectResponse(f"/deployments/{deployment.name}", status_code=303)


ROUTES = (
    ("/deployments", "GET", "read", deployments_list),
    ("/deployments/{name:path}/run", "POST", "apply", create_run),
    ("/deployments/{name:path}/pause", "POST", "apply", pause),
    ("/deployments/{name:path}/resume", "POST", "apply", resume),
    ("/deployments/{name:path}", "GET", "read", deployment_page),
)
