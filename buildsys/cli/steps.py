"""`buildsys steps ls` and `buildsys steps show NAME`: which steps exist and how to call them.

`ls` reads only entry-point metadata (no plugin is imported); `show` imports the one step asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from buildsys.cli import completion
from buildsys.cli.app import App, common_options, pass_app
from buildsys.docs.reference import type_name
from buildsys.model import RESERVED_STEP_KEYS


@click.group("steps")
@common_options
def steps() -> None:
    """List and show the available steps (built-in, plugins)."""


@steps.command("ls")
@common_options
@pass_app
def ls(app: App) -> None:
    """Every registered step: name, the package that provides it, and its aliases."""
    from buildsys import registry

    infos = registry.available()
    for name, claimants in registry.conflicts():
        app.warn(f"step name {name!r} is claimed by more than one plugin: {' and '.join(claimants)}")
    if app.json:
        app.emit_json([{"name": i.name, "aliases": list(i.aliases), "package": i.package, "value": i.value}
                       for i in infos])
        return
    rows = [(i.name, i.package, ", ".join(i.aliases) or "-") for i in infos]
    header = ("NAME", "PACKAGE", "ALIASES")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(2)]
    for row in [header, *rows]:
        app.echo(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}")


@steps.command("show")
@click.argument("name", shell_complete=completion.step_names)
@common_options
@pass_app
def show(app: App, name: str) -> None:
    """A step's inputs (types, defaults), outputs and an example. NAME may be any alias."""
    from buildsys import registry

    stepdef = registry.resolve(name, Path.cwd())
    info = next((i for i in registry.available() if name == i.name or name in i.aliases), None)
    described = describe(stepdef, info.package if info else "project (import path)")
    if app.json:
        app.emit_json(described)
        return
    for line in render(described):
        app.echo(line)


def describe(stepdef: Any, package: str) -> dict[str, Any]:
    """What `show` prints, as plain data (also the --json payload)."""
    schema: Mapping[str, Any] = stepdef.schema
    required = set(schema.get("required", ()))
    inputs = [
        {
            "name": key,
            "type": type_name(prop),
            "required": key in required,
            "default": prop.get("default"),
            "has_default": "default" in prop,
            "description": str(prop.get("description", "")),
        }
        for key, prop in schema.get("properties", {}).items()
        if key not in RESERVED_STEP_KEYS and isinstance(prop, Mapping)
    ]
    declared: Mapping[str, Any] = schema.get("x-outputs", {})
    names = list(stepdef.outputs) or list(declared)
    outputs = [
        {"name": n, "type": type_name(declared.get(n, {})), "description": str(declared.get(n, {}).get("description", ""))}
        for n in names
    ]
    return {
        "name": stepdef.name,
        "aliases": list(stepdef.aliases),
        "package": package,
        "source": stepdef.source,
        "version": stepdef.version,
        "description": stepdef.description,
        "inputs": inputs,
        "open_inputs": schema.get("additionalProperties", True) is not False,
        "outputs": outputs,
        "example": stepdef.example or _schema_example(stepdef.name, schema),
    }


def render(d: Mapping[str, Any]) -> list[str]:
    lines = [f"{d['name']}  ({d['package']}: {d['source']}, version {d['version']})"]
    if d["description"]:
        lines.append(d["description"])
    if d["aliases"]:
        lines += ["", "aliases:", *(f"  {a}" for a in d["aliases"])]
    lines += ["", "inputs:"]
    rows = [(i["name"], i["type"], _requirement(i), i["description"]) for i in d["inputs"]]
    if not rows:
        lines.append("  (none)")
    widths = [max((len(r[c]) for r in rows), default=0) for c in range(3)]
    for row in rows:
        lines.append(("  " + "  ".join(row[c].ljust(widths[c]) for c in range(3)) + f"  {row[3]}").rstrip())
    if d["open_inputs"]:
        lines.append("  (further inputs are accepted)")
    lines.append(f"  reserved on every step: {', '.join(RESERVED_STEP_KEYS)}")
    lines += ["", "outputs:"]
    if not d["outputs"]:
        lines.append("  (not declared)")
    width = max((len(o["name"]) for o in d["outputs"]), default=0)
    for o in d["outputs"]:
        lines.append(f"  {o['name'].ljust(width)}  {o['type']}  {o['description']}".rstrip())
    if d["example"]:
        lines += ["", "example:", *(f"  {line}" for line in str(d["example"]).rstrip("\n").splitlines())]
    return lines


def _requirement(item: Mapping[str, Any]) -> str:
    if item["required"]:
        return "required"
    if item["has_default"]:
        return f"default {json.dumps(item['default'])}"
    return "optional"


def _schema_example(name: str, schema: Mapping[str, Any]) -> str:
    examples = schema.get("examples")
    if not isinstance(examples, list) or not examples or not isinstance(examples[0], Mapping):
        return ""
    import yaml

    return str(yaml.safe_dump([{name: dict(examples[0])}], sort_keys=False, default_flow_style=False))
