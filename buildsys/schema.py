"""Validation of a located document against the project JSON Schema, as located diagnostics.

jsonschema's errors are turned into messages for people: unknown keys become warnings with a
did-you-mean (errors under strict, or where the schema says `x-unknown-keys: error`), numbers where
strings are expected get a "quote it" hint, and the schema's own `x-message` wins where it has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from buildsys.errors import Diagnostic, distinct
from buildsys.model import StepSpec
from buildsys.templating import placeholders

if TYPE_CHECKING:
    from buildsys.step import StepDef  # the loader of a plan resolves no step: not imported for it
    from buildsys.yamlsource import Located

Path_ = tuple[str | int, ...]
SECTION_KEYS = ("build", "push", "pull")

_VALIDATOR: Any = None
_CHECK: list[Any] = []  # [the compiled yes/no check of the project schema, or None]


def project_schema() -> dict[str, Any]:
    import json

    from buildsys.shipped import schema_text

    data: dict[str, Any] = json.loads(schema_text("project.schema.json"))
    return data


def checking_schema() -> dict[str, Any]:
    """The schema the loader validates with. The shipped one is what an editor reads and accepts
    exactly what `validate` accepts: it allows unknown keys where they are only warnings (marked
    `x-unknown-keys: warning`), and checks built-in steps' inputs. Here unknown keys are refused
    again, to be reported as warnings (errors under --strict), and step inputs are left to
    `check_inputs`, which knows plugin steps and templates."""
    schema = project_schema()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("x-unknown-keys") == "warning":
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    defs = schema.get("$defs", {})
    for key in [k for k in defs if k.startswith("inputs_of_")]:
        del defs[key]
    defs.get("step", {}).pop("properties", None)
    return schema


def _validator() -> Any:
    global _VALIDATOR
    if _VALIDATOR is None:
        from jsonschema import Draft202012Validator

        _VALIDATOR = Draft202012Validator(checking_schema())
    return _VALIDATOR


def _fast_check() -> Any:
    """The schema the loader validates with (checking_schema) compiled into a yes/no check
    (buildsys.schemacheck), once per process."""
    if not _CHECK:
        from buildsys.schemacheck import compile_check

        _CHECK.append(compile_check(checking_schema()))
    return _CHECK[0]


def schema_problems(doc: Located, strict: bool) -> list[Diagnostic]:
    """Every schema problem of the document, located. A valid document (nearly every run) is
    recognised by the compiled check alone; jsonschema is imported and run only to explain a
    document the check rejects, so the messages are jsonschema's, as they always were."""
    if doc.value is None:
        return []
    try:
        check = _fast_check()
        if check is not None and check(doc.value):
            return []
        validator = _validator()
    except (FileNotFoundError, ModuleNotFoundError):  # schemas not installed: structural checks only
        return []
    out: list[Diagnostic] = []
    for error in validator.iter_errors(doc.value):
        out.extend(_diagnose(error, doc, strict))
    return distinct(out)


def _diagnose(error: Any, doc: Located, strict: bool) -> list[Diagnostic]:
    from buildsys.suggest import did_you_mean

    path: Path_ = tuple(error.absolute_path)
    if error.validator in ("anyOf", "oneOf") and error.context:
        # Report the alternative that got furthest into the value: the most specific problem.
        best = max(error.context, key=lambda e: (len(e.absolute_path), -len(e.schema_path)))
        if len(best.absolute_path) > len(path) or best.validator == "additionalProperties":
            return _diagnose(best, doc, strict)
    where = doc.loc(path)
    shown = describe_path(doc.value, path)
    if error.validator == "additionalProperties":
        known = sorted((error.schema.get("properties") or {}).keys())
        instance = error.instance if isinstance(error.instance, dict) else {}
        extras = [k for k in instance if k not in known and not _pattern_allows(error.schema, k)]
        severity = "error" if strict or error.schema.get("x-unknown-keys") == "error" else "warning"
        out = []
        for key in extras:
            key_path = (*path, key)
            out.append(
                Diagnostic(
                    severity,
                    f"unknown key {key!r}" + (" (ignored)" if severity == "warning" else ""),
                    doc.loc(key_path),
                    describe_path(doc.value, key_path),
                    did_you_mean(str(key), known) or f"known keys here: {', '.join(known)}",
                )
            )
        return out
    hint = None
    message = error.message
    custom = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    if error.validator == "type" and error.instance is None and len(path) >= 3 and path[-3] in SECTION_KEYS:
        name = path[-1]
        return [
            Diagnostic(
                "error",
                f"step {name!r} has no inputs mapping (Prefect crashes on this)",
                where,
                shown,
                f"write `- {name}: {{}}` for a step without inputs",
            )
        ]
    if error.validator == "not" and path and path[-1] in ("schedule", "schedules"):
        return [
            Diagnostic(
                "error",
                "both `schedule` and `schedules` are set",
                where,
                shown,
                "move the `schedule` item into the `schedules` list (`schedule` is deprecated)",
            )
        ]
    if custom:
        return [Diagnostic("error", str(custom), where, shown, None)]
    if error.validator == "not":
        message = f"{_short(error.instance)} is not allowed here"
    if error.validator == "type":
        expected = error.validator_value
        expected_list = expected if isinstance(expected, list) else [expected]
        got = error.instance
        if "string" in expected_list and isinstance(got, bool | int | float):
            hint = f'quote it: "{_yaml_scalar(got)}" (YAML reads {_yaml_scalar(got)} as {_article(_type_name(got))})'
        message = f"expected {' or '.join(expected_list)}, got {_type_name(got)}" + (
            f" {_short(got)}" if got is not None else ""
        )
    elif error.validator == "required":
        message = error.message.replace("is a required property", "is required")
    elif error.validator == "enum":
        message = f"{_short(error.instance)} is not one of {', '.join(map(repr, error.validator_value))}"
        guess = did_you_mean(str(error.instance), [str(v) for v in error.validator_value])
        hint = guess
    elif error.validator in ("maxProperties", "minProperties") and _is_step_path(path):
        message = "a step must be a mapping with exactly one key: the step's name"
        hint = "indent the step's inputs under its name"
    return [Diagnostic("error", message, where, shown, hint)]


