"""Work pools: the list, a pool's page (its template variables as a form, the raw template), and
the edit path: preview with validation and a diff, then save guarded by the store's serial."""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from buildsys.errors import NotFoundError
from buildsys.pools import JobVariableError, pool_template, validate_template
from buildsys.store.base import SCHEDULED, Change, Resource
from buildsys.ui.forms import fields_for, read_form, submitted
from buildsys.ui.page import Ui
from buildsys.ui.session import Viewer, posted

WAITING_CAP = 100  # "100+" beyond this (the store has no count call)


def template_of(pool: Resource) -> dict[str, Any]:
    """The pool's base job template as a run gets it (the type's default when none is stored)."""
    return pool_template(pool.spec)


def variables_schema(template: Mapping[str, Any]) -> dict[str, Any]:
    schema = template.get("variables")
    return dict(schema) if isinstance(schema, Mapping) else {"type": "object", "properties": {}}


async def pools_list(ui: Ui, request: Request, who: Viewer) -> Response:
    store = ui.services.store

    def read() -> list[dict[str, Any]]:
        rows = []
        for pool in store.list_resources("pool"):
            workers = store.list_workers(pool.name)
            waiting = len(store.list_runs(pool=pool.name, states=[SCHEDULED], limit=WAITING_CAP + 1))
            rows.append({"pool": pool, "workers": workers, "waiting": waiting})
        return rows

    return ui.render(request, who, "pools.html", rows=await ui.sync(read), cap=WAITING_CAP)


async def _load(ui: Ui, name: str) -> tuple[Resource, int]:
    store = ui.services.store

    def read() -> tuple[Resource | None, int]:
        return store.get_resource("pool", name), store.serial()

    pool, serial = await ui.sync(read)
    if pool is None:
        raise NotFoundError(f"work pool {name!r} does not exist", hint="see the list of pools")
    return pool, serial


async def pool_page(ui: Ui, request: Request, who: Viewer) -> Response:
    name = request.path_params["name"]
    pool, serial = await _load(ui, name)
    store = ui.services.store

    def read() -> dict[str, Any]:
        from buildsys.ui.drift import drift, since_apply

        return {
            "drift": drift(ui.project_root, store, pool) if ui.project_root is not None else None,
            "since": since_apply(store, pool) if ui.project_root is None and pool.owner else None,
            "workers": store.list_workers(name),
            "waiting": store.list_runs(pool=name, states=[SCHEDULED], limit=20),
            "deployments": [d for d in store.list_resources("deployment") if d.spec.get("work_pool_name") == name],
        }

    return _pool_page(ui, request, who, pool, serial, **(await ui.sync(read)))


def _pool_page(
    ui: Ui, request: Request, who: Viewer, pool: Resource, serial: int, *, status: int = 200, **extra: Any
) -> Response:
    template = template_of(pool)
    schema = variables_schema(template)
    context: dict[str, Any] = {
        "pool": pool,
        "serial": serial,
        "template": template,
        "template_json": json.dumps(template, indent=2, ensure_ascii=False),
        "fields": fields_for(schema),
        "errors": {},
        "yaml": pool_yaml(pool),
        "saved": request.query_params.get("saved") == "1",
        "saved_settings": request.query_params.get("saved") == "settings",
        "settings_error": None,
        "workers": [],
        "waiting": [],
        "deployments": [],
        "drift": None,
        "since": None,
    }
    context.update(extra)
    return ui.render(request, who, "pool.html", status=status, **context)


async def preview(ui: Ui, request: Request, who: Viewer) -> Response:
    """Validate an edit (form or raw JSON) and show its diff; nothing is written yet."""
    pool, _ = await _load(ui, request.path_params["name"])
    form = await posted(request)
    data = form
    serial = _serial(data.get("serial", ""))
    old = template_of(pool)
    if data.get("mode") == "json":
        try:
            new = json.loads(data.get("template", ""))
        except ValueError as exc:
            return _pool_page(ui, request, who, pool, serial, status=422, json_error=f"not valid JSON: {exc}",
                              template_json=data.get("template", ""))
        if not isinstance(new, dict):
            return _pool_page(ui, request, who, pool, serial, status=422, json_error="the template must be a JSON object",
                              template_json=data.get("template", ""))
    else:
        schema = variables_schema(old)
        fields = fields_for(schema)
        # defaults need not satisfy `required` (the run's values do), only each variable's type
        result = read_form({k: v for k, v in schema.items() if k != "required"}, fields, data)
        if result.errors:
            shown = fields_for(schema, submitted(fields, data), fill_defaults=False)
            return _pool_page(ui, request, who, pool, serial, status=422, fields=shown, errors=result.errors)
        new = with_defaults(old, result.values)
    try:
        validate_template(new)
    except JobVariableError as exc:
        return _pool_page(ui, request, who, pool, serial, status=422, json_error=exc.render(),
                          template_json=json.dumps(new, indent=2, ensure_ascii=False))
    return ui.render(
        request, who, "pool_preview.html", pool=pool, serial=serial, diff=template_diff(old, new),
        template_json=json.dumps(new, ensure_ascii=False),
    )


