"""Generates the OpenAPI 3.1 document from the route table and the body schemas.

The server serves and validates against `schemas/openapi.json`, the checked-in output of this
module (a test fails when they differ); regenerate it with
``python -m buildsys.server.openapi > schemas/openapi.json``.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

from buildsys.server.endpoints import Endpoint, Param
from buildsys.server.routes import ENDPOINTS
from buildsys.server.schemas import COMPONENTS

TITLE = "buildsys state store API"
VERSION = "1"

_REASONS = {
    400: "The body is not JSON",
    401: "No valid bearer token",
    403: "The token's scope does not allow this call",
    404: "Not found",
    409: "Conflict: the serial moved, or the transition is not allowed",
    413: "The body is too large",
    422: "The request does not match the schema, or the store rejected it",
    503: "The database is unavailable",
}


@cache
def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        paths.setdefault(ep.openapi_path, {})[ep.method.lower()] = _operation(ep)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "Pools, deployments and variables (desired state, changed only by apply), "
            'flow runs with leases, logs and workers. Errors are {"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(ep: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": ep.operation_id,
        "summary": ep.summary,
        "tags": [ep.tag],
        "responses": _responses(ep),
    }
    params = [_path_param(name) for name in re.findall(r"\{(\w+)(?::path)?\}", ep.path)]
    params += [_query_param(p) for p in ep.query]
    if params:
        op["parameters"] = params
    if ep.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ep.body}"}}},
        }
    if ep.scope is not None:
        op["security"] = [{"bearer": []}]
        op["description"] = f"Needs a token with scope `{ep.scope}` when the server requires auth."
    return op


def _responses(ep: Endpoint) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK" if ep.status == 200 else "Created"}
    schema = {"$ref": f"#/components/schemas/{ep.reply}"} if ep.reply else {"type": "object"}
    ok["content"] = {"application/json": {"schema": schema}}
    statuses = set(ep.errors) | {503}
    if ep.body is not None:
        statuses |= {400, 413, 422}
    if ep.query or ep.body is not None or "{" in ep.path:
        statuses.add(422)
    if ep.scope is not None:
        statuses |= {401, 403}
    responses: dict[str, Any] = {str(ep.status): ok}
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": _REASONS[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return responses


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


def _query_param(p: Param) -> dict[str, Any]:
    schema: dict[str, Any]
    if p.type == "state-list":
        schema = {"type": "array", "items": {"type": "string", "enum": list(p.enum)}}
    else:
        schema = {"type": p.type}
        if p.enum:
            schema["enum"] = list(p.enum)
        if p.minimum is not None:
            schema["minimum"] = p.minimum
        if p.maximum is not None:
            schema["maximum"] = p.maximum
        if p.default is not None:
            schema["default"] = p.default
    out: dict[str, Any] = {
        "name": p.name,
        "in": "query",
        "required": False,
        "description": p.description,
        "schema": schema,
    }
    if p.type == "state-list":
        out["style"] = "form"
        out["explode"] = True
    return out


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
