"""Applied plans, for the UI's "Plans" page, from two places. Each apply that wrote something
leaves its plan (as `plan -o` saves it) in `.buildsys/plans/` of the project it was applied from,
newest `KEEP` only, in the format `apply PLAN` reads; and a SQL store keeps what every apply wrote
(specs before and after), which is all `buildsys server` has. A store's record becomes a plan again
with plan's own field diff, so both read as `plan` printed them."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildsys.plan import ABSENT, FieldChange, Plan, PlanError, ResourceChange, diff, same
from buildsys.plan_view import render_plan
from buildsys.store.base import AppliedChanges

PLANS_DIR = Path(".buildsys") / "plans"
KEEP = 50


@dataclass(frozen=True)
class AppliedPlan:
    path: Path | None  # None: read from the store's record of the apply
    applied_at: float
    serial: int  # the store's serial after the apply
    plan: Plan

    @property
    def text(self) -> str:
        return render_plan(self.plan)


def record(root: Path, plan: Plan, serial: int, *, now: float | None = None) -> Path:
    """Keep `plan` (applied, leaving the store at `serial`); drops the oldest beyond KEEP."""
    folder = root / PLANS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    moment = time.time() if now is None else now
    path = folder / f"{int(moment * 1000):015d}-{serial}.json"
    body = {"applied_at": moment, "serial": serial, "plan": plan.to_dict()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    for old in sorted(folder.glob("*.json"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def remember(root: Path, plan: Plan, serial: int) -> None:
    """`record`, for `apply`: the history is a convenience, so a folder that cannot be written
    (read-only checkout, full disk) costs a warning in the log, never the apply."""
    import logging

    try:
        record(root, plan, serial)
    except OSError as exc:
        logging.getLogger("buildsys.ui").warning("could not keep the applied plan in %s: %s", root / PLANS_DIR, exc)


def recorded(root: Path, limit: int = 20) -> tuple[list[AppliedPlan], list[str]]:
    """The newest applied plans first, and a note for each file that could not be read."""
    folder = root / PLANS_DIR
    found: list[AppliedPlan] = []
    problems: list[str] = []
    for path in sorted(folder.glob("*.json"), reverse=True)[:limit] if folder.is_dir() else []:
        try:
            body: Any = json.loads(path.read_text(encoding="utf-8"))
            found.append(AppliedPlan(path, float(body["applied_at"]), int(body["serial"]), Plan.from_dict(body["plan"])))
        except (OSError, ValueError, KeyError, TypeError, PlanError) as exc:
            problems.append(f"{path.name}: {exc}")
    return found, problems


def from_store(applied: AppliedChanges) -> AppliedPlan:
    """A store's record of one apply as the plan that made it (the fields as `plan` diffs them)."""
    changes = tuple(_change(c) for c in applied.changes)
    first = applied.changes[0] if applied.changes else {}
    plan = Plan(
        serial=applied.serial - 1,
        owner=str(first.get("owner") or ""),
        source=dict(first.get("source") or {}),
        changes=changes,
    )
    return AppliedPlan(None, applied.applied_at, applied.serial, plan)


def _change(c: Any) -> ResourceChange:
    before, after = c.get("before"), c.get("after")
    return ResourceChange(
        str(c["action"]), str(c["kind"]), str(c["name"]), after, before, fields(before, after),
        c.get("owner"), c.get("source"),
    )  # fmt: skip


def fields(before: Any, after: Any) -> tuple[FieldChange, ...]:
    """What changed from one stored spec to the next (None: absent, or not kept), key by key as
    plan compares them."""
    if not isinstance(after, dict):
        return ()
    old: dict[str, Any] = before if isinstance(before, dict) else {}
    out: list[FieldChange] = []
    for key in [*after, *(k for k in old if k not in after)]:
        o, n = old.get(key, ABSENT), after.get(key, ABSENT)
        if not same(key, o, n):
            out.extend([FieldChange(key, ABSENT, n)] if before is None else diff(key, o, n))
    return tuple(out)
