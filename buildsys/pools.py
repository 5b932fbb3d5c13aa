"""Work-pool base job templates and the job configuration a run gets from them (Prefect §6.2–§6.7).

A template is ``{"job_configuration": {...}, "variables": <JSON Schema>}``. A run's job
configuration is the template's ``job_configuration`` rendered with the variable defaults, then the
deployment's ``job_variables``, then the run's own overrides (``env`` merges key by key). Pure
functions over JSON values; a type's default template comes from the registered pool type
(``buildsys.infra``; the built-in ones ship in ``buildsys.schemas/job-templates``).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any

from buildsys.errors import BuildsysError, Diagnostic
from buildsys.templating import PLACEHOLDER, strings  # the one placeholder syntax

__all__ = [
    "JobVariableError",
    "base_job_template",
    "check_job_variables",
    "check_run_job_variables",
    "default_job_template",
    "expand_dotted",
    "job_configuration",
    "merge_job_variables",
    "parse_job_variable",
    "placeholders",
    "render_job_template",
    "validate_template",
]

_MISSING = object()


class JobVariableError(BuildsysError):
    """A job variable (or a pool template) is invalid: wrong type, undeclared placeholder, bad shape."""


# --- templates ---------------------------------------------------------------------------------


def default_job_template(pool_type: str) -> dict[str, Any]:
    """The pool type's default base job template (a fresh copy), from the registered type."""
    from buildsys.infra import unknown_pool_type

    problem = unknown_pool_type(pool_type)
    if problem is not None:
        raise JobVariableError(problem[0], hint=problem[1])
    return copy.deepcopy(_load_default(pool_type))


def pool_template(spec: Mapping[str, Any], *, default_type: str = "process") -> dict[str, Any]:
    """The job template a stored pool gives its runs: the one it stores, else its type's default
    (a fresh copy either way). The one rule for the worker, `run`, `pool preview` and the UI."""
    stored = spec.get("base_job_template")
    if isinstance(stored, Mapping) and stored:
        return copy.deepcopy(dict(stored))
    return default_job_template(str(spec.get("type") or default_type))


@cache
def _load_default(pool_type: str) -> dict[str, Any]:
    from buildsys.infra import pool_type as registered

    return registered(pool_type).default_job_template()


def base_job_template(
    type: str,
    job_variables: Mapping[str, Any] | None = None,
    override: Mapping[str, Any] | None = None,
    *,
    warnings: list[Diagnostic] | None = None,
) -> dict[str, Any]:
    """A pool's template: ``override`` (a whole template, validated) or the type's default, with the
    pool's ``job_variables`` applied as new defaults of the template's variables."""
    if override:
        template = copy.deepcopy(dict(override))
        validate_template(template)
    else:
        template = default_job_template(type)
    if job_variables:
        variables = expand_dotted(job_variables)
        for problem in check_job_variables(template, variables, where="work pool job_variables"):
            if warnings is not None:
                warnings.append(problem)
        properties = template["variables"].setdefault("properties", {})
        for name, value in variables.items():
            if name in properties:
                properties[name] = {**properties[name], "default": value}
    return template


def validate_template(template: Mapping[str, Any]) -> None:
    """Prefect's rules: both keys present, every placeholder declared, defaults valid."""
    if not template:
        return
    missing = [k for k in ("job_configuration", "variables") if k not in template]
    if missing:
        raise JobVariableError(
            f"base job template is missing {' and '.join(repr(k) for k in missing)}",
            hint="a template is {job_configuration: {...}, variables: {type: object, properties: {...}}}",
        )
    if not isinstance(template["job_configuration"], Mapping) or not isinstance(template["variables"], Mapping):
        raise JobVariableError("base job template: 'job_configuration' and 'variables' must be mappings")
    properties = template["variables"].get("properties", {})
    if not isinstance(properties, Mapping):
        raise JobVariableError("base job template: 'variables.properties' must be a mapping")
    undeclared = sorted(
        {name for name in placeholders(template["job_configuration"]) if not _is_special(name)} - set(properties)
    )
    if undeclared:
        raise JobVariableError(
            f"base job template uses undeclared variable(s): {', '.join(undeclared)}",
            hint="declare each one under variables.properties (with a type, a default and a description)",
        )
    defaults = {k: v["default"] for k, v in properties.items() if isinstance(v, Mapping) and "default" in v}
    for problem in check_job_variables(template, defaults, where="base job template default"):
        if problem.is_error:
            raise JobVariableError(problem.message, path=problem.path, hint=problem.hint)


