"""Writing one planned change to a Prefect server: the fewest calls that make Prefect hold the new spec.

Only what differs from the current object is written: a deployment whose schedules did not change
is not patched (Prefect deletes its future auto-scheduled runs on every deployment update), an
unchanged schedule or trigger keeps its Prefect id, a changed one is patched in place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from buildsys.errors import ConflictError, StateError
from buildsys.store import prefect_specs as specs
from buildsys.store.base import Change, Resource
from buildsys.store.prefect_api import PrefectApi

META = "_prefect"


def apply_change(api: PrefectApi, change: Change, current: Resource | None) -> None:
    kind, action = change.kind, change.action
    if action == "delete":
        if current is not None:
            {"variable": _delete_variable, "pool": _delete_pool, "deployment": _delete_deployment}[kind](api, current)
        return
    spec = {k: v for k, v in (change.spec or {}).items() if k != META}
    if kind == "variable":
        _put_variable(api, change.name, spec, change.owner, current)
    elif kind == "pool":
        _put_pool(api, change.name, spec, change.owner, change.source, current)
    elif kind == "deployment":
        _put_deployment(api, spec, change.owner, current)
    else:
        raise StateError(f"unknown resource kind {kind!r}")


# --- variables ----------------------------------------------------------------------------------


def _put_variable(api: PrefectApi, name: str, spec: Mapping[str, Any], owner: str | None, current: Resource | None) -> None:
    body = {"value": spec.get("value"), "tags": specs.owner_tags(owner)}
    if current is None:
        api.write("POST", "/variables/", {"name": name, **body})
    else:
        api.write("PATCH", f"/variables/name/{_seg(name)}", body)


def _delete_variable(api: PrefectApi, current: Resource) -> None:
    api.write("DELETE", f"/variables/name/{_seg(current.name)}")


# --- pools --------------------------------------------------------------------------------------


def _put_pool(
    api: PrefectApi,
    name: str,
    spec: Mapping[str, Any],
    owner: str | None,
    source: Mapping[str, Any] | None,
    current: Resource | None,
) -> None:
    body = {
        "description": spec.get("description"),
        "base_job_template": spec.get("base_job_template") or {},
        "is_paused": bool(spec.get("paused")),
        "concurrency_limit": spec.get("concurrency_limit"),
    }
    have: Mapping[str, Any] = current.spec if current else {}
    if current is None or current.owner != owner:  # marked first: a pool half made is still ours
        _put_pool_owner(api, name, owner, source)
    if current is None:
        api.write("POST", "/work_pools/", {"name": name, "type": spec.get("type"), **body})
    else:
        if spec.get("type") != have.get("type"):
            raise StateError(
                f"Prefect cannot change the type of work pool {name!r} ({have.get('type')} -> {spec.get('type')})",
                hint="delete the pool in Prefect (or with `apply --prune` after renaming it) and apply again",
            )
        old = {"description": have.get("description"), "base_job_template": have.get("base_job_template") or {},
               "is_paused": bool(have.get("paused")), "concurrency_limit": have.get("concurrency_limit")}
        if old != body:
            api.write("PATCH", f"/work_pools/{_seg(name)}", body)
    _put_queues(api, name, spec.get("queues") or [], have)


def _put_queues(api: PrefectApi, pool: str, queues: Sequence[Mapping[str, Any]], have: Mapping[str, Any]) -> None:
    ids: Mapping[str, str] = (have.get(META) or {}).get("queues") or {}
    existing = {q["name"]: q for q in have.get("queues") or []}
    if not have:  # a new pool: Prefect made its default queue
        existing = {specs.DEFAULT_QUEUE: None}
    wanted = {q["name"] for q in queues}
    for q in sorted(queues, key=lambda q: (q.get("priority") or 0, q["name"])):
        body = {
            "description": q.get("description") or "",
            "is_paused": bool(q.get("paused")),
            "concurrency_limit": q.get("concurrency_limit"),
            "priority": q.get("priority"),
        }
        if q["name"] not in existing:
            api.write("POST", f"/work_pools/{_seg(pool)}/queues", {"name": q["name"], **body})
        elif existing[q["name"]] is None or dict(existing[q["name"]]) != dict(q):
            api.write("PATCH", f"/work_pools/{_seg(pool)}/queues/{_seg(q['name'])}", body)
    for name in existing:
        if name not in wanted and name != specs.DEFAULT_QUEUE and name in ids:
            api.write("DELETE", f"/work_pools/{_seg(pool)}/queues/{_seg(name)}")


def _put_pool_owner(api: PrefectApi, pool: str, owner: str | None, source: Mapping[str, Any] | None) -> None:
    name = specs.pool_owner_variable(pool)
    value = {"pool": pool, "owner": owner, "source": dict(source) if source else None}
    try:
        api.write("POST", "/variables/", {"name": name, "value": value})
    except ConflictError:  # left by an earlier apply that stopped, or a takeover
        api.write("PATCH", f"/variables/name/{_seg(name)}", {"value": value})


def _delete_pool(api: PrefectApi, current: Resource) -> None:
    api.write("DELETE", f"/work_pools/{_seg(current.name)}")
    api.write("DELETE", f"/variables/name/{_seg(specs.pool_owner_variable(current.name))}")


# --- deployments --------------------------------------------------------------------------------


def _put_deployment(api: PrefectApi, spec: Mapping[str, Any], owner: str | None, current: Resource | None) -> None:
    tags = [*(spec.get("tags") or []), *specs.owner_tags(owner)]
    if current is None:
        body = specs.deployment_payload(spec, specs.DEPLOYMENT_FIELDS)
        body.update(
            name=spec["name"],
            flow_id=api.flow_id(spec["flow_name"]),
            tags=tags,
            schedules=[specs.schedule_payload(s) for s in spec.get("schedules") or []],
        )
        created = api.write("POST", "/deployments/", body)
        for item in spec.get("triggers") or []:
            api.write("POST", "/automations/", specs.automation_payload(item, created["id"], owner))
        return
    have = current.spec
    meta = have.get(META) or {}
    dep_id = str(meta.get("id") or current.id)
    changed = [k for k in specs.DEPLOYMENT_FIELDS if k in spec and _differs(spec.get(k), have.get(k))]
    if changed or current.owner != owner:
        body = specs.deployment_payload(spec, changed)
        body["tags"] = tags
        api.write("PATCH", f"/deployments/{dep_id}", body)
    if "schedules" in spec and _differs(spec["schedules"], have.get("schedules")):
        _put_schedules(api, dep_id, spec["schedules"], have.get("schedules") or [], meta.get("schedules") or [])
    if current.owner != owner:
        _adopt_triggers(api, dep_id)
        items, ids = _current_triggers(api, dep_id)
        have, meta = {**have, "triggers": items}, {**meta, "triggers": ids}
    if "triggers" in spec and _differs(spec["triggers"], have.get("triggers")):
        _put_triggers(api, dep_id, spec["triggers"], have.get("triggers") or [], meta.get("triggers") or [], owner)


def _differs(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str)


_key = specs.item_key


def _match(
    wanted: Sequence[Mapping[str, Any]],
    have: Sequence[Mapping[str, Any]],
    ids: Sequence[Sequence[str]],
    by: str,
) -> tuple[list[tuple[Mapping[str, Any], str]], list[Mapping[str, Any]], list[str]]:
    """(changed items with the Prefect id they take over, new items, ids to delete). An item equal
    to a stored one is left alone; a changed one takes over the stored item with the same `by`
    (slug, name), else the next one left, so its Prefect id stays."""
    items = {_key(h): h for h in have}
    left: list[tuple[str, Mapping[str, Any], str]] = [(k, items.get(k, {}), i) for k, i in ids]
    rest = []
    for item in wanted:
        hit = next((p for p in left if p[0] == _key(item)), None)
        if hit is None:
            rest.append(item)
        else:
            left.remove(hit)
    changed: list[tuple[Mapping[str, Any], str]] = []
    new: list[Mapping[str, Any]] = []
    for item in rest:
        same = [p for p in left if item.get(by) is not None and p[1].get(by) == item.get(by)]
        hit = same[0] if same else (left[0] if left else None)
        if hit is None:
            new.append(item)
        else:
            left.remove(hit)
            changed.append((item, hit[2]))
    return changed, new, [p[2] for p in left]


def _put_schedules(
    api: PrefectApi, dep_id: str, wanted: Sequence[Mapping[str, Any]], have: Sequence[Mapping[str, Any]], ids: Sequence[Sequence[str]]
) -> None:
    changed, new, gone = _match(wanted, have, ids, "slug")
    for sid in gone:
        api.write("DELETE", f"/deployments/{dep_id}/schedules/{sid}")
    for item, sid in changed:
        api.write("PATCH", f"/deployments/{dep_id}/schedules/{sid}", specs.schedule_payload(item))
    if new:
        api.write("POST", f"/deployments/{dep_id}/schedules", [specs.schedule_payload(s) for s in new])


def _current_triggers(api: PrefectApi, dep_id: str) -> tuple[list[dict[str, Any]], list[list[str]]]:
    mine = [a for a in _automations_for(api, dep_id) if specs.TRIGGER_TAG in (a.get("tags") or [])]
    items = [specs.trigger_spec(a) for a in mine]
    return items, [[_key(t), str(a["id"])] for t, a in zip(items, mine, strict=True)]


def _automations_for(api: PrefectApi, dep_id: str) -> list[Mapping[str, Any]]:
    return [a for a in api.pages("/automations/filter") if specs.automation_deployment(a) == dep_id]


def _adopt_triggers(api: PrefectApi, dep_id: str) -> None:
    """Taking over a deployment takes over the automations that run it (`prefect deploy` made them)."""
    for a in _automations_for(api, dep_id):
        if specs.TRIGGER_TAG not in (a.get("tags") or []):
            body = {k: a[k] for k in ("name", "description", "enabled", "trigger", "actions", "actions_on_trigger", "actions_on_resolve") if k in a}
            body["tags"] = [*(a.get("tags") or []), specs.TRIGGER_TAG]
            api.write("PUT", f"/automations/{a['id']}", body)


def _put_triggers(
    api: PrefectApi,
    dep_id: str,
    wanted: Sequence[Mapping[str, Any]],
    have: Sequence[Mapping[str, Any]],
    ids: Sequence[Sequence[str]],
    owner: str | None,
) -> None:
    changed, new, gone = _match(wanted, have, ids, "name")
    for aid in gone:
        api.write("DELETE", f"/automations/{aid}")
    for item, aid in changed:
        body = specs.automation_payload(item, dep_id, owner)
        body.pop("owner_resource", None)
        api.write("PUT", f"/automations/{aid}", body)
    for item in new:
        api.write("POST", "/automations/", specs.automation_payload(item, dep_id, owner))


def _delete_deployment(api: PrefectApi, current: Resource) -> None:
    dep_id = str((current.spec.get(META) or {}).get("id") or current.id)
    for _, aid in (current.spec.get(META) or {}).get("triggers") or []:
        api.write("DELETE", f"/automations/{aid}")
    api.write("DELETE", f"/deployments/{dep_id}")


def _seg(name: str) -> str:
    return quote(name, safe="")
