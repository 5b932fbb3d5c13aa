"""Prefect objects <-> buildsys resource specs, both ways, in one normal form (pure, no I/O).

A plan compares what Prefect stores with what the project wants. Prefect normalises what it is
given (fills defaults, re-orders schedules, picks an anchor date, wraps a deployment's limit in a
global concurrency limit), so both sides are put in the same normal form here: `*_spec` turns a
Prefect object into a spec, `normalise` turns a desired spec into what Prefect would store for it.
Apply followed by plan is then "No changes" by construction, and an edit made in Prefect's UI
still shows as drift.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any

from buildsys import timestamps
from buildsys.templating import UNKNOWN

OWNER_TAG = "buildsys:"  # tags starting with this mark what buildsys made; the rest names the project
POOL_OWNER_VARIABLE = "buildsys-pool-"  # + pool name: the owner record of a pool (pools have no tags)
TRIGGER_TAG = "buildsys:trigger"  # an automation that is a trigger of a buildsys-managed deployment
DEFAULT_QUEUE = "default"  # Prefect makes it with every pool; it cannot be deleted

# Deployment spec keys written with PATCH /deployments/{id} (schedules and triggers have their own calls).
DEPLOYMENT_FIELDS = (
    "description",
    "version",
    "tags",
    "parameters",
    "parameter_schema",
    "work_pool_name",
    "work_queue_name",
    "job_variables",
    "pull_steps",
    "entrypoint",
    "concurrency_limit",
    "concurrency_options",
    "paused",
    "enforce_parameter_schema",
)
_API_NAME = {"parameter_schema": "parameter_openapi_schema"}


def owner_of(tags: Sequence[str]) -> str | None:
    for tag in tags:
        if tag.startswith(OWNER_TAG) and tag != TRIGGER_TAG:
            return tag[len(OWNER_TAG) :]
    return None


def owner_tags(owner: str | None) -> list[str]:
    return [OWNER_TAG + owner] if owner else []


def user_tags(tags: Sequence[str]) -> list[str]:
    return [t for t in tags if not t.startswith(OWNER_TAG)]


def pool_owner_variable(pool: str) -> str:
    """Variable names allow letters, digits, '-' and '_': other characters are spelled as their code."""
    safe = re.sub(r"[^A-Za-z0-9_-]", lambda m: f"_{ord(m.group()):x}_", pool)
    return (POOL_OWNER_VARIABLE + safe)[:255]


# --- variables ----------------------------------------------------------------------------------


def variable_spec(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"value": data.get("value")}


# --- pools --------------------------------------------------------------------------------------


def pool_spec(data: Mapping[str, Any], queues: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "type": data.get("type"),
        "description": data.get("description"),
        "base_job_template": data.get("base_job_template") or {},
        "concurrency_limit": data.get("concurrency_limit"),
        "paused": bool(data.get("is_paused")),
        "queues": _sorted_queues([queue_spec(q) for q in queues]),
    }


def queue_spec(q: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": q.get("name"),
        "priority": q.get("priority"),
        "concurrency_limit": q.get("concurrency_limit"),
        "description": q.get("description") or "",
        "paused": bool(q.get("is_paused")),
    }


def _sorted_queues(queues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(queues, key=lambda q: (q.get("priority") or 0, str(q.get("name"))))


def normalise_pool(spec: Mapping[str, Any], stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """Queue descriptions default to "", and the pool's `default` queue (which Prefect makes and
    keeps) is part of what the project wants unless it declares that queue itself."""
    out = dict(spec)
    queues = [
        {**q, "description": q.get("description") or ""} for q in spec.get("queues") or [] if isinstance(q, Mapping)
    ]
    names = {q.get("name") for q in queues}
    if DEFAULT_QUEUE not in names:
        kept = [q for q in (stored or {}).get("queues") or [] if q.get("name") == DEFAULT_QUEUE]
        queues += [dict(q) for q in kept]
    out["queues"] = _sorted_queues(queues)
    out["base_job_template"] = spec.get("base_job_template") or {}
    return out


# --- deployments --------------------------------------------------------------------------------


def deployment_spec(
    data: Mapping[str, Any], flow_name: str, automations: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    gcl = data.get("global_concurrency_limit")
    limit = gcl.get("limit") if isinstance(gcl, Mapping) else data.get("concurrency_limit")
    return {
        "flow_name": flow_name,
        "name": data["name"],
        "entrypoint": data.get("entrypoint"),
        "description": data.get("description"),
        "version": data.get("version"),
        "tags": user_tags(data.get("tags") or []),
        "parameters": data.get("parameters") or {},
        "parameter_schema": data.get("parameter_openapi_schema"),
        "work_pool_name": data.get("work_pool_name"),
        "work_queue_name": data.get("work_queue_name"),
        "job_variables": data.get("job_variables") or {},
        "pull_steps": data.get("pull_steps") or [],
        "concurrency_limit": limit,
        "concurrency_options": data.get("concurrency_options") if limit is not None else None,
        "triggers": sorted((trigger_spec(a) for a in automations), key=_trigger_key),
        "paused": bool(data.get("paused")),
        "schedules": sorted((schedule_spec(s) for s in data.get("schedules") or []), key=schedule_key),
        "enforce_parameter_schema": bool(data.get("enforce_parameter_schema", True)),
    }


def normalise_deployment(spec: Mapping[str, Any], stored: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(spec)
    if out.get("version") is not None and out["version"] is not UNKNOWN:
        out["version"] = str(out["version"])
    if out.get("work_pool_name") and out.get("work_queue_name") is None:
        out["work_queue_name"] = DEFAULT_QUEUE  # Prefect puts it on the pool's default queue
    if out.get("parameter_schema") is None:
        out["parameter_schema"] = (stored or {}).get("parameter_schema")
    options = out.get("concurrency_options")
    if out.get("concurrency_limit") is None:
        out["concurrency_options"] = None
    elif isinstance(options, Mapping):
        out["concurrency_options"] = {"grace_period_seconds": None, **options}
    if isinstance(out.get("schedules"), list):
        have = list((stored or {}).get("schedules") or [])
        out["schedules"] = sorted(
            (normalise_schedule(s, have) for s in out["schedules"] if isinstance(s, Mapping)), key=schedule_key
        )
    if isinstance(out.get("triggers"), list):
        out["triggers"] = sorted(
            (normalise_trigger(t) for t in out["triggers"] if isinstance(t, Mapping)), key=_trigger_key
        )
    return out


def deployment_payload(spec: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The API body for these spec keys (the deployment's own fields, not schedules/triggers)."""
    out: dict[str, Any] = {}
    for key in keys:
        if key in spec:
            out[_API_NAME.get(key, key)] = spec[key]
    if "version" in out and out["version"] is not None:
        out["version"] = str(out["version"])
    if "concurrency_options" in out and out.get("concurrency_options") is None:
        del out["concurrency_options"]
    return out