async def save(ui: Ui, request: Request, who: Viewer) -> Response:
    pool, _ = await _load(ui, request.path_params["name"])
    form = await posted(request)
    try:
        new = json.loads(form.get("template", ""))
    except ValueError as exc:
        raise JobVariableError(f"the template to save is not valid JSON: {exc}") from None
    if not isinstance(new, dict):
        raise JobVariableError("the template to save must be a JSON object")
    validate_template(new)
    spec = {**pool.spec, "base_job_template": new}
    # marked as an edit in the UI: the store's apply history tells it apart from an apply of the
    # project that owns the pool (a server's pages compare the pool with that apply)
    source = {**(pool.source or {}), "edited": "ui"}
    change = Change("update", "pool", pool.name, spec=spec, owner=pool.owner, source=source)
    await ui.sync(ui.services.store.apply, [change], expected_serial=_serial(form.get("serial", "")))
    ui.services.resources_changed.notify()
    ui.services.runs_changed.notify()
    return RedirectResponse(f"/pools/{pool.name}?saved=1", status_code=303)


async def settings(ui: Ui, request: Request, who: Viewer) -> Response:
    """Pause or resume the pool, set its concurrency limit (empty: no limit), and its queues'
    pause, priority and limit, or add a queue: one edit, every bad value named."""
    pool, _ = await _load(ui, request.path_params["name"])
    form = await posted(request)
    serial = _serial(form.get("serial", ""))
    spec, problems = settings_spec(pool.spec, form)
    if problems:
        store = ui.services.store
        extra = await ui.sync(lambda: {"workers": store.list_workers(pool.name)})
        return _pool_page(ui, request, who, pool, serial, status=422, **extra, settings_error="; ".join(problems))
    if spec != dict(pool.spec):
        source = {**(pool.source or {}), "edited": "ui"}
        change = Change("update", "pool", pool.name, spec=spec, owner=pool.owner, source=source)
        await ui.sync(ui.services.store.apply, [change], expected_serial=serial)
        ui.services.resources_changed.notify()
        ui.services.runs_changed.notify()  # an unpaused pool or a raised limit makes runs claimable
    return RedirectResponse(f"/pools/{pool.name}?saved=settings", status_code=303)


def settings_spec(spec: Mapping[str, Any], form: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The pool's spec with the settings form applied, and what is wrong with the form."""
    from buildsys.storable import name_problem

    problems: list[str] = []

    def number(key: str, what: str, *, least: int) -> int | None:
        text = form.get(key, "").strip()
        if not text:
            return None
        if not (text.isascii() and text.isdigit()) or int(text) < least:
            problems.append(f"{what}: {text!r} is not a whole number of {least} or more (empty: none)")
            return None
        return int(text)

    queues: list[dict[str, Any]] = []
    for index, queue in enumerate(spec.get("queues") or []):
        if not isinstance(queue, Mapping):
            continue
        q, name = dict(queue), str(queue.get("name"))
        if f"q{index}.seen" in form:  # the row was on the page the form was read from
            q["paused"] = form.get(f"q{index}.paused") == "1"
            q["priority"] = number(f"q{index}.priority", f"queue {name} priority", least=1) or q.get("priority") or index + 1
            q["concurrency_limit"] = number(f"q{index}.concurrency_limit", f"queue {name} concurrency limit", least=0)
        queues.append(q)
    new_name = form.get("new_queue", "").strip()
    if new_name:
        problem = name_problem(new_name)
        if problem:
            problems.append(f"new queue name {new_name!r} {problem}")
        elif any(q.get("name") == new_name for q in queues):
            problems.append(f"pool has a queue {new_name!r} already")
        else:
            queues.append({"name": new_name, "priority": len(queues) + 1, "concurrency_limit": None,
                           "description": None, "paused": False})
    new = {**spec, "paused": form.get("paused") == "1",
           "concurrency_limit": number("concurrency_limit", "concurrency limit", least=0), "queues": queues}
    return new, problems


def with_defaults(template: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The template with its variables' defaults replaced by `values`. A variable left empty loses
    its default, unless that default is null or "" (which an empty input stands for already)."""
    new = copy.deepcopy(dict(template))
    properties = new.get("variables", {}).get("properties", {})
    for name, prop in properties.items():
        if not isinstance(prop, dict):
            continue
        if name in values:
            prop["default"] = values[name]
        elif prop.get("default") not in (None, ""):
            prop.pop("default", None)
    return new


def template_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    a = json.dumps(old, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    b = json.dumps(new, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    return list(difflib.unified_diff(a, b, "stored", "edited", lineterm="", n=3))


def pool_yaml(pool: Resource) -> str:
    """The pool as a `work_pools:` entry of prefect.yaml, for a git-owned pool edited here."""
    spec = pool.spec
    entry: dict[str, Any] = {"name": pool.name, "type": spec.get("type", "process")}
    for key in ("description", "concurrency_limit", "paused"):
        if spec.get(key) is not None:
            entry[key] = spec[key]
    entry["base_job_template"] = pool_template(spec)
    if spec.get("queues"):
        entry["queues"] = [
            {k: v for k, v in q.items() if v is not None} for q in spec["queues"] if isinstance(q, Mapping)
        ]
    return yaml.safe_dump({"work_pools": [entry]}, sort_keys=False, allow_unicode=True, width=100)


def _serial(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise JobVariableError("the form lost the store serial it was made at: reload the page") from None


ROUTES = (
    ("/pools", "GET", "read", pools_list),
    ("/pools/{name}", "GET", "read", pool_page),
    ("/pools/{name}/preview", "POST", "apply", preview),
    ("/pools/{name}/save", "POST", "apply", save),
    ("/pools/{name}/settings", "POST", "apply", settings),
)
