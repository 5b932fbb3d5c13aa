"""Flow-run parameters checked against a deployment's stored `parameter_schema`, as Prefect's server
checks them when `enforce_parameter_schema` is on (its default). One checker, used by `run` before a
run is created and by plan's preflight for the deployment's own parameters.

Messages are Prefect's: "Validation failed for field 'n'. Failure reason: 'x' is not of type
'integer'". Unlike Prefect, a name the flow does not take is refused too (Prefect's schema lets it
through and the run then crashes calling the function), unless the flow takes `**kwargs`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from buildsys.errors import BuildsysError
from buildsys.records import Record


class ParameterError(BuildsysError):
    """A run's parameters do not fit the deployment's parameter schema."""


_set = object.__setattr__


class ParameterProblem(Record):
    __slots__ = __match_args__ = ("field", "message", "unknown_name", "hint")
    field: str  # dotted path of the parameter ("n", "config.size"); "" for the whole set
    message: str  # Prefect's wording
    unknown_name: bool  # a name the flow does not take (plan: a warning)
    hint: str | None

    def __init__(
        self,
        field: str,
        message: str,
        unknown_name: bool = False,
        hint: str | None = None,
    ) -> None:
        _set(self, "field", field)
        _set(self, "message", message)
        _set(self, "unknown_name", unknown_name)
        _set(self, "hint", hint)


def check(
    schema: Mapping[str, Any], parameters: Mapping[str, Any], *, partial: bool = False, key: str | None = None
) -> list[ParameterProblem]:
    """Every problem with `parameters` under `schema`. `partial`: a deployment's defaults, which
    need not name every required parameter (Prefect checks them with required ignored).
    Values that are still templates (resolved when the run starts) are not type-checked.
    `key`: `schema_key(schema)`, when the caller checks many values against one schema."""
    from buildsys.desired import known_later

    key = key if key is not None else schema_key(schema)
    names, any_name = _names(key, schema)
    problems: list[ParameterProblem] = []
    if not any_name:
        for name in parameters:
            if name not in names:
                from buildsys.suggest import did_you_mean

                guess = did_you_mean(name, list(names))
                problems.append(
                    ParameterProblem(
                        name,
                        f"Validation failed for field {name!r}. Failure reason: the flow has no parameter {name!r}",
                        unknown_name=True,
                        hint=guess or (f"its parameters: {', '.join(names)}" if names else "the flow takes none"),
                    )
                )
    if not partial:
        for name in schema.get("required") or []:
            if name not in parameters:
                problems.append(
                    ParameterProblem("", f"Validation failed. Failure reason: {name!r} is a required property")
                )
    concrete = {k: v for k, v in parameters.items() if k in names and not known_later(v)}
    fast = _fast_check(key, schema)
    if fast is not None and fast(concrete):
        return problems  # valid: jsonschema (imported only to explain a "no") has nothing to say
    for error in _validator(key, schema).iter_errors(concrete):
        path = ".".join(str(p) for p in error.absolute_path)
        if not path:
            message = f"Validation failed. Failure reason: {error.message}"
        else:
            message = f"Validation failed for field {path!r}. Failure reason: {error.message}"
        problems.append(ParameterProblem(path, message))
    return problems


def schema_key(schema: Mapping[str, Any]) -> str:
    """What the compiled checks are kept by: the schema's canonical JSON text."""
    return json.dumps(schema, sort_keys=True, default=str)


def enforce(deployment: str, schema: Any, parameters: Mapping[str, Any]) -> None:
    """Refuse a run whose parameters (deployment defaults merged with the run's) do not fit."""
    if not isinstance(schema, Mapping):
        return  # no schema stored (the flow's file was not found when planned): nothing to check
    problems = check(schema, parameters)
    if problems:
        hints = [p.hint for p in problems if p.hint]
        raise ParameterError(
            f"deployment {deployment}: " + "; ".join(p.message for p in problems),
            hint="; ".join([*hints, f"the flow takes ({signature_text(schema)})"]),
        )


def signature_text(schema: Mapping[str, Any]) -> str:
    """`name: type` for each parameter, for hints."""
    out = []
    props = schema.get("properties") or {}
    for name, prop in sorted(props.items(), key=lambda kv: kv[1].get("position", 0) if isinstance(kv[1], Mapping) else 0):
        kind = _type_text(prop) if isinstance(prop, Mapping) else None
        out.append(f"{name}: {kind}" if kind else name)
    return ", ".join(out)


def _type_text(prop: Mapping[str, Any]) -> str | None:
    if isinstance(prop.get("type"), str):
        return str(prop["type"])
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    members = prop.get("anyOf")
    if isinstance(members, list):
        parts = [_type_text(m) for m in members if isinstance(m, Mapping)]
        return " | ".join(p for p in parts if p) or None
    return None


def accepts_any_name(schema: Mapping[str, Any]) -> bool:
    """The flow takes `**kwargs`: Prefect's schema shows it as the last property, an object with
    an empty default. (A last `dict` parameter defaulting to `{}` looks the same; it is given the
    benefit of the doubt.)"""
    props = schema.get("properties") or {}
    if not props:
        return False
    last = max(props.values(), key=lambda p: p.get("position", -1) if isinstance(p, Mapping) else -1)
    return isinstance(last, Mapping) and last.get("type") == "object" and last.get("default") == {}


_NAMES: dict[str, tuple[dict[str, None], bool]] = {}


def _names(key: str, schema: Mapping[str, Any]) -> tuple[dict[str, None], bool]:
    """The schema's parameter names (in order) and `accepts_any_name`, once per schema."""
    found = _NAMES.get(key)
    if found is None:
        found = _NAMES[key] = dict.fromkeys(schema.get("properties") or {}), accepts_any_name(schema)
    return found


_VALIDATORS: dict[str, Any] = {}
_FAST_CHECKS: dict[str, Any] = {}
# Keywords the validator below does not assert: Prefect's `position`, `format` (no format checker),
# and Prefect's older `definitions` (only a place `$ref`s point into).
_NOT_ASSERTED = frozenset({"position", "format", "definitions"})


def _validator(key: str, schema: Mapping[str, Any]) -> Any:
    from jsonschema import Draft202012Validator

    if key not in _VALIDATORS:  # deployments of one flow share one validator
        _VALIDATORS[key] = Draft202012Validator(_prepared(schema))
    return _VALIDATORS[key]


def _fast_check(key: str, schema: Mapping[str, Any]) -> Any:
    """The prepared schema compiled into a yes/no check (buildsys.schemacheck), once per schema;
    None when it uses a keyword the check does not implement (jsonschema alone then)."""
    if key not in _FAST_CHECKS:
        from buildsys.schemacheck import compile_check

        _FAST_CHECKS[key] = compile_check(_prepared(schema), ignore=_NOT_ASSERTED)
    return _FAST_CHECKS[key]


def _prepared(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Prefect's preprocessing: an optional simple-typed parameter without a default also accepts
    null. `required` is checked separately (templated values count as given)."""
    out = copy.deepcopy(dict(schema))
    required = set(out.get("required") or [])
    for name, prop in (out.get("properties") or {}).items():
        if (
            isinstance(prop, dict)
            and name not in required
            and "type" in prop
            and prop["type"] != "null"
            and "default" not in prop
        ):
            prop["anyOf"] = [{"type": prop.pop("type")}, {"type": "null"}]
    out.pop("required", None)
    return out


