"""HTML forms generated from JSON Schema, and form data read back into JSON values.

Pure functions: `fields_for(schema)` turns an object schema (a deployment's `parameter_schema`, a
pool template's `variables`) into typed `Field`s the templates render; `read_form` turns submitted
text back into values and checks them against the same schema, naming the field of every problem.
Pydantic's `$ref`s into `definitions` / `$defs`, `allOf: [{$ref}]` and `anyOf: [X, null]` are
followed so a model parameter becomes a fieldset of its own fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator

MAX_DEPTH = 6  # nested models deeper than this are edited as JSON

# input widgets: text, integer, number, boolean, enum, date, datetime, lines (a list of scalars,
# one per line), json (anything else, as JSON text), group (an object's fields)


@dataclass(frozen=True)
class Field:
    name: str  # the form field name: the path through the value, dotted ("config.retries")
    label: str
    widget: str
    required: bool = False
    description: str | None = None
    default: Any = None
    has_default: bool = False
    value: Any = None  # the value shown (JSON value), None when empty
    options: tuple[Any, ...] = ()  # enum members
    item_type: str | None = None  # for "lines": the JSON type of each line
    children: tuple[Field, ...] = ()

    @property
    def html_id(self) -> str:
        return "f-" + self.name.replace(".", "-")

    @property
    def text(self) -> str:
        """The value as the input shows it."""
        return to_text(self.widget, self.value)

    @property
    def default_text(self) -> str:
        return to_text(self.widget, self.default) if self.has_default else ""


@dataclass
class FormResult:
    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # field name (or "" for the whole form) -> message


class Typed(str):
    """Text as the user typed it (shown again unchanged next to its error)."""


def to_text(widget: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Typed):
        return str(value)
    if widget == "lines" and isinstance(value, list):
        return "\n".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    if widget == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    if widget == "boolean":
        return "true" if value else "false"
    if widget == "enum":
        return json.dumps(value)
    if widget == "datetime" and isinstance(value, str):
        return value[:19]  # <input type=datetime-local> shows no zone
    if isinstance(value, str):
        return value
    return json.dumps(value)


# --- schema -> fields ----------------------------------------------------------------------------


def fields_for(
    schema: Mapping[str, Any], values: Mapping[str, Any] | None = None, *, prefix: str = "", fill_defaults: bool = True
) -> tuple[Field, ...]:
    """The fields of an object schema, in `position` order (Prefect's) then declaration order.
    `values` are shown in the inputs; without one a field shows its default when `fill_defaults`."""
    return _object_fields(schema, schema, dict(values or {}), prefix, fill_defaults, 0)


def _object_fields(
    root: Mapping[str, Any], schema: Mapping[str, Any], values: Mapping[str, Any], prefix: str, fill: bool, depth: int
) -> tuple[Field, ...]:
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return ()
    required = set(schema.get("required") or ())
    ordered = sorted(
        enumerate(props.items()),
        key=lambda item: (_position(item[1][1]), item[0]),
    )
    return tuple(
        _field(root, str(name), sub, values, prefix, name in required, fill, depth)
        for _, (name, sub) in ordered
        if isinstance(sub, Mapping)
    )


def _position(sub: Any) -> float:
    pos = sub.get("position") if isinstance(sub, Mapping) else None
    return float(pos) if isinstance(pos, int | float) else float("inf")


def _field(
    root: Mapping[str, Any],
    name: str,
    raw: Mapping[str, Any],
    values: Mapping[str, Any],
    prefix: str,
    required: bool,
    fill: bool,
    depth: int,
) -> Field:
    schema, nullable = resolve(root, raw)
    has_default = "default" in raw or "default" in schema
    default = raw.get("default", schema.get("default"))
    given = name in values
    value = values[name] if given else (default if fill else None)
    path = f"{prefix}{name}"
    title = raw.get("title") or schema.get("title") or name
    description = raw.get("description") or schema.get("description")
    common = {
        "name": path,
        "label": str(title),
        "required": required and not nullable,
        "description": str(description) if description else None,
        "default": default,
        "has_default": has_default,
        "value": value,
    }
    widget, extra = _widget(root, schema, depth)
    if widget == "group":
        inner = value if isinstance(value, Mapping) else {}
        children = _object_fields(root, schema, inner, path + ".", fill and not given, depth + 1)
        return Field(widget="group", children=children, **common)
    return Field(widget=widget, **extra, **common)


def resolve(root: Mapping[str, Any], schema: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """Follow `$ref`, a one-member `allOf` and `anyOf/oneOf: [X, null]`; returns (schema, nullable)."""
    nullable = False
    for _ in range(20):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target = _lookup(root, ref)
            merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            schema = merged
            continue
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], Mapping):
            schema = {**all_of[0], **{k: v for k, v in schema.items() if k != "allOf"}}
            continue
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list):
                real = [o for o in options if isinstance(o, Mapping) and o.get("type") != "null"]
                if len(real) < len(options):
                    nullable = True
                if len(real) == 1:
                    schema = {**real[0], **{k: v for k, v in schema.items() if k != key}}
                    break
        else:
            kinds = schema.get("type")
            if isinstance(kinds, list) and "null" in kinds:
                nullable = True
                rest = [k for k in kinds if k != "null"]
                schema = {**schema, "type": rest[0] if len(rest) == 1 else rest}
            return schema, nullable
    return schema, nullable


def _lookup(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    if not ref.startswith("#/"):
        return {}
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _widget(root: Mapping[str, Any], schema: Mapping[str, Any], depth: int) -> tuple[str, dict[str, Any]]:
    if "enum" in schema and isinstance(schema["enum"], list):
        return "enum", {"options": tuple(schema["enum"])}
    if "const" in schema:
        return "enum", {"options": (schema["const"],)}
    kind = schema.get("type")
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "date":
            return "date", {}
        if fmt == "date-time":
            return "datetime", {}
        return "text", {}
    if kind in ("integer", "number", "boolean"):
        return str(kind), {}
    if kind == "array":
        items = schema.get("items")
        item, _ = resolve(root, items) if isinstance(items, Mapping) else ({}, False)
        item_type = item.get("type")
        if item_type in ("string", "integer", "number") and "enum" not in item:
            return "lines", {"item_type": item_type}
        return "json", {}
    plain_object = kind == "object" and isinstance(schema.get("properties"), Mapping)
    if plain_object and depth < MAX_DEPTH and not schema.get("additionalProperties"):
        return "group", {}
    return "json", {}


def submitted(fields: tuple[Field, ...], data: Mapping[str, str], prefix: str = "") -> dict[str, Any]:
    """What the user typed, as `values` for `fields_for`, to show it again next to the errors."""
    values: dict[str, Any] = {}
    for f in fields:
        key = f.name[len(prefix) :].rsplit(".", 1)[-1] if f.name.startswith(prefix) else f.name
        if f.widget == "group":
            values[key] = submitted(f.children, data, prefix)
        elif data.get(f.name):
            values[key] = Typed(data[f.name])
    return values


# --- form data -> values -------------------------------------------------------------------------


def read_form(
    schema: Mapping[str, Any],
    fields: tuple[Field, ...],
    data: Mapping[str, str],
    *,
    validate: bool = True,
    prefix: str = "",
) -> FormResult:
    """Turn the submitted text of `fields` into values (empty inputs are left out, so defaults
    apply), then check the whole value against `schema`; every problem names its field."""
    result = FormResult()
    result.values = _read_fields(fields, data, result.errors)
    if validate and not result.errors:
        for error in Draft202012Validator(dict(schema)).iter_errors(result.values):
            name = ".".join(str(p) for p in error.absolute_path)
            if error.validator == "required" and isinstance(error.instance, Mapping):
                missing = next((r for r in error.validator_value if r not in error.instance), "")
                name = f"{name}.{missing}".lstrip(".")
                result.errors.setdefault(prefix + name, "required")
            else:
                result.errors.setdefault(prefix + name if name else "", _short(error.message))
    return result


def _read_fields(fields: tuple[Field, ...], data: Mapping[str, str], errors: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in fields:
        key = f.name.rsplit(".", 1)[-1]
        if f.widget == "group":
            inner = _read_fields(f.children, data, errors)
            if inner:
                values[key] = inner
            continue
        raw = data.get(f.name, "")
        if raw.strip() == "":
            continue
        try:
            values[key] = parse_text(f, raw)
        except ValueError as exc:
            errors[f.name] = str(exc)
    return values


def parse_text(f: Field, raw: str) -> Any:
    """One input's text as the JSON value its widget stands for (ValueError says what is wrong)."""
    text = raw.strip()
    if f.widget == "integer":
        return _int(text)
    if f.widget == "number":
        return _number(text)
    if f.widget == "boolean":
        if text not in ("true", "false"):
            raise ValueError("choose true or false")
        return text == "true"
    if f.widget == "enum":
        for option in f.options:
            if text == json.dumps(option):
                return option
        raise ValueError("choose one of " + ", ".join(map(str, f.options)))
    if f.widget == "lines":
        items = [line.strip() for line in raw.splitlines() if line.strip()]
        if f.item_type == "integer":
            return [_int(x) for x in items]
        if f.item_type == "number":
            return [_number(x) for x in items]
        return items
    if f.widget == "json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
    if f.widget == "datetime" and len(text) == 16:
        return text + ":00"  # <input type=datetime-local> leaves out the seconds
    return raw if f.widget == "text" else text


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def _number(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("must be a finite number")
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _short(message: str) -> str:
    return message if len(message) <= 200 else message[:197] + "..."
