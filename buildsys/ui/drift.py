"""Desired (the project) against actual (the store) for one resource, as `plan` computes it: the
UI of `buildsys ui` plans its project (reconcile.plan_project, the same call `buildsys plan`
makes, with the build outputs the cache holds) and shows that resource's part of the plan."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from buildsys.errors import BuildsysError
from buildsys.plan import ABSENT, EMPTY_DEFAULTS, FieldChange, Plan, ResourceChange
from buildsys.plan_view import masked_change, render_change, show
from buildsys.store.base import Resource, StateStore

PROJECT_FILE = "prefect.yaml"


@dataclass(frozen=True)
class Row:
    """One differing field: the store's value and the project's, as `plan` shows them."""

    path: str
    actual: str
    desired: str


@dataclass(frozen=True)
class Drift:
    """What the project's plan says about one resource. `status`: "in sync", "differs", "not
    declared" (owned by this project but no longer in it), "other project", "no project", "error"."""

    status: str
    rows: tuple[Row, ...] = ()
    text: str = ""  # the resource's part of the plan, as `plan` prints it
    note: str = ""


def drift(root: Path | None, store: StateStore, resource: Resource) -> Drift:
    if root is None or not (root / PROJECT_FILE).is_file():
        return Drift("no project")
    try:
        plan = _plan(root, store)
    except BuildsysError as exc:
        return Drift("error", note=exc.render())
    return judge(plan, resource)


def _plan(root: Path, store: StateStore) -> Plan:
    from buildsys.project import load_project
    from buildsys.reconcile import cached_outputs, plan_project

    project_file = root / PROJECT_FILE
    project = load_project(project_file)
    return plan_project(project_file, store, outputs=cached_outputs, project=project, env=os.environ)


def judge(plan: Plan, resource: Resource) -> Drift:
    """The resource's place in a plan of the project."""
    address = f"{resource.kind} {resource.name}"
    change = next((c for c in plan.changes if c.address == address), None)
    if change is not None and change.action == "update":
        change = masked_change(change, plan.sensitive)
        text = "\n".join(render_change(change, lambda s, _c: s)).rstrip("\n")
        return Drift("differs", tuple(_row(change, f) for f in change.fields), text, _owner_note(change))
    if address in plan.orphans or (change is not None and change.action == "delete"):
        return Drift("not declared", note=f"project {plan.owner!r} made it but no longer declares it")
    if resource.owner != plan.owner:
        return Drift("other project", note=f"owned by {resource.owner!r}" if resource.owner else "made outside buildsys")
    return Drift("in sync")


def _row(change: ResourceChange, f: FieldChange) -> Row:
    under = f"{change.name}." if change.kind == "variable" else ""
    key = under + f.path
    return Row(
        f.path,
        "(absent)" if f.old is ABSENT else show(EMPTY_DEFAULTS.get(f.path) if f.old is None else f.old, key),
        "(removed)" if f.new is ABSENT else show(f.new, key),
    )


def _owner_note(change: ResourceChange) -> str:
    if change.previous_owner:
        return f"applying makes {change.owner!r} its owner instead of {change.previous_owner!r}"
    return ""
