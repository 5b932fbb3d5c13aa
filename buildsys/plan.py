"""Plans: the field-level difference between desired state and the store, pure and serialisable.

Only the keys a project manages are compared, with defaults normalised, so that applying a plan and
planning again always shows no changes. Drift (a store value edited out of band) shows as an update
back to the project's value. A plan records the store serial it was made against and a hash of its
content: `apply` refuses a plan whose serial moved or whose content was edited.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from buildsys.desired import UNKNOWN_TEXT, DesiredResource, DesiredState, canonical
from buildsys.errors import BuildsysError, Diagnostic
from buildsys.preflight import job_variable_problems, parameter_problems, pool_warnings
from buildsys.records import NEW_DICT, Record
from buildsys.store.base import KINDS, Resource, StepwiseStore
from buildsys.templating import UNKNOWN

FORMAT_VERSION = 1
UNKNOWN_JSON = {"$unknown": "(known after build)"}

# A stored None means the same as these (the key was never set, or set empty).
EMPTY_DEFAULTS: Mapping[str, Any] = {
    "tags": [],
    "parameters": {},
    "job_variables": {},
    "pull_steps": [],
    "triggers": [],
    "schedules": [],
    "queues": [],
    "paused": False,
    "description": None,
}


class PlanError(BuildsysError):
    """A plan cannot be made or read (bad plan file, prune of a partial project, …)."""


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()  # a key that does not exist on one side of a field change


_set = object.__setattr__


class FieldChange(Record):
    __slots__ = __match_args__ = ("path", "old", "new")
    path: str  # "tags", "job_variables.image", "queues"
    old: Any
    new: Any

    def __init__(
        self,
        path: str,
        old: Any = ABSENT,
        new: Any = ABSENT,
    ) -> None:
        _set(self, "path", path)
        _set(self, "old", old)
        _set(self, "new", new)


class ResourceChange(Record):
    __slots__ = __match_args__ = (
        "action", "kind", "name", "spec", "before", "fields", "owner", "source", "previous_owner",
    )
    action: str  # create | update | delete
    kind: str
    name: str
    spec: Mapping[str, Any] | None  # the full spec to write (None for delete)
    before: Mapping[str, Any] | None  # the stored spec (None for create)
    fields: tuple[FieldChange, ...]
    owner: str | None
    source: Mapping[str, Any] | None
    previous_owner: str | None

    def __init__(
        self,
        action: str,
        kind: str,
        name: str,
        spec: Mapping[str, Any] | None,
        before: Mapping[str, Any] | None,
        fields: tuple[FieldChange, ...] = (),
        owner: str | None = None,
        source: Mapping[str, Any] | None = None,
        previous_owner: str | None = None,
    ) -> None:
        _set(self, "action", action)
        _set(self, "kind", kind)
        _set(self, "name", name)
        _set(self, "spec", spec)
        _set(self, "before", before)
        _set(self, "fields", fields)
        _set(self, "owner", owner)
        _set(self, "source", source)
        _set(self, "previous_owner", previous_owner)

    @property
    def address(self) -> str:
        return f"{self.kind} {self.name}"


class Plan(Record):
    __slots__ = __match_args__ = (
        "serial", "owner", "source", "changes", "prune", "orphans", "warnings", "store", "sensitive",
    )
    serial: int  # the store serial the plan was made against
    owner: str
    source: Mapping[str, Any]
    changes: tuple[ResourceChange, ...]
    prune: bool
    orphans: tuple[str, ...]  # "kind name" owned by the project, no longer declared, not pruned
    warnings: tuple[str, ...]
    store: str | None  # the store URL, for messages
    # values resolved from secret-looking environment variables → "$NAME"; the text view masks them
    sensitive: Mapping[str, str]

    def __init__(
        self,
        serial: int,
        owner: str,
        source: Mapping[str, Any],
        changes: tuple[ResourceChange, ...],
        prune: bool = False,
        orphans: tuple[str, ...] = (),
        warnings: tuple[str, ...] = (),
        store: str | None = None,
        sensitive: Mapping[str, str] = NEW_DICT,
    ) -> None:
        _set(self, "serial", serial)
        _set(self, "owner", owner)
        _set(self, "source", source)
        _set(self, "changes", changes)
        _set(self, "prune", prune)
        _set(self, "orphans", orphans)
        _set(self, "warnings", warnings)
        _set(self, "store", store)
        _set(self, "sensitive", {} if sensitive is NEW_DICT else sensitive)

    @property
    def summary(self) -> dict[str, int]:
        count = {"add": 0, "change": 0, "destroy": 0}
        for c in self.changes:
            count[{"create": "add", "update": "change", "delete": "destroy"}[c.action]] += 1
        return count

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def body(self) -> dict[str, Any]:
        """The plan as JSON, without the hash."""
        return {
            "format_version": FORMAT_VERSION,
            "serial": self.serial,
            "owner": self.owner,
            "source": dict(self.source),
            "store": self.store,
            "prune": self.prune,
            "summary": self.summary,
            "changes": [_change_json(c) for c in self.changes],
            "orphans": list(self.orphans),
            "warnings": list(self.warnings),
            **({"sensitive": dict(self.sensitive)} if self.sensitive else {}),
        }

    @property
    def hash(self) -> str:
        return content_hash(self.body())

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Read a saved plan, refusing one that was edited or written by another version."""
        if not isinstance(data, Mapping) or data.get("format_version") != FORMAT_VERSION:
            raise PlanError(
                "not a plan file this buildsys can read (format_version "
                f"{data.get('format_version') if isinstance(data, Mapping) else None!r}, expected {FORMAT_VERSION})",
                hint="make a new one with `buildsys plan -o PLAN`",
            )
        body = {k: v for k, v in data.items() if k != "hash"}
        if data.get("hash") != content_hash(body):
            raise PlanError(
                "the plan file was modified after it was made (its hash does not match its content)",
                hint="make a new one with `buildsys plan -o PLAN`; a plan is applied exactly as shown",
            )
        try:
            return cls(
                serial=int(data["serial"]),
                owner=str(data["owner"]),
                source=dict(data.get("source") or {}),
                changes=tuple(_change_from_json(c) for c in data["changes"]),
                prune=bool(data.get("prune")),
                orphans=tuple(data.get("orphans") or ()),
                warnings=tuple(data.get("warnings") or ()),
                store=data.get("store"),
                sensitive={str(k): str(v) for k, v in (data.get("sensitive") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(
                f"the plan file is incomplete ({exc})", hint="make a new one with `buildsys plan -o PLAN`"
            ) from None


# --- computing a plan ---------------------------------------------------------------------------


def plan(
    desired: DesiredState,
    actual: Sequence[Resource],
    *,
    serial: int,
    prune: bool = False,
    owner: str | None = None,
    store: str | None = None,
    stepwise: StepwiseStore | None = None,
) -> Plan:
    """What apply would change to make the store match `desired`.

    Against a `stepwise` store (a Prefect server) desired specs are first put in that store's
    normal form, and resources it holds without an owner (made by hand or by `prefect deploy`)
    are left alone, with a warning, until imported."""
    me = owner or desired.owner
    if prune and desired.partial:
        raise PlanError(
            "--prune needs the whole project, but only some deployments were selected",
            hint="drop -d/--deployment when pruning",
        )
    index = {(r.kind, r.name): r for r in actual}
    changes: list[ResourceChange] = []
    warnings = list(_render_warning(w) for w in desired.warnings)
    for want in desired.resources:
        have = index.get((want.kind, want.name))
        if stepwise is not None:
            if have is not None and have.owner is None:
                warnings.append(_unmanaged(want.kind, want.name))
                continue
            spec = stepwise.normalise(want.kind, want.spec, have.spec if have else None)
            want = DesiredResource(want.kind, want.name, spec, want.managed, want.path, want.location)
        if have is None:
            changes.append(_create(want, me, desired.source))
            continue
        change = _update(want, have, me, desired.source)
        if change is not None:
            changes.append(change)
            if have.owner is not None and have.owner != me:
                warnings.append(
                    f"warning: {want.kind} {want.name} is owned by project {have.owner!r}; applying makes {me!r} its owner"
                )
    warnings += [f"warning: {w}" for w in pool_warnings(desired, actual)]
    warnings += [_render_warning(w) for w in job_variable_problems(desired, actual)]
    warnings += [_render_warning(w) for w in parameter_problems(desired)]
    wanted = {(r.kind, r.name) for r in desired.resources}
    orphans = [
        r
        for r in actual
        if r.owner == me
        and (r.kind, r.name) not in wanted
        and not (desired.partial and r.kind == "deployment")
    ]
    if prune:
        changes += [_delete(r, me) for r in orphans]
    return Plan(
        serial=serial,
        owner=me,
        source=dict(desired.source),
        changes=tuple(sorted(changes, key=_order)),
        prune=prune,
        orphans=() if prune else tuple(sorted(f"{r.kind} {r.name}" for r in orphans)),
        warnings=tuple(warnings),
        store=store,
        sensitive=dict(desired.sensitive),
    )


def _unmanaged(kind: str, name: str) -> str:
    return (
        f"{kind} {name} exists in the store but was not made by buildsys (unmanaged): left alone "
        f"(manage it with `buildsys import {kind} {name}`)"
    )


def _render_warning(d: Diagnostic) -> str:
    """As `validate` prints it: FILE:LINE:COL: warning: message, then the document path and the hint."""
    return Diagnostic("warning", d.message, d.location, d.path, d.hint).render()


def _order(c: ResourceChange) -> tuple[int, int, str]:
    rank = KINDS.index(c.kind) if c.kind in KINDS else len(KINDS)
    if c.action == "delete":  # deletions last, deployments before the pools they use
        return (1, len(KINDS) - rank, c.name)
    return (0, rank, c.name)


def _create(want: DesiredResource, owner: str, source: Mapping[str, Any]) -> ResourceChange:
    spec = dict(want.spec)  # desired specs are JSON-shaped already (DesiredResource)
    fields = tuple(
        FieldChange(key, ABSENT, spec[key])
        for key in spec
        if key in want.managed and not _same_canonical(key, spec[key], EMPTY_DEFAULTS.get(key))
    )
    return ResourceChange("create", want.kind, want.name, spec, None, fields, owner, dict(source))


# As the SQL store writes a spec (`store.rows.dump`); desired specs are trees, so no cycle check.
_SPEC_TEXT = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False, check_circular=False).encode


def known_specs(desired: DesiredState) -> dict[str, Mapping[str, Any]]:
    """Each desired spec by its text as the SQL store writes it (`store.rows.dump`): a stored spec
    with the same text is the same JSON, so the store's listing can hand back the desired value
    itself (`SharedSpecs`) and `_update` sees at once that nothing changed. Specs that could not
    compare equal are left out: a value not known until built, NaN, anything not JSON."""
    out: dict[str, Mapping[str, Any]] = {}
    for r in desired.resources:
        try:
            text = _SPEC_TEXT(r.spec)
        except (TypeError, ValueError, RecursionError):  # UNKNOWN (not JSON), NaN
            continue
        if UNKNOWN_TEXT not in text:  # an output embedded in a string never equals anything
            out[text] = r.spec
    return out


def _update(
    want: DesiredResource, have: Resource, owner: str, source: Mapping[str, Any]
) -> ResourceChange | None:
    stored = have.spec  # from JSON: already JSON-shaped
    if stored is want.spec and have.owner == owner:
        return None  # the listing found the stored text equal to this spec (`known_specs`)
    fields: list[FieldChange] = []
    for key in want.managed:
        new = want.spec.get(key)
        if not _same_canonical(key, stored.get(key, ABSENT), new):
            fields.extend(diff(key, stored.get(key, ABSENT), new))
    if not fields and have.owner == owner:
        return None  # the common case: nothing copied
    before = canonical(stored)
    after = {**before, **{key: want.spec.get(key) for key in want.managed}}
    order = {key: i for i, key in enumerate(want.spec)}
    fields.sort(key=lambda f: order.get(f.path.split(".", 1)[0].split("[", 1)[0], len(order)))
    previous = have.owner if have.owner != owner else None
    return ResourceChange(
        "update", want.kind, want.name, after, before, tuple(fields), owner, dict(source), previous
    )


def _delete(have: Resource, owner: str) -> ResourceChange:
    before = canonical(dict(have.spec))
    return ResourceChange("delete", have.kind, have.name, None, before, (), have.owner, None)


def _normal(key: str, value: Any) -> Any:
    if value is ABSENT or value is None:
        return EMPTY_DEFAULTS.get(key)
    if key == "description" and value == "":
        return None
    return value


def same(key: str, old: Any, new: Any) -> bool:
    """Equal after normalising defaults; a value not known until built never equals anything."""
    return _same_canonical(key, canonical(old), canonical(new))


def _same_canonical(key: str, old: Any, new: Any) -> bool:
    a, b = _normal(key, old), _normal(key, new)
    return bool(a == b) and _identical(a, b)


def _identical(a: Any, b: Any) -> bool:
    """For values already equal: still different when a side is not known yet (UNKNOWN == UNKNOWN)
    or when a bool stands for a number (True == 1 in Python; a plan must show `1 → true`)."""
    ta, tb = type(a), type(b)
    if ta is not tb:
        return not (ta is bool or tb is bool or a is UNKNOWN or b is UNKNOWN)
    if ta is str:
        return UNKNOWN_TEXT not in a and UNKNOWN_TEXT not in b
    if ta is dict:
        for k, v in a.items():  # noqa: SIM110  # loops, not all(...): no generator per call on this hot path
            if not _identical(v, b[k]):
                return False
        return True
    if ta is list:
        for x, y in zip(a, b, strict=True):  # noqa: SIM110  # as above
            if not _identical(x, y):
                return False
        return True
    return a is not UNKNOWN


def diff(path: str, old: Any, new: Any) -> list[FieldChange]:
    """Field changes between two values: mappings are compared key by key, anything else whole."""
    if isinstance(old, Mapping) and isinstance(new, Mapping) and old and new:
        out: list[FieldChange] = []
        for key in [*new, *(k for k in old if k not in new)]:
            o, n = old.get(key, ABSENT), new.get(key, ABSENT)
            if not same("", o, n) or (o is ABSENT) != (n is ABSENT):
                out.extend(diff(f"{path}.{key}", o, n))
        return out
    keyed = _keyed(old), _keyed(new)
    if keyed[0] is not None and keyed[1] is not None and list(keyed[0]) == list(keyed[1]):
        out = []
        for key, item in keyed[1].items():
            if not same("", keyed[0][key], item):
                out.extend(diff(f"{path}[{key}]", keyed[0][key], item))
        return out
    return [FieldChange(path, old, new)]


def _keyed(value: Any) -> dict[str, Any] | None:
    """A list of mappings by name (queues) or by position (steps, schedules); None otherwise."""
    if not isinstance(value, list) or not value or not all(isinstance(v, Mapping) for v in value):
        return None
    names = [v.get("name") for v in value]
    if all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
        return {str(n): v for n, v in zip(names, value, strict=True)}
    return {str(i): v for i, v in enumerate(value)}


# --- JSON ---------------------------------------------------------------------------------------


def to_json_value(value: Any) -> Any:
    if value is UNKNOWN:
        return dict(UNKNOWN_JSON)
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    return value


def from_json_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        if dict(value) == UNKNOWN_JSON:
            return UNKNOWN
        return {k: from_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    return value


def content_hash(body: Mapping[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _change_json(c: ResourceChange) -> dict[str, Any]:
    out: dict[str, Any] = {
        "action": c.action,
        "kind": c.kind,
        "name": c.name,
        "owner": c.owner,
        "previous_owner": c.previous_owner,
        "source": dict(c.source) if c.source is not None else None,
        "before": to_json_value(c.before),
        "after": to_json_value(c.spec),
        "fields": [_field_json(f) for f in c.fields],
    }
    return out


def _field_json(f: FieldChange) -> dict[str, Any]:
    out: dict[str, Any] = {"path": f.path}
    if f.old is not ABSENT:
        out["old"] = to_json_value(f.old)
    if f.new is not ABSENT:
        out["new"] = to_json_value(f.new)
    return out


def _change_from_json(data: Mapping[str, Any]) -> ResourceChange:
    action = data["action"]
    if action not in ("create", "update", "delete") or data["kind"] not in KINDS:
        raise ValueError(f"unknown change {action!r} of {data.get('kind')!r}")
    return ResourceChange(
        action=action,
        kind=data["kind"],
        name=str(data["name"]),
        spec=from_json_value(data.get("after")),
        before=from_json_value(data.get("before")),
        fields=tuple(
            FieldChange(
                f["path"],
                from_json_value(f["old"]) if "old" in f else ABSENT,
                from_json_value(f["new"]) if "new" in f else ABSENT,
            )
            for f in data.get("fields") or ()
        ),
        owner=data.get("owner"),
        source=data.get("source"),
        previous_owner=data.get("previous_owner"),
    )
