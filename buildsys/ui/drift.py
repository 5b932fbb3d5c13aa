"""Desired (the project) against actual (the store) for one resource, as `plan` computes it: the
UI of `buildsys ui` plans its project (reconcile.plan_project, the same call `buildsys plan`
makes, with the build outputs the cache holds) and shows that resource's part of the plan.

A server has no project: there the page compares the resource with what the last apply from a
project wrote to it (the store's apply history: `since_apply`), which is what shows an edit made
by hand through the UI, the API or the CLI since."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildsys.errors import BuildsysError
from buildsys.plan import ABSENT, EMPTY_DEFAULTS, FieldChange, Plan, ResourceChange
from buildsys.plan_view import masked_change, render_change, show
from buildsys.store.base import AppliedChanges, ApplyHistory, Resource, StateStore

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


WRITES_READ = 50  # the newest kept applies of one resource that are read for `since_apply`


@dataclass(frozen=True)
class Edit:
    """A write of the resource that no plan made (a pool edited in the UI, a pause, an API call)."""

    serial: int
    at: float
    paths: tuple[str, ...]  # the fields it changed; empty when the apply did not keep its specs


@dataclass(frozen=True)
class SinceApply:
    """The resource against what the last apply from a project wrote to it. `status`: "unchanged",
    "changed", "no specs" (that apply was too large to keep them), "no record" (no apply from a
    project is kept for it), "no history" (the store keeps no apply history)."""

    status: str
    serial: int = 0
    at: float = 0.0
    source: Mapping[str, Any] | None = None
    owner: str | None = None
    rows: tuple[Row, ...] = ()  # actual: as stored now; desired: as that apply wrote it
    edits: tuple[Edit, ...] = ()  # writes since, newest first


def since_apply(store: StateStore, resource: Resource) -> SinceApply:
    from buildsys.ui.history import fields

    if not isinstance(store, ApplyHistory):
        return SinceApply("no history")
    edits: list[Edit] = []
    for applied, change in store.list_writes_of(resource.kind, resource.name, WRITES_READ):
        if not change.get("planned", True):  # records from before `planned` was kept count as plans
            edits.append(Edit(applied.serial, applied.applied_at,
                              tuple(f.path for f in fields(change.get("before"), change.get("after")))))
            continue
        found = _found(applied, change, tuple(edits))
        after = change.get("after")
        if not isinstance(after, dict):
            return SinceApply("no specs", **found)
        rows = tuple(_since_row(resource, f) for f in fields(after, dict(resource.spec)))
        return SinceApply("changed" if rows else "unchanged", rows=rows, **found)
    return SinceApply("no record", edits=tuple(edits))


def _found(applied: AppliedChanges, change: Mapping[str, Any], edits: tuple[Edit, ...]) -> dict[str, Any]:
    source = change.get("source")
    return {"serial": applied.serial, "at": applied.applied_at, "owner": change.get("owner"),
            "source": source if isinstance(source, Mapping) else None, "edits": edits}


def _since_row(resource: Resource, f: FieldChange) -> Row:
    key = f"{resource.name}.{f.path}" if resource.kind == "variable" else f.path
    applied = "(absent)" if f.old is ABSENT else show(f.old, key)
    return Row(f.path, actual="(removed)" if f.new is ABSENT else show(f.new, key), desired=applied)
