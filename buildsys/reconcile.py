"""Reading the store for a plan, and applying a plan: validated first, then one guarded transaction.

A plan is applied exactly as made: its changes become store Changes (pools before deployments,
deletions last), written in one `apply` call whose expected serial is the plan's serial, so a store
that moved since the plan was made refuses it and nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildsys.errors import BuildsysError, ConflictError, Diagnostic
from buildsys.plan import Plan, PlanError
from buildsys.preflight import validate
from buildsys.store.base import Change, Resource, StateStore


class ApplyError(BuildsysError):
    """A plan cannot be applied; carries every problem found before the first write."""

    def __init__(self, problems: Sequence[Diagnostic]) -> None:
        self.problems = list(problems)
        first = self.problems[0]
        super().__init__(first.message, location=first.location, path=first.path, hint=first.hint)

    def diagnostics(self) -> list[Diagnostic]:
        return list(self.problems)


@dataclass(frozen=True)
class ApplyResult:
    serial: int  # the store serial after the apply
    applied: int  # number of changes written


def snapshot(store: StateStore, *, attempts: int = 5) -> tuple[int, list[Resource]]:
    """The store's serial and resources as one consistent view (re-read if an apply slipped in)."""
    for _ in range(attempts):
        before = store.serial()
        resources = store.list_resources()
        if store.serial() == before:
            return before, resources
    raise ConflictError(
        "the state store keeps changing while it is read",
        hint="another apply is running; try again when it is done",
    )


def to_changes(plan: Plan) -> list[Change]:
    """The store writes of a plan, in its order (pools before deployments, deletions last)."""
    out = []
    for c in plan.changes:
        spec = None if c.action == "delete" else dict(c.spec or {})
        out.append(Change(c.action, c.kind, c.name, spec, c.owner, dict(c.source) if c.source else None))
    return out


def apply_plan(store: StateStore, plan: Plan) -> ApplyResult:
    """Apply exactly this plan, or nothing (ApplyError / ConflictError say why)."""
    serial, actual = snapshot(store)
    if serial != plan.serial:
        raise stale(plan, serial)
    problems = validate(plan, actual)
    if problems:
        raise ApplyError(problems)
    if not plan.changes:
        return ApplyResult(serial, 0)
    try:
        new = store.apply(to_changes(plan), expected_serial=plan.serial)
    except ConflictError as exc:
        now = store.serial()
        if now != plan.serial:
            raise stale(plan, now) from None
        raise ConflictError(
            f"the store refused the plan: {exc.message}", hint="make a new plan and apply it"
        ) from None
    return ApplyResult(new, len(plan.changes))


def stale(plan: Plan, serial: int) -> ConflictError:
    return ConflictError(
        f"the state store changed since this plan was made (plan serial {plan.serial}, store serial {serial}); "
        "nothing was applied",
        hint="run `buildsys plan` again and review the new plan",
    )


def read_plan_file(path: Path) -> Plan:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"no plan file at {path}", hint="make one with `buildsys plan -o PLAN`") from None
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise PlanError(f"{path} is not a plan file (not JSON: {exc})") from None
    return Plan.from_dict(data)


def write_plan_file(plan: Plan, path: Path) -> None:
    """Write atomically, so a reader never sees half a plan."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(plan.to_json(), encoding="utf-8")
    tmp.replace(path)
