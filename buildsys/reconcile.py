"""Reading the store for a plan, and applying a plan: validated first, then one guarded transaction.

A plan is applied exactly as made: its changes become store Changes (pools before deployments,
deletions last), written in one `apply` call whose expected serial is the plan's serial, so a store
that moved since the plan was made refuses it and nothing is written.

A store without transactions (a Prefect server, `StepwiseStore`) is applied step by step instead:
every resource the plan touches is checked against what the plan saw before the first write, the
changes are written one at a time in the plan's order, and the first failure stops the apply with
an error that lists exactly what was written; planning again gives the plan that finishes the job.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.desired import BuildOutputs, has_unknown
from buildsys.errors import BuildsysError, ConflictError, Diagnostic
from buildsys.plan import Plan, PlanError, ResourceChange
from buildsys.records import Record
from buildsys.store.base import Change, Resource, StateStore, StepwiseStore

if TYPE_CHECKING:
    from buildsys.desired import OutputsFor
    from buildsys.entrypoints import FlowInfo
    from buildsys.graph import StepGraph
    from buildsys.model import Deployment, Project


class ApplyError(BuildsysError):
    """A plan cannot be applied; carries every problem found before the first write."""

    def __init__(self, problems: Sequence[Diagnostic]) -> None:
        self.problems = list(problems)
        first = self.problems[0]
        super().__init__(first.message, location=first.location, path=first.path, hint=first.hint)

    def diagnostics(self) -> list[Diagnostic]:
        return list(self.problems)


class PartialApplyError(BuildsysError):
    """A stepwise apply stopped at a failing change; `written` were applied before it."""

    def __init__(self, written: Sequence[ResourceChange], failed: ResourceChange, left: int, cause: BuildsysError) -> None:
        self.written = list(written)
        self.failed = failed
        done = "; ".join(_said(c) for c in written) or "nothing"
        super().__init__(
            f"apply stopped at {failed.action} of {failed.address}: {cause.message}. "
            f"Written before it: {done}. Not written: {failed.address} (or only the part the error names) and "
            f"{left} change(s) after it. The store has no transactions, so nothing was rolled back",
            hint=(cause.hint + "; then " if cause.hint else "fix the cause, then ")
            + "run `buildsys plan` again: its plan finishes the job",
        )


PAST = {"create": "created", "update": "updated", "delete": "deleted"}


def _said(c: ResourceChange) -> str:
    return f"{PAST[c.action]} {c.address}"


_set = object.__setattr__


class ApplyResult(Record):
    __slots__ = __match_args__ = ("serial", "applied")
    serial: int  # the store serial after the apply
    applied: int  # number of changes written

    def __init__(
        self,
        serial: int,
        applied: int,
    ) -> None:
        _set(self, "serial", serial)
        _set(self, "applied", applied)


def plan_project(
    project_file: Path,
    store: StateStore,
    *,
    ref: str | None = None,
    prune: bool = False,
    select: Sequence[str] = (),
    outputs: Callable[[Project], OutputsFor | None] | None = None,
    project: Project | None = None,
    env: Mapping[str, str] | None = None,
    store_url: str = "",
    only: Collection[str] | None = None,
    flows: dict[str, FlowInfo] | None = None,
) -> Plan:
    """The project file's desired state (at `ref`, or the working tree: `project` when the caller
    loaded it) against a consistent snapshot of the store: what `plan`, `apply` and `deploy` show.
    Deploy-time values come from `env` and the store's variables, as `prefect deploy` resolves them.
    `only`: exactly these deployment names (within `select`), e.g. the ones `--affected` found;
    `flows`: the entrypoints it read from the same working tree (`desired.desired_state`)."""
    from buildsys.collector import gc_paused

    with gc_paused():  # desired state, the store's snapshot and the diff: no cycles among them either
        return _plan_project(
            project_file, store, ref=ref, prune=prune, select=select, outputs=outputs, project=project, env=env,
            store_url=store_url, only=only, flows=flows,
        )


def _plan_project(
    project_file: Path,
    store: StateStore,
    *,
    ref: str | None,
    prune: bool,
    select: Sequence[str],
    outputs: Callable[[Project], OutputsFor | None] | None,
    project: Project | None,
    env: Mapping[str, str] | None,
    store_url: str,
    only: Collection[str] | None,
    flows: dict[str, FlowInfo] | None = None,
) -> Plan:
    from buildsys.desired import read_desired
    from buildsys.plan import known_specs
    from buildsys.plan import plan as compute
    from buildsys.revision import strip_credentials

    variables = {r.name: r.spec.get("value") for r in store.list_resources("variable")}
    _, desired = read_desired(
        project_file, ref=ref, select=list(select) or None, outputs=outputs, loaded=project, env=env, variables=variables,
        only=only, flows=flows,
    )
    scoped = stepwise(store)
    if scoped is None:
        chosen = [r.name for r in desired.resources if r.kind == "deployment"] if desired.partial else None
        serial, actual = snapshot(store, known=known_specs(desired), deployments=chosen)
    else:  # no serial, no transactions: one read of what this project's plan can touch
        names = [r.name for r in desired.resources if r.kind == "deployment"]
        serial, actual = store.serial(), scoped.plan_resources(desired.owner, names)
    # the URL goes into plan files and CI logs: never with a password or token in it
    return compute(
        desired, actual, serial=serial, prune=prune, store=strip_credentials(store_url) if store_url else None,
        stepwise=stepwise(store),
    )


def cached_outputs(project: Project) -> OutputsFor:
    """Each deployment's build outputs as the build cache holds them, without running anything
    (what no build produced for the current inputs is "known after build"): plan's view."""
    return _CachedOutputs(project)


