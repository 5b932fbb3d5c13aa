"""JSON Schemas (Draft 2020-12) of the HTTP API bodies: the OpenAPI components and the server's
request validation use these same schemas, so the document and the checks cannot drift."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

from buildsys.store.base import KINDS, STATE_TYPES
from buildsys.store.transitions import BY_HAND

MAX_WAIT_SECONDS = 30.0  # long-poll cap (claims and log follows)
MAX_PAGE = 1000  # runs
MAX_RESOURCE_PAGE = 10_000  # desired state is read whole by every plan: one request for most projects
MAX_TIME = 1e11  # epoch seconds (year ~5138): keeps datetimes representable
MAX_INT = 2**53 - 1

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


NAME: Schema = {"type": "string", "minLength": 1, "maxLength": 512}
TEXT: Schema = {"type": "string", "maxLength": 1_000_000}
TIME: Schema = {"type": "number", "minimum": 0, "maximum": MAX_TIME}
OBJECT: Schema = {"type": "object"}
SERIAL: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_INT}


def _obj(props: Schema, required: tuple[str, ...] = (), *, closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "properties": props, "required": list(required)}
    if closed:
        schema["additionalProperties"] = False
    return schema


RESOURCE = _obj(
    {
        "kind": {"type": "string", "enum": list(KINDS)},
        "name": NAME,
        "spec": OBJECT,
        "owner": _nullable(NAME),
        "source": _nullable(OBJECT),
        "id": {"type": "string"},
        "created_at": {"type": "number"},
        "updated_at": {"type": "number"},
        "serial": {"type": "integer"},
    },
    ("kind", "name", "spec", "owner", "source", "id", "created_at", "updated_at", "serial"),
)

# Values the store itself checks (kind, action, state) are plain strings in request bodies: the
# store's refusal names them (422 "rejected") exactly as it does for the file store.
CHANGE = _obj(
    {
        "action": {"type": "string", "description": "create | update | delete"},
        "kind": {"type": "string", "description": " | ".join(KINDS)},
        "name": NAME,
        "spec": _nullable(OBJECT),
        "owner": _nullable(NAME),
        "source": _nullable(OBJECT),
    },
    ("action", "kind", "name"),
)

FLOW_RUN = _obj(
    {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "deployment": {"type": "string"},
        "deployment_id": {"type": "string"},
        "flow_name": {"type": "string"},
        "pool": {"type": "string"},
        "queue": _nullable({"type": "string"}),
        "parameters": OBJECT,
        "job_variables": OBJECT,
        "state": {"type": "string", "enum": list(STATE_TYPES)},
        "state_name": {"type": "string"},
        "state_message": _nullable({"type": "string"}),
        "scheduled_at": {"type": "number"},
        "created_at": {"type": "number"},
        "started_at": _nullable({"type": "number"}),
        "ended_at": _nullable({"type": "number"}),
        "worker": _nullable({"type": "string"}),
        "lease_expires_at": _nullable({"type": "number"}),
        "attempt": {"type": "integer"},
        "max_retries": {"type": "integer"},
        "retry_delay_seconds": {"type": "number"},
        "infrastructure_pid": _nullable({"type": "string"}),
        "auto_scheduled": {"type": "boolean"},
        "idempotency_key": _nullable({"type": "string"}),
        "tags": {"type": "array", "items": {"type": "string"}},
        "exit_code": _nullable({"type": "integer"}),
        "parent_task_run_id": _nullable({"type": "string"}),
        "run_count": {"type": "integer"},
        "prefect": OBJECT,
    },
    ("id", "name", "deployment", "deployment_id", "flow_name", "pool", "queue", "state", "state_name"),
)

TASK_RUN = _obj(
    {
        "id": {"type": "string"},
        "flow_run_id": {"type": "string"},
        "name": {"type": "string"},
        "task_key": {"type": "string"},
        "dynamic_key": {"type": "string"},
        "state": {"type": "string", "enum": list(STATE_TYPES)},
        "state_name": {"type": "string"},
        "state_message": _nullable({"type": "string"}),
        "state_ts": {"type": "number"},
        "created_at": {"type": "number"},
        "started_at": _nullable({"type": "number"}),
        "ended_at": _nullable({"type": "number"}),
        "run_count": {"type": "integer"},
        "cached": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "history": {"type": "array", "items": OBJECT},
    },
    ("id", "flow_run_id", "name", "state", "state_name"),
)

RUN_STATE = _obj(
    {
        "run_id": {"type": "string"},
        "ts": {"type": "number"},
        "state": {"type": "string", "enum": list(STATE_TYPES)},
        "name": {"type": "string"},
        "message": _nullable({"type": "string"}),
        "attempt": {"type": "integer", "minimum": 1},
        "worker": _nullable({"type": "string"}),
    },
    ("run_id", "ts", "state", "name"),
)

ARTIFACT = _obj(
    {
        "id": {"type": "string"},
        "flow_run_id": _nullable({"type": "string"}),
        "task_run_id": _nullable({"type": "string"}),
        "key": _nullable({"type": "string"}),
        "type": _nullable({"type": "string"}),
        "description": _nullable({"type": "string"}),
        "data": {},
        "created_at": {"type": "number"},
    },
    ("id", "flow_run_id"),
)

CONCURRENCY_LIMIT = _obj(
    {
        "name": {"type": "string"},
        "limit": {"type": "integer"},
        "active_slots": {"type": "integer"},
        "id": {"type": "string"},
        "created_at": {"type": "number"},
    },
    ("name", "limit", "active_slots"),
)

LOG_LINE = _obj(
    {
        "run_id": {"type": "string"},
        "seq": {"type": "integer"},
        "ts": {"type": "number"},
        "message": {"type": "string"},
        "stream": {"type": "string"},
        "level": _nullable({"type": "integer"}),
        "logger": _nullable({"type": "string"}),
        "task_run_id": _nullable({"type": "string"}),
    },
    ("run_id", "seq", "ts", "message", "stream"),
)

WORKER = _obj(
    {
        "name": {"type": "string"},
        "pool": {"type": "string"},
        "last_heartbeat": {"type": "number"},
        "status": {"type": "string", "enum": ["ONLINE", "OFFLINE"]},
        "type": _nullable({"type": "string"}),
    },
    ("name", "pool", "last_heartbeat", "status", "type"),
)

# A shared-cache entry (buildsys.sharedcache): the server keeps it as sent; runners check the seal.
CACHE_ENTRY = _obj(
    {
        "format": {"type": "integer", "minimum": 1, "maximum": 1000},
        "key": {"type": "string", "pattern": "^[0-9a-f]{16,128}$"},
        "writer": {"type": "string", "maxLength": 64},
        "mac": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "payload": {"type": "string", "maxLength": 1_000_000},
    },
    ("format", "key", "writer", "mac", "payload"),
)

COMPONENTS: dict[str, Schema] = {
    "Error": _obj(
        {
            "error": _obj(
                {"code": {"type": "string"}, "message": {"type": "string"}, "hint": {"type": "string"}},
                ("code", "message"),
            )
        },
        ("error",),
    ),
    "Health": _obj({"status": {"type": "string", "enum": ["ok"]}, "serial": SERIAL}, ("status",)),
    "Serial": _obj({"serial": SERIAL}, ("serial",)),
    "CacheEntry": CACHE_ENTRY,
    "Stored": _obj({"key": {"type": "string"}}, ("key",)),
    "Resource": RESOURCE,
    "ResourcePage": _obj(
        {
            "items": {"type": "array", "items": _ref("Resource")},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "serial": SERIAL,
        },
        ("items", "total", "limit", "offset", "serial"),
    ),
    "Change": CHANGE,
    "ApplyRequest": _obj(
        {
            "changes": {"type": "array", "items": _ref("Change"), "maxItems": 100_000},
            "expected_serial": _nullable(SERIAL),
        },
        ("changes",),
    ),
    "FlowRun": FLOW_RUN,
    "FlowRunPage": _obj(
        {
            "items": {"type": "array", "items": _ref("FlowRun")},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
        ("items", "limit", "offset"),
    ),
    "RunCreate": _obj(
        {
            "deployment": NAME,
            "parameters": _nullable(OBJECT),
            "job_variables": _nullable(OBJECT),
            "scheduled_at": _nullable(TIME),
            "queue": _nullable(NAME),
            "name": _nullable(NAME),
            "idempotency_key": _nullable(NAME),
            "auto_scheduled": {"type": "boolean"},
            "tags": {"type": "array", "items": NAME, "maxItems": 1000},
        },
        ("deployment",),
    ),
    "ClaimRequest": _obj(
        {
            "pool": NAME,
            "worker": NAME,
            "queues": _nullable({"type": "array", "items": NAME, "maxItems": 1000}),
            "limit": {"type": "integer", "minimum": 1, "maximum": 100},
            "lease_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
            "wait": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
        },
        ("pool", "worker"),
    ),
    "Runs": _obj({"runs": {"type": "array", "items": _ref("FlowRun")}}, ("runs",)),
    "HeartbeatRequest": _obj(
        {
            "pool": NAME,
            "worker": NAME,
            "run_ids": {"type": "array", "items": NAME, "maxItems": 10_000},
            "lease_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
        },
        ("pool", "worker"),
    ),
    "HeartbeatResponse": _obj(
        {"cancelling": {"type": "array", "items": {"type": "string"}}}, ("cancelling",)
    ),
    "StateRequest": _obj(
        {
            "state": {"type": "string", "description": " | ".join(STATE_TYPES)},
            "name": _nullable(NAME),
            "message": _nullable(TEXT),
            "worker": _nullable(NAME),
            "infrastructure_pid": _nullable(NAME),
            "exit_code": _nullable({"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}),
        },
        ("state",),
    ),
    "RunMark": _obj(
        {
            "state": {"type": "string", "maxLength": 64, "description": "a final state: " + " | ".join(BY_HAND)},
            "message": _nullable(TEXT),
            "force": {"type": "boolean"},
        },
        ("state",),
    ),
    "ExpireRequest": _obj({"now": _nullable(TIME)}),
    "LogAppend": _obj(
        {
            "lines": {
                "type": "array",
                "maxItems": 100_000,
                "items": _obj(
                    {
                        "ts": TIME,
                        "stream": {"type": "string", "enum": ["stdout", "stderr", "worker", "prefect"]},
                        "message": TEXT,
                        "level": _nullable({"type": "integer", "minimum": 0, "maximum": 100}),
                        "logger": _nullable(NAME),
                        "task_run_id": _nullable(NAME),
                    },
                    ("ts", "stream", "message"),
                ),
            }
        },
        ("lines",),
    ),
    "LogAppended": _obj({"last_seq": {"type": "integer"}}, ("last_seq",)),
    "LogPage": _obj(
        {
            "lines": {"type": "array", "items": _ref("LogLine")},
            "state": {"type": "string", "enum": list(STATE_TYPES)},
        },
        ("lines", "state"),
    ),
    "LogLine": LOG_LINE,
    "Workers": _obj({"items": {"type": "array", "items": _ref("WorkerInfo")}}, ("items",)),
    "WorkerInfo": WORKER,
    "Export": _obj(
        {
            "version": {"type": "integer"},
            "serial": SERIAL,
            "resources": {"type": "array", "items": OBJECT},
            "runs": {"type": "array", "items": OBJECT},
            "logs": {"type": "array", "items": OBJECT},
        },
        ("resources",),
        closed=False,
    ),
    "Imported": _obj({"serial": SERIAL}, ("serial",)),
    "TaskRun": TASK_RUN,
    "TaskRuns": _obj({"items": {"type": "array", "items": _ref("TaskRun")}}, ("items",)),
    "RunState": RUN_STATE,
    "RunStates": _obj({"items": {"type": "array", "items": _ref("RunState")}}, ("items",)),
    "Artifact": ARTIFACT,
    "Artifacts": _obj({"items": {"type": "array", "items": _ref("Artifact")}}, ("items",)),
    "ConcurrencyLimit": CONCURRENCY_LIMIT,
    "ConcurrencyLimits": _obj({"items": {"type": "array", "items": _ref("ConcurrencyLimit")}}, ("items",)),
    "ConcurrencyLimitSet": _obj(
        {"limit": _nullable({"type": "integer", "minimum": 0, "maximum": 2**31})}, ("limit",)
    ),
    "ConcurrencyLimitResult": _obj({"limit": _nullable(_ref("ConcurrencyLimit"))}, ("limit",)),
}


@cache
def shipped_document() -> dict[str, Any]:
    """`schemas/openapi.json` as shipped: what the server serves and validates bodies against (the
    document `buildsys.server.openapi` generates from the definitions above; a test keeps the two equal)."""
    document: dict[str, Any] = json.loads((files("buildsys.schemas") / "openapi.json").read_text(encoding="utf-8"))
    return document


def shipped_components() -> dict[str, Schema]:
    components: dict[str, Schema] = shipped_document()["components"]["schemas"]
    return components