def placeholders(value: Any) -> Iterator[str]:
    """Every placeholder name in a JSON value (strings inside dicts and lists)."""
    for text in strings(value):
        for match in PLACEHOLDER.finditer(text):
            yield match.group(1)


def _is_special(name: str) -> bool:
    return name.startswith(("$", "prefect.", "ctx."))


# --- job variables -------------------------------------------------------------------------------


def parse_job_variable(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line; VALUE is JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise JobVariableError(f"invalid job variable {text!r}", hint="write KEY=VALUE, e.g. env.LOG_LEVEL=DEBUG")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def expand_dotted(job_variables: Mapping[str, Any]) -> dict[str, Any]:
    """``{"env.FOO": "1"}`` → ``{"env": {"FOO": "1"}}``; the nested form wins on conflicts."""
    nested: dict[str, Any] = {}
    dotted: dict[str, Any] = {}
    for key, value in job_variables.items():
        if "." in key:
            head, _, rest = key.partition(".")
            target = dotted.setdefault(head, {})
            if isinstance(target, dict):
                _set_path(target, rest.split("."), value)
        else:
            nested[key] = value
    return _deep_merge(dotted, nested)


def _set_path(target: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[parts[-1]] = value


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# What a single run may not override: the program a job runs is part of the deployment (reviewed
# in git, applied with plan/apply), not of a request to run it. Unlike Prefect, whose runs may
# override any job variable.
NOT_PER_RUN = ("command",)


def check_run_job_variables(run_job_variables: Mapping[str, Any] | None) -> None:
    """Refuse run overrides of what only a deployment or pool may set (see NOT_PER_RUN)."""
    fixed = sorted(k for k in expand_dotted(run_job_variables or {}) if k in NOT_PER_RUN)
    if fixed:
        raise JobVariableError(
            f"a run may not override {', '.join(repr(k) for k in fixed)}: it is set by the deployment or pool",
            path=f"job_variables.{fixed[0]}",
            hint="set it in the deployment's job_variables and apply (buildsys help security)",
        )


def merge_job_variables(
    deployment_job_variables: Mapping[str, Any] | None, run_job_variables: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Deployment job variables overridden by the run's: ``env`` key by key, the rest wholesale."""
    check_run_job_variables(run_job_variables)
    merged = expand_dotted(deployment_job_variables or {})
    for key, value in expand_dotted(run_job_variables or {}).items():
        if key == "env" and isinstance(value, Mapping) and isinstance(merged.get("env"), Mapping):
            merged["env"] = {**merged["env"], **value}
        else:
            merged[key] = value
    return merged


def check_job_variables(
    template: Mapping[str, Any], job_variables: Mapping[str, Any], *, where: str = "job_variables"
) -> list[Diagnostic]:
    """Unknown variables → warnings with a did-you-mean; values of the wrong type → errors."""
    schema = template.get("variables") or {}
    properties: Mapping[str, Any] = schema.get("properties", {}) if isinstance(schema, Mapping) else {}
    problems: list[Diagnostic] = []
    for name in job_variables:
        if name not in properties:
            problems.append(
                Diagnostic(
                    "warning",
                    f"unknown job variable {name!r}: the pool's template does not use it",
                    path=f"{where}.{name}",
                    hint=_unknown_hint(name, properties),
                )
            )
    known = {k: v for k, v in job_variables.items() if k in properties and v is not None}
    if not known:
        return problems
    problems.extend(_type_errors(schema, known, where))
    return problems


def _type_errors(schema: Mapping[str, Any], values: Mapping[str, Any], where: str) -> list[Diagnostic]:
    check_schema = {k: v for k, v in schema.items() if k != "required"}
    from buildsys.schemacheck import compile_check

    # the yes/no check first: jsonschema (slow to import) only explains values it refuses
    fast = compile_check(check_schema, ignore=_NOT_ASSERTED)
    if fast is not None and fast(dict(values)):
        return []
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(check_schema)
    problems = []
    for error in sorted(validator.iter_errors(dict(values)), key=lambda e: list(map(str, e.absolute_path))):
        parts = [str(p) for p in error.absolute_path]
        name = parts[0] if parts else "?"
        sub = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts[1:])
        problems.append(
            Diagnostic(
                "error",
                f"job variable {name!r}{(' at ' + sub.lstrip('.')) if sub else ''}: {_short(error.message)}",
                path=f"{where}.{name}{sub}",
                hint=_type_hint(schema.get("properties", {}).get(name)),
            )
        )
    return problems


# Keywords the validator above does not assert: `format` (no format checker), Prefect's own
# (`position`, and the block schemas' `block_type_slug`, `secret_fields`, `block_schema_references`),
# and `definitions` (only a place `$ref`s point into). Any other unknown keyword: jsonschema alone.
_NOT_ASSERTED = frozenset(
    {"format", "position", "block_type_slug", "secret_fields", "block_schema_references", "definitions"}
)


def _short(message: str) -> str:
    return message if len(message) <= 200 else message[:197] + "..."


def _type_hint(prop: Any) -> str | None:
    if not isinstance(prop, Mapping):
        return None
    described = prop.get("description")
    kinds = prop.get("type") or [p.get("type") for p in prop.get("anyOf", []) if isinstance(p, Mapping)]
    if isinstance(kinds, str):
        kinds = [kinds]
    shown = [str(k) for k in kinds if k] if isinstance(kinds, list) else []
    text = f"expected {' or '.join(shown)}" if shown else ""
    if "enum" in prop:
        text = "expected one of " + ", ".join(map(str, prop["enum"]))
    if described:
        text = f"{text} ({described})" if text else str(described)
    return text or None


def _unknown_hint(name: str, properties: Mapping[str, Any]) -> str | None:
    suggestion = _did_you_mean(name, properties)
    if suggestion:
        return suggestion.strip("; ")
    return "known variables: " + ", ".join(sorted(properties)) if properties else None


def _did_you_mean(name: str, candidates: Any) -> str:
    import difflib  # only for an unknown name

    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- job configuration ---------------------------------------------------------------------------


def job_configuration(
    template: Mapping[str, Any],
    deployment_job_variables: Mapping[str, Any] | None,
    run_job_variables: Mapping[str, Any] | None,
    *,
    env: Mapping[str, str] | None = None,
    variables: Mapping[str, Any] | None = None,
    warnings: list[Diagnostic] | None = None,
    resolve: bool = True,
) -> dict[str, Any]:
    """The concrete job configuration of one run (Prefect §6.6 steps 1–9).

    With ``resolve`` false, ``{{ $X }}`` and ``{{ prefect.variables.x }}`` are left as written (a
    preview that must not print secrets).

    ``env`` is the worker's environment for ``{{ $X }}``; ``variables`` the store's variables for
    ``{{ prefect.variables.x }}``. Unknown job variables are appended to ``warnings``; a value of the
    wrong type raises :class:`JobVariableError` naming the variable.
    """
    env = os.environ if env is None else env
    job_vars = merge_job_variables(deployment_job_variables, run_job_variables)
    problems = check_job_variables(template, job_vars)
    errors = [p for p in problems if p.is_error]
    if errors:
        first = errors[0]
        raise JobVariableError(
            first.message + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
            path=first.path,
            hint=first.hint,
        )
    if warnings is not None:
        warnings.extend(problems)
    config = copy.deepcopy(dict(template.get("job_configuration") or {}))
    properties = (template.get("variables") or {}).get("properties", {})
    values = {k: v["default"] for k, v in properties.items() if isinstance(v, Mapping) and v.get("default") is not None}
    default_env = values.get("env")
    if isinstance(default_env, Mapping) and default_env and isinstance(config.get("env"), dict):
        config["env"] = {**config["env"], **default_env}
    if isinstance(job_vars.get("env"), Mapping) and isinstance(default_env, Mapping):
        job_vars["env"] = {**default_env, **job_vars["env"]}
    values.update(job_vars)
    if isinstance(config.get("env"), dict) and isinstance(values.get("env"), Mapping):
        config["env"] = {**config["env"], **values["env"]}
    rendered = render_job_template(config, lambda name: values.get(name, _MISSING) if not _is_special(name) else _MISSING)
    resolved = _resolve_specials(rendered, env, variables or {}) if resolve else rendered
    if isinstance(resolved, dict) and isinstance(resolved.get("env"), Mapping):
        resolved["env"] = {str(k): _env_str(v) for k, v in resolved["env"].items() if v is not None}
    return resolved if isinstance(resolved, dict) else {}


def _env_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def render_job_template(value: Any, lookup: Callable[[str], Any]) -> Any:
    """Prefect's default-mode rendering: a whole-string placeholder takes the value's native type;
    a missing whole-string placeholder removes its key (or list item); an embedded one becomes
    ``str(value)``, or ``""`` when missing. Placeholders ``lookup`` does not know are kept when they
    are special (``$ENV``, ``prefect.*``, ``ctx.*``) and resolved later."""
    result = _render(value, lookup)
    return None if result is _MISSING else result


def _render(value: Any, lookup: Callable[[str], Any]) -> Any:
    if isinstance(value, str):
        return _render_str(value, lookup)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            rendered = _render(item, lookup)
            if rendered is not _MISSING:
                out[key] = rendered
        return out
    if isinstance(value, list):
        return [r for r in (_render(item, lookup) for item in value) if r is not _MISSING]
    return value


def _render_str(text: str, lookup: Callable[[str], Any]) -> Any:
    whole = PLACEHOLDER.fullmatch(text.strip())
    if whole:
        name = whole.group(1)
        found = lookup(name)
        if found is not _MISSING:
            return found
        return text if _is_special(name) else _MISSING

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        found = lookup(name)
        if found is _MISSING:
            return match.group(0) if _is_special(name) else ""
        return "" if found is None else str(found)

    return PLACEHOLDER.sub(sub, text)


def _resolve_specials(value: Any, env: Mapping[str, str], variables: Mapping[str, Any]) -> Any:
    """Step 9: ``{{ $X }}`` (always a string, "" when unset) and ``{{ prefect.variables.x }}``
    (native when whole, "" when unknown); ``ctx.*`` is left for the worker."""

    def lookup(name: str) -> Any:
        if name.startswith("$"):
            return env.get(name[1:], "")
        if name.startswith("prefect.variables."):
            return variables.get(name[len("prefect.variables.") :], "")
        if name.startswith("prefect.blocks."):
            raise JobVariableError(
                f"{{{{ {name} }}}}: blocks are not supported in job variables",
                hint="use {{ prefect.variables.NAME }} or {{ $ENV_VAR }} instead",
            )
        return _MISSING

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            whole = PLACEHOLDER.fullmatch(item.strip())
            if whole and whole.group(1).startswith("prefect.variables."):
                return lookup(whole.group(1))
            return PLACEHOLDER.sub(lambda m: _special_text(m, lookup), item)
        if isinstance(item, Mapping):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    return walk(value)


def _special_text(match: re.Match[str], lookup: Callable[[str], Any]) -> str:
    found = lookup(match.group(1))
    if found is _MISSING:
        return match.group(0)
    return found if isinstance(found, str) else json.dumps(found) if isinstance(found, dict | list) else str(found)