def _pattern_allows(schema: Mapping[str, Any], key: str) -> bool:
    import re

    return any(re.search(p, key) for p in (schema.get("patternProperties") or {}))


def _is_step_path(path: Path_) -> bool:
    return len(path) >= 2 and path[-2] in ("build", "push", "pull")


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _article(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _yaml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_path(data: Any, path: Path_, prefix: str = "") -> str:
    """The document path with list items named by their name or step id: deployments[etl].build[0].
    `prefix`: the description of where `data` itself is (`path` is then below it)."""
    out = prefix
    cur = data
    for part in path:
        if isinstance(part, int):
            label = str(part)
            item = cur[part] if isinstance(cur, list) and part < len(cur) else None
            if isinstance(item, dict):
                if isinstance(item.get("name"), str):
                    label = item["name"]
                elif len(item) == 1:
                    (step_name, body), = item.items()
                    sid = body.get("id") if isinstance(body, dict) else None
                    label = f"{part}: {sid or str(step_name).rsplit('.', 1)[-1]}"
            out += f"[{label}]"
            cur = item
        else:
            out += f".{part}" if out else str(part)
            cur = cur.get(part) if isinstance(cur, dict) else None
    return out or "(top level)"


def check_inputs(spec: StepSpec, stepdef: StepDef) -> list[Diagnostic]:
    """Validate a step's (un-rendered) inputs against the step's schema; located, with did-you-mean."""
    check = _input_check(stepdef)
    if check is not None and check(dict(spec.inputs)):
        return []  # valid: nothing to explain (jsonschema would find nothing)
    from jsonschema import Draft202012Validator

    from buildsys.suggest import did_you_mean

    schema = {k: v for k, v in stepdef.schema.items() if not k.startswith("x-")}
    out: list[Diagnostic] = []
    for err in Draft202012Validator(schema).iter_errors(dict(spec.inputs)):
        if err.validator == "additionalProperties":
            known = sorted((err.schema.get("properties") or {}).keys())
            extras = [k for k in (err.instance or {}) if k not in known]
            for k in extras:
                out.append(
                    Diagnostic(
                        "error",
                        f"step {spec.name} has no input {k!r}",
                        spec.input_locations.get(str(k), spec.location),
                        f"{spec.path}.{k}",
                        did_you_mean(k, known) or f"its inputs are: {', '.join(known)}",
                    )
                )
            continue
        where = ".".join(str(p) for p in err.absolute_path)
        hint = None
        if err.validator == "required":
            hint = f"`buildsys steps show {stepdef.name}` lists its inputs"
        if any(p.kind != "output" for p in placeholders(err.instance)) or (
            isinstance(err.instance, str) and "{{" in err.instance
        ):
            continue  # a template: checked when rendered
        key = str(err.absolute_path[0]) if err.absolute_path else None
        custom = err.schema.get("x-message") if isinstance(err.schema, Mapping) else None
        message = f"{where}: {custom}, got {_short(err.instance)}" if custom and where else str(err.message)
        out.append(
            Diagnostic(
                "error",
                f"step {spec.name}: {message}",
                spec.input_locations.get(key, spec.location) if key else spec.location,
                f"{spec.path}.{where}" if where else spec.path,
                hint,
            )
        )
    return out


_INPUT_CHECKS: dict[int, tuple[object, Any]] = {}  # id(step schema) -> (the schema, its check)


def _input_check(stepdef: StepDef) -> Any:
    """A step's input schema compiled into a yes/no check, once per schema object."""
    schema = stepdef.schema
    known = _INPUT_CHECKS.get(id(schema))
    if known is None or known[0] is not schema:
        from buildsys.schemacheck import compile_check

        known = _INPUT_CHECKS[id(schema)] = (schema, compile_check(schema))
    return known[1]