# --- schedules ----------------------------------------------------------------------------------

SCHEDULE_KINDS = ("cron", "interval", "rrule")


def schedule_spec(s: Mapping[str, Any]) -> dict[str, Any]:
    """A Prefect deployment schedule as a project's schedule item."""
    inner = s.get("schedule") or {}
    out: dict[str, Any] = {}
    for kind in SCHEDULE_KINDS:
        if kind in inner:
            out[kind] = inner[kind]
    if inner.get("timezone") is not None:
        out["timezone"] = inner["timezone"]
    if "anchor_date" in inner:
        out["anchor_date"] = _instant(inner["anchor_date"])
    if "day_or" in inner:
        out["day_or"] = inner["day_or"]
    if s.get("slug") is not None:
        out["slug"] = s["slug"]
    out["active"] = bool(s.get("active", True))
    out["parameters"] = s.get("parameters") or {}
    return out


def normalise_schedule(item: Mapping[str, Any], stored: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What Prefect stores for a schedule item: day_or true for cron, UTC for intervals and rrules
    without a timezone, seconds as a float, and the anchor date Prefect picked ("now" at create)
    when the project gives none."""
    out = {k: v for k, v in item.items() if k != "replaces"}
    if "cron" in out:
        out.setdefault("day_or", True)
    if "interval" in out:
        if isinstance(out["interval"], int | float) and not isinstance(out["interval"], bool):
            out["interval"] = float(out["interval"])
        out.setdefault("timezone", "UTC")
        if out.get("anchor_date") is None:
            out.pop("anchor_date", None)
            twin = _stored_twin(out, stored)
            if twin is not None and "anchor_date" in twin:
                out["anchor_date"] = twin["anchor_date"]
        else:
            out["anchor_date"] = _instant(out["anchor_date"], out.get("timezone"))
    if "rrule" in out:
        out.setdefault("timezone", "UTC")
    out.setdefault("active", True)
    out.setdefault("parameters", {})
    return out


def _stored_twin(item: Mapping[str, Any], stored: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The stored schedule this item is (same slug, else the same schedule but for its anchor)."""
    slug = item.get("slug")
    for s in stored:
        if slug is not None and s.get("slug") == slug:
            return s
    bare = {k: v for k, v in item.items() if k != "anchor_date"}
    for s in stored:
        if {k: v for k, v in s.items() if k != "anchor_date"} == bare:
            return s
    return None


def item_key(item: Any) -> str:
    """Identity of a schedule or trigger item by content (ties a stored item to its Prefect id)."""
    return json.dumps(item, sort_keys=True, default=str)


def schedule_key(s: Mapping[str, Any]) -> str:
    return json.dumps([s.get("slug") or "", s], sort_keys=True, default=str)


def schedule_payload(item: Mapping[str, Any]) -> dict[str, Any]:
    inner = {k: item[k] for k in (*SCHEDULE_KINDS, "timezone", "anchor_date", "day_or") if k in item}
    out: dict[str, Any] = {
        "schedule": inner,
        "active": bool(item.get("active", True)),
        "parameters": item.get("parameters") or {},
    }
    if item.get("slug") is not None:
        out["slug"] = item["slug"]
    return out


def _instant(value: Any, timezone: str | None = None) -> Any:
    """An anchor date as Prefect returns it (UTC, ISO 8601, `Z`); text it cannot read is kept."""
    when = timestamps.parse(value)
    if when is None:
        return value
    if when.tzinfo is None:
        if timezone and timezone != "UTC":
            return value  # a wall-clock time in a zone: Prefect keeps it in that zone
        when = when.replace(tzinfo=UTC)
    text = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


# --- triggers (automations) ---------------------------------------------------------------------

_AUTOMATION_KEYS = ("name", "description", "enabled")
_ACTION_KEYS = ("parameters", "job_variables", "schedule_after")
_EVENT_DEFAULTS: Mapping[str, Any] = {
    "match": {},
    "match_related": {},
    "after": [],
    "expect": [],
    "for_each": [],
    "posture": "Reactive",
    "threshold": 1,
    "within": 0.0,
}
_SETS = ("after", "expect", "for_each")


def trigger_spec(automation: Mapping[str, Any]) -> dict[str, Any]:
    """An automation made for a deployment trigger, as the project's trigger item."""
    out: dict[str, Any] = {k: automation.get(k) for k in _AUTOMATION_KEYS}
    out.update(_strip_ids(automation.get("trigger") or {}))
    actions = automation.get("actions") or [{}]
    for key in _ACTION_KEYS:
        out[key] = actions[0].get(key)
    return _trigger_defaults(out)


def normalise_trigger(item: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in item.items()}
    for key in (*_AUTOMATION_KEYS, *_ACTION_KEYS):
        out.setdefault(key, None)
    return _trigger_defaults(_fill_trigger(out))


def _trigger_defaults(t: dict[str, Any]) -> dict[str, Any]:
    t["description"] = t.get("description") or ""
    t["enabled"] = True if t.get("enabled") is None else bool(t["enabled"])
    t["schedule_after"] = _seconds(t.get("schedule_after")) or 0.0
    return t


def _fill_trigger(t: dict[str, Any]) -> dict[str, Any]:
    kind = t.setdefault("type", "event")
    if kind == "event":
        for key, value in _EVENT_DEFAULTS.items():
            if t.get(key) is None:
                t[key] = value if not isinstance(value, dict | list) else type(value)()
        if t.get("match_related") == []:
            t["match_related"] = {}
        for key in _SETS:
            if isinstance(t.get(key), list):
                t[key] = sorted(t[key])
        t["within"] = _seconds(t["within"])
    elif kind == "metric":
        t.setdefault("posture", "Metric")
        t.setdefault("match", {})
        t.setdefault("match_related", {})
        metric = dict(t.get("metric") or {})
        metric["range"] = _seconds(metric.get("range", 300.0))
        metric["firing_for"] = _seconds(metric.get("firing_for", 300.0))
        t["metric"] = metric
    elif kind in ("compound", "sequence"):
        t["triggers"] = [_fill_trigger(dict(x)) for x in t.get("triggers") or [] if isinstance(x, Mapping)]
        t["within"] = _seconds(t.get("within"))
        if kind == "compound":
            t.setdefault("require", "all")
    return t


def _seconds(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _strip_ids(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_ids(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [_strip_ids(v) for v in value]
    return value


def _trigger_key(t: Mapping[str, Any]) -> str:
    return json.dumps([t.get("name") or "", t], sort_keys=True, default=str)


def automation_payload(item: Mapping[str, Any], deployment_id: str, owner: str | None) -> dict[str, Any]:
    trigger = {k: v for k, v in item.items() if k not in (*_AUTOMATION_KEYS, *_ACTION_KEYS)}
    action: dict[str, Any] = {"type": "run-deployment", "source": "selected", "deployment_id": deployment_id}
    for key in _ACTION_KEYS:
        if item.get(key) is not None:
            action[key] = item[key]
    return {
        "name": item.get("name") or "trigger",
        "description": item.get("description") or "",
        "enabled": bool(item.get("enabled", True)),
        "trigger": trigger,
        "actions": [action],
        "owner_resource": f"prefect.deployment.{deployment_id}",
        "tags": [TRIGGER_TAG, *owner_tags(owner)],
    }


def automation_deployment(automation: Mapping[str, Any]) -> str | None:
    """The deployment a trigger automation runs (its first action), if it is one."""
    actions = automation.get("actions") or []
    if actions and actions[0].get("type") == "run-deployment" and actions[0].get("source") == "selected":
        value = actions[0].get("deployment_id")
        return str(value) if value else None
    return None