class _CachedOutputs:
    """`cached_outputs`: told which deployments the plan reads (`prepare`), it keys their build
    and push steps in one graph, as a build of them would: a step that several deployments share
    (one image for a group) is keyed once, with one look at its files and one fingerprint (a
    Docker API call for an image's base), not once per deployment. Each deployment's outputs and
    pending steps are then exactly what keying it alone gives (`engine.cached_namespace`, which
    also answers whenever the shared graph cannot be made)."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.known: dict[str, BuildOutputs] = {}

    def prepare(self, deployments: Sequence[Deployment]) -> None:
        names = [d.name for d in deployments if d.build or d.push]
        if len(names) < 2:
            return
        import glob

        from buildsys.compiled import compile_project
        from buildsys.engine import Engine, namespace_for

        try:  # a deployment whose steps do not compile: each is keyed alone, with its own error
            # each name as the -d pattern that selects it alone (`etl[prod]` is no bracket expression)
            compiled = compile_project(self.project, sections=("build", "push"), deployments=[glob.escape(n) for n in names])
        except BuildsysError:
            return
        graph = compiled.graph
        engine = Engine(self.project, graph, compiled.steps, dry_run=True)
        try:
            decisions = engine.foresee()
        finally:
            engine.cache.close()
        for name in names:
            chain = graph.chains.get(name)
            if chain is None:
                continue
            labels = _alone_labels(graph, name, chain)
            pending = frozenset(labels[k] for k in labels if not decisions[k].cached)
            self.known[name] = BuildOutputs(namespace_for(graph, engine.results, name), pending)

    def __call__(self, d: Deployment) -> BuildOutputs | None:
        if not (d.build or d.push):
            return _NO_OUTPUTS
        known = self.known.get(d.name)
        if known is not None:
            return known
        from buildsys.engine import cached_namespace  # only projects with build steps load the engine

        namespace, pending = cached_namespace(self.project, d.name)
        return BuildOutputs(namespace, frozenset(pending))


_NO_OUTPUTS = BuildOutputs({})  # a deployment without build or push steps (read-only, like every BuildOutputs)


def _alone_labels(graph: StepGraph, deployment: str, chain: Sequence[str]) -> dict[str, str]:
    """How a plan of the deployment alone names each step of its chain when pending
    (`engine.cached_namespace`): the step's id, else its label in a graph of that deployment
    alone (name#index, with @deployment when two of its steps share one: graph._label's rule)."""
    keys = list(dict.fromkeys(chain))
    base = {k: graph.nodes[k].spec.id or graph.nodes[k].spec.label for k in keys}
    counts: dict[str, int] = {}
    for label in base.values():
        counts[label] = counts.get(label, 0) + 1
    return {
        k: graph.nodes[k].spec.id or (f"{label}@{deployment}" if counts[label] > 1 else label)
        for k, label in base.items()
    }


def validate(plan: Plan, actual: Sequence[Resource] = ()) -> list[Diagnostic]:
    """Every problem that would make the plan unsafe to write (empty when it can be applied)."""
    problems: list[Diagnostic] = []
    pools = {r.name for r in actual if r.kind == "pool"}
    pools |= {c.name for c in plan.changes if c.kind == "pool" and c.action != "delete"}
    pools -= {c.name for c in plan.changes if c.kind == "pool" and c.action == "delete"}
    for c in plan.changes:
        if c.action == "delete":
            continue
        if has_unknown(c.spec):
            fields = sorted(f.path for f in c.fields if has_unknown(f.new)) or ["(a field)"]
            problems.append(
                Diagnostic(
                    "error",
                    f"{c.kind} {c.name}: {', '.join(fields)} depend on build outputs that are not known yet",
                    hint="run `buildsys build` (or `buildsys push`) first, or use `buildsys deploy`",
                )
            )
        else:
            try:
                json.dumps(c.spec, allow_nan=False)
            except (TypeError, ValueError) as exc:
                problems.append(Diagnostic("error", f"{c.kind} {c.name}: the spec is not JSON ({exc})"))
    for c in plan.changes:
        if c.kind == "pool" and c.action == "delete":
            users = sorted(
                r.name
                for r in actual
                if r.kind == "deployment"
                and r.spec.get("work_pool_name") == c.name
                and not any(
                    d.kind == "deployment" and d.name == r.name and d.action == "delete" for d in plan.changes
                )
            )
            if users:
                problems.append(
                    Diagnostic(
                        "error",
                        f"pool {c.name} cannot be deleted: deployments still use it ({', '.join(users)})",
                        hint="move those deployments to another pool first",
                    )
                )
    return problems


def snapshot(
    store: StateStore, *, attempts: int = 5, known: Mapping[str, Any] | None = None,
    deployments: Collection[str] | None = None,
) -> tuple[int, list[Resource]]:
    """The store's serial and resources as one consistent view (re-read if an apply slipped in).
    `known` (`plan.known_specs`): stored specs equal to a desired one are that same value, not
    decoded again, when the store can tell (a SQL store compares the texts). `deployments`: the
    only deployments the caller reads (a partial plan: `plan.plan` reads no other deployment of
    the store then, every pool and variable still), when the store can list just those."""
    listing: Callable[[], list[Resource]] = store.list_resources
    if (known or deployments is not None) and getattr(store, "lists_known_specs", False):
        listing = functools.partial(store.list_resources, known=known, deployments=deployments)  # type: ignore[call-arg]
    for _ in range(attempts):
        before = store.serial()
        resources = listing()
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


def stepwise(store: StateStore) -> StepwiseStore | None:
    """The store as a StepwiseStore when it has no transactions (plans then use its normal form)."""
    return store if isinstance(store, StepwiseStore) else None


def apply_plan(store: StateStore, plan: Plan) -> ApplyResult:
    """Apply exactly this plan, or nothing (ApplyError / ConflictError say why)."""
    if isinstance(store, StepwiseStore):
        return apply_stepwise(store, plan)
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


def apply_stepwise(store: StateStore, plan: Plan) -> ApplyResult:
    """Check every touched resource, then write change by change; PartialApplyError on a failure."""
    assert isinstance(store, StepwiseStore)
    if any(c.kind == "pool" and c.action == "delete" for c in plan.changes):
        actual = store.list_resources()  # a pool's users may be any project's deployments
    else:  # what the plan touches, whoever owns it now, and what its project owns
        actual = store.plan_resources(plan.owner, [c.name for c in plan.changes if c.kind == "deployment"])
    problems = validate(plan, actual)
    if problems:
        raise ApplyError(problems)
    current = {(r.kind, r.name): r for r in actual}
    moved = []
    for c in plan.changes:
        why = store.changed_since(c.before, current.get((c.kind, c.name)))
        if why:
            moved.append(f"{c.address}: {why}")
    if moved:
        raise ConflictError(
            "the store changed since this plan was made; nothing was applied: " + "; ".join(moved),
            hint="run `buildsys plan` again and review the new plan",
        )
    written: list[ResourceChange] = []
    for c, change in zip(plan.changes, to_changes(plan), strict=True):
        try:
            store.apply_change(change, current.get((c.kind, c.name)))
        except BuildsysError as exc:
            raise PartialApplyError(written, c, len(plan.changes) - len(written) - 1, exc) from None
        written.append(c)
    return ApplyResult(store.serial(), len(written))


def adopt(store: StateStore, kind: str, name: str, owner: str) -> Resource:
    """Make `owner` the owner of a resource made outside buildsys (`buildsys import`), unchanged
    otherwise; the next plan shows how it differs from the project."""
    from buildsys.errors import NotFoundError

    have = store.get_resource(kind, name)
    if have is None:
        raise NotFoundError(f"no {kind} {name!r} in the store at {store.url}", hint=f"see `buildsys state show --kind {kind}`")
    if have.owner == owner:
        return have
    if have.owner is not None:
        raise ConflictError(
            f"{kind} {name} is already managed by project {have.owner!r}",
            hint="only unmanaged resources are adopted; a plan of this project takes it over with a warning",
        )
    return _write_one(store, Change("update", kind, name, dict(have.spec), owner, None), have)


def disown(store: StateStore, kind: str, name: str, owner: str) -> Resource:
    """Stop `owner` managing a resource (`buildsys state rm`), as Terraform's `state rm` forgets one:
    it stays in the store, unchanged and unowned, so `--prune` never deletes it; a project that
    still declares it takes it over again with a warning."""
    from buildsys.errors import NotFoundError

    have = store.get_resource(kind, name)
    if have is None:
        raise NotFoundError(f"no {kind} {name!r} in the store at {store.url}", hint=f"see `buildsys state show --kind {kind}`")
    if have.owner is None:
        return have
    if have.owner != owner:
        raise ConflictError(
            f"{kind} {name} is managed by project {have.owner!r}, not this one ({owner!r}); nothing was changed",
            hint="run `buildsys state rm` in the project that manages it",
        )
    return _write_one(store, Change("update", kind, name, dict(have.spec), None, have.source), have)


def set_paused(store: StateStore, kind: str, name: str, paused: bool) -> Resource:
    """Pause or resume a deployment (`buildsys deployment pause/resume`), nothing else changed; a
    project that declares `paused:` shows the difference in its next plan."""
    from buildsys.errors import NotFoundError

    have = store.get_resource(kind, name)
    if have is None:
        raise NotFoundError(f"no {kind} {name!r} in the store at {store.url}", hint=f"see `buildsys state show --kind {kind}`")
    if bool(have.spec.get("paused")) == paused:
        return have
    spec = {**have.spec, "paused": paused}
    return _write_one(store, Change("update", kind, name, spec, have.owner, have.source), have)


def _write_one(store: StateStore, change: Change, have: Resource) -> Resource:
    if isinstance(store, StepwiseStore):
        store.apply_change(change, have)
    else:
        store.apply([change], expected_serial=None)
    return store.get_resource(change.kind, change.name) or have


def stale(plan: Plan, serial: int) -> ConflictError:
    return ConflictError(
        f"the state store changed since this plan was made (plan serial {plan.serial}, store serial {serial}); "
        "nothing was applied",
        hint="run `buildsys plan` again and review the new plan",
    )


def read_plan_file(path: Path) -> Plan:
    from buildsys.sourcefiles import PLAN_FILE_LIMIT, UnreadableFile, read_regular

    try:
        text = read_regular(path, limit=PLAN_FILE_LIMIT, what="plan file").decode("utf-8")
    except FileNotFoundError:
        raise PlanError(f"no plan file at {path}", hint="make one with `buildsys plan -o PLAN`") from None
    except UnreadableFile as exc:
        raise PlanError(exc.message, hint=exc.hint) from None
    except UnicodeDecodeError:
        raise PlanError(f"{path} is not a plan file (not UTF-8 text)") from None
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
