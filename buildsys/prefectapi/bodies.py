"""JSON Schemas of the request bodies the Prefect API reads. Prefect's clients send many fields
buildsys does not use, so objects stay open; the fields that are used are typed and bounded (a
huge integer or an over-long name is a 422 naming the field, never a database error)."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

MAX_INT = 2**31 - 1
NAME: Schema = {"type": "string", "minLength": 1, "maxLength": 512}
TEXT: Schema = {"type": "string", "maxLength": 1_000_000}
ID: Schema = {"type": "string", "minLength": 1, "maxLength": 64}
TIME: Schema = {"type": "string", "maxLength": 64}
COUNT: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_INT}
SECONDS: Schema = {"type": "number", "minimum": 0, "maximum": 86_400 * 366}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(props: Schema, required: tuple[str, ...] = ()) -> Schema:
    return {"type": "object", "properties": props, "required": list(required)}


def any_of(item: Schema) -> Schema:
    """A Prefect filter field: {"any_": [...]} and friends."""
    values = nullable({"type": "array", "items": item, "maxItems": 10_000})
    return nullable(obj({"any_": values, "not_any_": values, "is_null_": nullable({"type": "boolean"})}))


STATE_TYPE: Schema = {
    "type": "string",
    "enum": ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "CRASHED", "CANCELLING", "PAUSED"],
}
RETRY_DELAY: Schema = nullable(
    {"anyOf": [SECONDS, {"type": "array", "items": SECONDS, "maxItems": 1000}]}
)
EMPIRICAL_POLICY: Schema = nullable(
    obj(
        {
            "retries": nullable(COUNT),
            "retry_delay": RETRY_DELAY,
            "max_retries": nullable(COUNT),
            "retry_delay_seconds": nullable(SECONDS),
        }
    )
)
STATE: Schema = obj(
    {
        "type": STATE_TYPE,
        "name": nullable(NAME),
        "message": nullable(TEXT),
        "timestamp": nullable(TIME),
        "state_details": nullable(
            obj({"transition_id": nullable(ID), "scheduled_time": nullable(TIME), "cache_key": nullable(TEXT)})
        ),
    },
    ("type",),
)
LABELS: Schema = {"type": "object", "maxProperties": 1000, "additionalProperties": {"type": ["string", "number", "boolean", "null"]}}
TAGS: Schema = nullable({"type": "array", "items": NAME, "maxItems": 1000})
PARAMETERS: Schema = nullable({"type": "object"})

SCHEMAS: dict[str, Schema] = {
    "SetState": obj({"state": STATE, "force": {"type": "boolean"}}, ("state",)),
    "FlowRunUpdate": obj(
        {
            "name": nullable(NAME),
            "flow_version": nullable({"type": "string", "maxLength": 512}),
            "empirical_policy": EMPIRICAL_POLICY,
            "infrastructure_pid": nullable({"type": "string", "maxLength": 512}),
            "labels": nullable(LABELS),
        }
    ),
    "Labels": LABELS,
    "FlowRunFilter": obj(
        {
            "flow_runs": nullable(
                obj(
                    {
                        "id": any_of(ID),
                        "parent_task_run_id": any_of(ID),
                        "state": nullable(obj({"type": any_of(STATE_TYPE), "name": any_of(NAME)})),
                        "work_pool_name": any_of(NAME),
                    }
                )
            ),
            "limit": nullable({"type": "integer", "minimum": 0, "maximum": 10_000}),
            "offset": nullable({"type": "integer", "minimum": 0, "maximum": MAX_INT}),
        }
    ),
    "FlowRunCreate": obj(
        {
            "flow_id": ID,
            "name": nullable(NAME),
            "parameters": PARAMETERS,
            "parent_task_run_id": nullable(ID),
            "state": nullable(STATE),
            "tags": TAGS,
            "labels": nullable(LABELS),
            "empirical_policy": EMPIRICAL_POLICY,
            "flow_version": nullable({"type": "string", "maxLength": 512}),
            "idempotency_key": nullable(NAME),
        },
        ("flow_id",),
    ),
    "DeploymentRun": obj(
        {
            "name": nullable(NAME),
            "parameters": PARAMETERS,
            "parent_task_run_id": nullable(ID),
            "state": nullable(STATE),
            "tags": TAGS,
            "idempotency_key": nullable(NAME),
            "job_variables": nullable({"type": "object"}),
            "work_queue_name": nullable(NAME),
            "labels": nullable(LABELS),
        }
    ),
    "FlowCreate": obj({"name": NAME, "tags": TAGS}, ("name",)),
    "TaskRunCreate": obj(
        {
            "id": nullable(ID),
            "name": nullable(NAME),
            "flow_run_id": nullable(ID),
            "task_key": {"type": "string", "maxLength": 2048},
            "dynamic_key": {"type": ["string", "integer"], "maxLength": 2048},
            "tags": TAGS,
            "state": nullable(STATE),
        },
    ),
    "Logs": {
        "type": "array",
        "maxItems": 100_000,
        "items": obj(
            {
                "name": {"type": "string", "maxLength": 512},
                "level": {"type": "integer", "minimum": 0, "maximum": 100},
                "message": TEXT,
                "timestamp": TIME,
                "flow_run_id": nullable(ID),
                "task_run_id": nullable(ID),
            },
            ("level", "message"),
        ),
    },
    "VariableCreate": obj({"name": NAME, "value": {}, "tags": TAGS}, ("name",)),
    "VariableUpdate": obj({"name": nullable(NAME), "value": {}, "tags": TAGS}),
    "ArtifactCreate": obj(
        {
            "key": nullable({"type": "string", "maxLength": 512}),
            "type": nullable({"type": "string", "maxLength": 512}),
            "description": nullable(TEXT),
            "data": {},
            "flow_run_id": nullable(ID),
            "task_run_id": nullable(ID),
        }
    ),
    "ArtifactFilter": obj(
        {
            "artifacts": nullable(obj({"key": any_of(NAME), "flow_run_id": any_of(ID)})),
            "flow_runs": nullable(obj({"id": any_of(ID)})),
            "limit": nullable({"type": "integer", "minimum": 0, "maximum": 10_000}),
        }
    ),
    "Increment": obj(
        {
            "names": {"type": "array", "items": NAME, "maxItems": 1000},
            "slots": {"type": "integer", "minimum": 1, "maximum": MAX_INT},
            "mode": {"type": "string", "enum": ["concurrency", "rate_limit"]},
            "lease_duration": {"type": "number", "minimum": 1, "maximum": 86_400},
            "holder": nullable({"type": "object"}),
        },
        ("names", "slots"),
    ),
    "LeaseRef": obj({"lease_id": ID}, ("lease_id",)),
    "Renew": obj({"lease_duration": {"type": "number", "minimum": 1, "maximum": 86_400}}),
    "LimitCreate": obj(
        {"name": NAME, "limit": {"type": "integer", "minimum": 0, "maximum": MAX_INT}, "active": {"type": "boolean"}},
        ("name", "limit"),
    ),
    "TagLimitCreate": obj(
        {"tag": NAME, "concurrency_limit": {"type": "integer", "minimum": 0, "maximum": MAX_INT}},
        ("tag", "concurrency_limit"),
    ),
    "Scheduled": obj(
        {
            "work_queue_names": nullable({"type": "array", "items": NAME, "maxItems": 1000}),
            "scheduled_before": nullable(TIME),
            "scheduled_after": nullable(TIME),
            "limit": nullable({"type": "integer", "minimum": 1, "maximum": 1000}),
        }
    ),
    "Heartbeat": obj(
        {"name": NAME, "heartbeat_interval_seconds": nullable({"type": "integer", "minimum": 1, "maximum": 86_400})},
        ("name",),
    ),
    "Filter": {"type": "object"},
}
