"""References generated from `schemas/` (project keys, pool variables), so no copy can drift from them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

# (heading, where in the file, $defs name or None for the top level)
_PROJECT_SECTIONS: tuple[tuple[str, str, str | None], ...] = (
    ("Top level", "the top of `prefect.yaml`", None),
    ("A deployment", "each item of `deployments:`", "deployment"),
    ("A deployment's `work_pool:`", "`deployments[].work_pool`", "work_pool_ref"),
    ("A schedule", "each item of `deployments[].schedules`", "schedule"),
    ("A concurrency limit", "`deployments[].concurrency_limit` in its mapping form", "concurrency_limit"),
    ("A trigger", "each item of `deployments[].triggers`", "trigger"),
    ("A work pool (buildsys)", "each item of `work_pools:`", "pool"),
    ("A queue of a pool (buildsys)", "each item of `work_pools[].queues`", "queue"),
    ("buildsys settings", "`buildsys:`", "buildsys"),
)

_STEP_KEYS = (
    ("id", "string", "Names the step's outputs: `{{ id.key }}`."),
    ("requires", "string | array", "Packages the step needs; reported, never installed unless `--install-requires`."),
    ("needs", "array of string", "buildsys: ids of steps to run first; replaces the implicit edge to the step before."),
    ("inputs", "array of string", "buildsys: globs of the files the step reads (relative to the project root), for the cache."),
)


def _schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(files("buildsys.schemas").joinpath(name).read_text(encoding="utf-8"))
    return data


def type_name(prop: Mapping[str, Any]) -> str:
    """A JSON Schema property's type as people read it: `string | null`, `array of string`, `"a" | "b"`."""
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    kind = prop.get("type")
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if isinstance(kind, str):
        if kind == "array" and isinstance(prop.get("items"), Mapping) and "type" in prop["items"]:
            return f"array of {type_name(prop['items'])}"
        return kind
    for key in ("anyOf", "oneOf"):
        if isinstance(prop.get(key), list):
            return " | ".join(type_name(p) for p in prop[key] if isinstance(p, Mapping))
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    return "any"


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(properties: Mapping[str, Any], defs: Mapping[str, Any], required: set[str]) -> list[str]:
    rows = ["| key | type | what |", "|---|---|---|"]
    for key, prop in properties.items():
        if not isinstance(prop, Mapping):
            continue
        target = prop
        ref = prop.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = {**defs.get(ref.rsplit("/", 1)[-1], {}), **{k: v for k, v in prop.items() if k != "$ref"}}
        description = str(target.get("description", ""))
        if target.get("deprecated"):
            description = f"(deprecated) {description}"
        if key in required:
            description = f"**required.** {description}"
        rows.append(f"| `{key}` | {_cell(type_name(prop))} | {_cell(description)} |")
    return rows


def project_keys() -> str:
    """Every key of the project file, section by section, from `schemas/project.schema.json`."""
    schema = _schema("project.schema.json")
    defs: Mapping[str, Any] = schema.get("$defs", {})
    lines = [
        "# Project file keys",
        "",
        "Every key of `prefect.yaml`, generated from the JSON Schema that `buildsys validate` checks against. "
        "It is `schemas/project.schema.json`; keys marked buildsys are additions, the rest are Prefect's.",
        "",
        "Editors that speak the YAML language server validate and complete the file with the first line "
        "`# yaml-language-server: $schema=<path to>/schemas/project.schema.json`. The schema accepts and "
        "refuses what `buildsys validate` does (a test holds them together): it checks the inputs of the "
        "built-in steps, and it allows unknown keys where validate only warns about them (Prefect ignores "
        "them), so the editor is silent where `validate` says `warning: unknown key` (an error under "
        "`--strict`).",
    ]
    for heading, where, def_name in _PROJECT_SECTIONS:
        node: Mapping[str, Any] = schema if def_name is None else defs.get(def_name, {})
        lines += ["", f"## {heading}", "", f"In {where}. {node.get('description', '')}".rstrip(), ""]
        lines += _table(node.get("properties", {}), defs, set(node.get("required", ())))
    lines += ["", "## Keys every step accepts", "",
              "Besides its own inputs (`buildsys steps show NAME` lists them):", "",
              "| key | type | what |", "|---|---|---|"]
    lines += [f"| `{key}` | {kind} | {what} |" for key, kind, what in _STEP_KEYS]
    return "\n".join(lines) + "\n"


def pool_variables() -> str:
    """The job variables of each registered pool type, from its default base job template."""
    lines = [
        "# Pool variables",
        "",
        "The job variables of each work pool type, generated from its default base job template. "
        "They are what `job_variables:` of a pool or deployment and `buildsys run --job-variable K=V` set; "
        "the templates are in `schemas/job-templates/`. A pool with its own `base_job_template` has its own variables: "
        "`buildsys pool show NAME` lists them.",
    ]
    from buildsys.infra import pool_types
    from buildsys.pools import default_job_template

    for pool_type in pool_types():
        template = default_job_template(pool_type)
        variables: Mapping[str, Any] = template.get("variables", {})
        lines += ["", f"## {pool_type}", "", str(variables.get("description", "")), "",
                  "| variable | type | default | what |", "|---|---|---|---|"]
        for key, prop in variables.get("properties", {}).items():
            if not isinstance(prop, Mapping):
                continue
            default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
            lines.append(f"| `{key}` | {_cell(type_name(prop))} | {_cell(default)} | {_cell(prop.get('description', ''))} |")
    return "\n".join(lines) + "\n"
