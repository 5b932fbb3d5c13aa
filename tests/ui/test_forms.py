"""Forms from JSON Schema (pure): Prefect's pydantic shapes, typed reading, located errors."""

from __future__ import annotations

from typing import Any

import pytest

from buildsys.ui.forms import fields_for, read_form, submitted
from buildsys.ui.pools import with_defaults

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`

SCHEMA: dict[str, Any] = {
    "title": "Parameters",
    "type": "object",
    "properties": {
        "when": {"type": "string", "format": "date", "position": 1, "title": "when"},
        "cfg": {"$ref": "#/definitions/Cfg", "position": 0, "title": "cfg"},
        "names": {"type": "array", "items": {"type": "integer"}, "position": 2, "title": "names"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None, "position": 3, "title": "note"},
    },
    "required": ["cfg", "when"],
    "definitions": {
        "Mode": {"enum": ["fast", "slow"], "title": "Mode", "type": "string"},
        "Cfg": {
            "title": "Cfg",
            "description": "settings",
            "type": "object",
            "properties": {
                "retries": {"type": "integer", "title": "Retries"},
                "mode": {"allOf": [{"$ref": "#/definitions/Mode"}], "default": "fast"},
                "extra": {"type": "object", "title": "Extra"},
            },
            "required": ["retries"],
        },
    },
}


def test_fields_follow_refs_positions_and_nullables() -> None:
    fields = fields_for(SCHEMA)
    assert [(f.name, f.widget, f.required) for f in fields] == [
        ("cfg", "group", True),
        ("when", "date", True),
        ("names", "lines", False),
        ("note", "text", False),
    ]
    cfg = fields[0]
    assert cfg.description == "settings"
    assert [(c.name, c.widget, c.required, c.options, c.value) for c in cfg.children] == [
        ("cfg.retries", "integer", True, (), None),
        ("cfg.mode", "enum", False, ("fast", "slow"), "fast"),
        ("cfg.extra", "json", False, (), None),
    ]


def test_read_form_types_values_and_names_each_problem() -> None:
    fields = fields_for(SCHEMA)
    good = read_form(SCHEMA, fields, {"cfg.retries": "3", "cfg.mode": '"slow"', "cfg.extra": '{"a": 1}',
                                      "when": "2026-01-02", "names": "1\n 2 \n\n", "note": ""})
    assert good.errors == {}
    assert good.values == {"cfg": {"retries": 3, "mode": "slow", "extra": {"a": 1}}, "when": "2026-01-02", "names": [1, 2]}
    bad = read_form(SCHEMA, fields, {"cfg.retries": "three", "names": "1\nx", "cfg.extra": "{"})
    assert bad.errors == {
        "cfg.retries": "'three' is not a whole number",
        "names": "'x' is not a whole number",
        "cfg.extra": "not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    }
    missing = read_form(SCHEMA, fields, {"cfg.mode": '"fast"'})
    assert missing.errors == {"cfg.retries": "required", "when": "required"}


def test_typed_text_is_shown_again_unchanged() -> None:
    fields = fields_for(SCHEMA)
    again = fields_for(SCHEMA, submitted(fields, {"cfg.retries": "three", "names": "1\nx"}), fill_defaults=False)
    assert again[0].children[0].text == "three" and again[2].text == "1\nx"


def test_with_defaults_replaces_clears_and_keeps_null() -> None:
    template = {"job_configuration": {}, "variables": {"properties": {
        "a": {"type": "string", "default": "x"}, "b": {"type": "string", "default": "y"},
        "c": {"type": ["string", "null"], "default": None}}}}
    new = with_defaults(template, {"a": "z"})
    assert new["variables"]["properties"] == {
        "a": {"type": "string", "default": "z"}, "b": {"type": "string"},
        "c": {"type": ["string", "null"], "default": None}}
    assert template["variables"]["properties"]["a"]["default"] == "x"  # the original is untouched


def test_job_variable_fields_show_what_the_deployment_gives_each_variable() -> None:
    from buildsys.store.base import Resource
    from buildsys.ui.deployments import JV, run_fields

    template = {"job_configuration": {"env": "{{ env }}", "image": "{{ image }}"}, "variables": {"type": "object", "properties": {
        "env": {"type": "object", "additionalProperties": {"type": "string"}, "default": {}},
        "image": {"type": "string", "default": "python:3.11"}}}}
    pool = Resource("pool", "p", {"type": "docker", "base_job_template": template})
    deployment = Resource("deployment", "f/d", {"work_pool_name": "p", "job_variables": {"image": "app:1"}})
    _, job = run_fields(deployment, pool)
    assert [(f.name, f.widget, f.value, f.default_text) for f in job] == [
        (f"{JV}env", "json", None, "{}"),
        (f"{JV}image", "text", None, "app:1"),
    ]
