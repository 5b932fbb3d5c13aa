"""Desired state: a loaded project (plus the outputs of its builds) turned into store resources.

Every resource carries its owner (the project's identity) and its source (commit, ref, file, dirty)
and says which spec keys the project manages: those are compared by `plan` and overwritten by
`apply`; everything else in a stored spec is left alone (paused / schedules only when declared).
Deploy-time values are resolved here, at plan time, as `prefect deploy` resolves them: environment
placeholders everywhere (pull steps included) and `prefect.variables.*` outside pull steps; an unset
one is a located error (Prefect stores ""). Blocks stay templates, resolved where the run starts.
A value that came from a secret-looking environment variable is stored (the store needs it) with a
warning, and is masked wherever the plan is shown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.entrypoints import EntrypointError, FlowInfo, SourceReader, flow_info
from buildsys.errors import BuildsysError, Diagnostic, Location
from buildsys.model import Deployment, PoolSpec, Project, ScheduleSpec, StepSpec, VariableSpec
from buildsys.records import NEW_DICT, Record
from buildsys.selector import select_deployments
from buildsys.sourcefiles import UnreadableFile
from buildsys.templating import UNKNOWN, JsonRenderer, Scope, placeholders, render, secret_env_name, templated

if TYPE_CHECKING:
    from buildsys.revision import Revision

UNKNOWN_TEXT = str(UNKNOWN)
FLAT = "(flat namespace)"


_set = object.__setattr__


class BuildOutputs(Record):
    """A deployment's build/push outputs: Prefect's namespace (by step id plus the flat merge) and
    the ids/labels of steps whose outputs are not known (not built for the current inputs)."""

    __slots__ = __match_args__ = ("namespace", "pending")
    namespace: Mapping[str, Any]
    pending: frozenset[str]

    def __init__(
        self,
        namespace: Mapping[str, Any],
        pending: frozenset[str] = frozenset(),
    ) -> None:
        _set(self, "namespace", namespace)
        _set(self, "pending", pending)


# A deployment's build outputs (None = nothing known: every output is "known after build").
OutputsFor = Callable[[Deployment], "BuildOutputs | None"]

# Deployment spec keys the project always manages (an undeclared one is managed as its default).
DEPLOYMENT_KEYS = (
    "flow_name",
    "name",
    "entrypoint",
    "description",
    "version",
    "tags",
    "parameters",
    "parameter_schema",
    "work_pool_name",
    "work_queue_name",
    "job_variables",
    "pull_steps",
    "concurrency_limit",
    "concurrency_options",
    "triggers",
    "enforce_parameter_schema",
)
# Managed only when the project declares them (prefect.yaml key(s) → spec key): a plan never
# un-pauses or re-activates what the project did not mention (Prefect pain points §9.4–9.6).
DEPLOYMENT_WHEN_DECLARED = {
    "paused": ("paused", "is_schedule_active"),
    "schedules": ("schedules", "schedule"),
    "retries": ("retries",),
    "retry_delay_seconds": ("retry_delay_seconds",),
}
# What a new resource gets for keys the project does not manage.
CREATE_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "deployment": {"paused": False, "schedules": []},
    "pool": {"paused": False},
    "variable": {},
}
POOL_KEYS = ("type", "description", "base_job_template", "concurrency_limit", "queues")


class DesiredStateError(BuildsysError):
    """The project cannot be turned into resources (missing entrypoint, duplicate identity, …)."""


class DesiredResource(Record):
    """One resource as the project wants it."""

    __slots__ = __match_args__ = ("kind", "name", "spec", "managed", "path", "location")
    kind: str  # pool | deployment | variable
    name: str  # identity within the kind ("<flow>/<deployment>" for deployments)
    spec: Mapping[str, Any]  # managed keys (values may be UNKNOWN until built) + create defaults
    managed: frozenset[str]  # the spec keys this project compares and overwrites
    path: str  # document path, for messages
    location: Location | None

    def __init__(
        self,
        kind: str,
        name: str,
        spec: Mapping[str, Any],
        managed: frozenset[str],
        path: str = "",
        location: Location | None = None,
    ) -> None:
        _set(self, "kind", kind)
        _set(self, "name", name)
        # JSON-shaped from the start (YAML dates become ISO text, tuples lists), so checks and the
        # plan see exactly what the store will hold
        _set(self, "spec", canonical(spec))
        _set(self, "managed", managed)
        _set(self, "path", path)
        _set(self, "location", location)

    @classmethod
    def _canonical(
        cls, kind: str, name: str, spec: dict[str, Any], managed: frozenset[str], path: str, location: Location | None
    ) -> DesiredResource:
        """As the constructor, for a `spec` the caller made canonical itself (`_deployment_spec`)."""
        self = cls.__new__(cls)
        _set(self, "kind", kind)
        _set(self, "name", name)
        _set(self, "spec", spec)
        _set(self, "managed", managed)
        _set(self, "path", path)
        _set(self, "location", location)
        return self


class DesiredState(Record):
    __slots__ = __match_args__ = ("owner", "source", "resources", "warnings", "partial", "sensitive")
    owner: str
    source: Mapping[str, Any]
    resources: tuple[DesiredResource, ...]
    warnings: tuple[Diagnostic, ...]
    partial: bool  # only some deployments were selected: pruning would be wrong
    # values taken from secret-looking environment variables → "$NAME": masked wherever shown
    sensitive: Mapping[str, str]

    def __init__(
        self,
        owner: str,
        source: Mapping[str, Any],
        resources: tuple[DesiredResource, ...],
        warnings: tuple[Diagnostic, ...] = (),
        partial: bool = False,
        sensitive: Mapping[str, str] = NEW_DICT,
    ) -> None:
        _set(self, "owner", owner)
        _set(self, "source", source)
        _set(self, "resources", resources)
        _set(self, "warnings", warnings)
        _set(self, "partial", partial)
        _set(self, "sensitive", {} if sensitive is NEW_DICT else sensitive)

    def get(self, kind: str, name: str) -> DesiredResource | None:
        return next((r for r in self.resources if r.kind == kind and r.name == name), None)


def project_identity(
    project: Project, *, remote_url: str | None = None, file_in_repo: str | None = None
) -> str:
    """`buildsys.project`, else the project `name`, else remote URL + file path, else the directory."""
    meta = project.data.get("buildsys")
    if isinstance(meta, Mapping) and isinstance(meta.get("project"), str) and meta["project"]:
        return str(meta["project"])
    if project.name:
        return project.name
    if remote_url and file_in_repo:
        return f"{remote_url}#{file_in_repo}"
    return project.root.name


def desired_state(
    project: Project,
    *,
    owner: str,
    source: Mapping[str, Any],
    read: SourceReader,
    outputs: OutputsFor | None = None,
    select: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    variables: Mapping[str, Any] | None = None,
    only: Collection[str] | None = None,
    flows: dict[str, FlowInfo] | None = None,
) -> DesiredState:
    """All resources the project declares. Values that need a build not yet run are UNKNOWN.

    `env` and `variables` resolve deploy-time placeholders (None: they are kept as written);
    the project's own `variables:` are known in any case, over `variables` (the store's).
    `flows`: what each entrypoint's file says (by entrypoint), shared with the caller: entries
    already there are used as they are, the others read with `read` and added."""
    warnings: list[Diagnostic] = list(project.warnings)  # the loader's (unknown keys, skipped entries)
    values = None if variables is None and env is None else {**(variables or {})}
    if values is not None:
        values.update({v.name: v.value for v in project.variables})
    # a plain dict: os.environ encodes and decodes on every lookup, and each deployment looks a few up
    deploy_time = DeployTime(None if env is None else dict(env), values)
    resources: list[DesiredResource] = [variable_resource(v) for v in project.variables]
    resources += [pool_resource(p, warnings) for p in project.work_pools]
    seen: dict[str, Deployment] = {}
    flows = {} if flows is None else flows  # many deployments share one flow: parse each file once
    chosen = select_deployments(project, select)
    if only is not None:  # exact names (`--affected`): none at all is a valid choice
        chosen = tuple(d for d in chosen if d.name in only)
    prepare = getattr(outputs, "prepare", None)
    if prepare is not None:  # outputs that are cheaper computed for all the chosen at once
        prepare(chosen)
    for d in chosen:
        res = deployment_resource(
            d,
            read=read,
            outputs=(outputs(d) if outputs else None),
            warnings=warnings,
            flows=flows,
            commit=source.get("commit"),
            deploy_time=deploy_time,
        )
        if res.name in seen:
            raise DesiredStateError(
                f"deployments {seen[res.name].name!r} and {d.name!r} have the same identity {res.name!r}",
                location=d.location,
                path=d.path,
                hint="a deployment is identified by flow name + deployment name; rename one of them",
            )
        seen[res.name] = d
        resources.append(res)
    return DesiredState(
        owner,
        dict(source),
        tuple(resources),
        tuple(warnings),
        partial=bool(select) or only is not None,
        sensitive=dict(deploy_time.sensitive),
    )


class DeployTime:
    """What `{{ $ENV }}` and `{{ prefect.variables.* }}` resolve to while planning, and which
    resolved values came from secret-looking environment variables."""

    __slots__ = ("env", "secret_names", "sensitive", "variables")

    def __init__(self, env: Mapping[str, str] | None = None, variables: Mapping[str, Any] | None = None) -> None:
        self.env = env
        self.variables = variables
        self.sensitive: dict[str, str] = {}  # value → "$NAME"
        # a deployment's templated texts → the secret-looking variables of `env` they use (sorted):
        # the deployments of one definition share their texts
        self.secret_names: dict[tuple[str, ...], list[str]] = {}


# --- variables and pools ------------------------------------------------------------------------


def variable_resource(v: VariableSpec) -> DesiredResource:
    spec = {"value": v.value}
    return DesiredResource("variable", v.name, spec, frozenset({"value"}), f"variables.{v.name}", v.location)


def pool_resource(p: PoolSpec, warnings: list[Diagnostic]) -> DesiredResource:
    found: list[Diagnostic] = []
    try:
        template = job_template(p.type, p.job_variables, p.base_job_template, found)
    except BuildsysError as exc:
        raise DesiredStateError(
            f"work pool {p.name!r}: {exc.message}", location=p.location, path=p.path, hint=exc.hint
        ) from None
    warnings.extend(
        Diagnostic("warning", w.message, w.location or p.location, w.path or p.path, w.hint) for w in found
    )
    spec: dict[str, Any] = {
        "type": p.type,
        "description": p.description,
        "base_job_template": template,
        "concurrency_limit": p.concurrency_limit,
        "queues": [_queue(q, i) for i, q in enumerate(p.queues)],
    }
    managed = set(POOL_KEYS)
    if "paused" in p.declared:
        spec["paused"] = bool(p.paused)
        managed.add("paused")
    return DesiredResource(
        "pool", p.name, _with_defaults("pool", spec), frozenset(managed), p.path, p.location
    )


def _queue(q: Any, index: int) -> dict[str, Any]:
    return {
        "name": q.name,
        "priority": q.priority if q.priority is not None else index + 1,
        "concurrency_limit": q.concurrency_limit,
        "description": q.description,
        "paused": bool(q.paused),
    }


def job_template(
    pool_type: str,
    job_variables: Mapping[str, Any],
    override: Mapping[str, Any] | None,
    warnings: list[Diagnostic],
) -> dict[str, Any]:
    """The pool's base job template: the type's default (or `override`) with new variable defaults."""
    from buildsys.pools import base_job_template

    return base_job_template(pool_type, job_variables or None, override, warnings=warnings)


# --- deployments --------------------------------------------------------------------------------


def deployment_resource(
    d: Deployment,
    *,
    read: SourceReader,
    outputs: BuildOutputs | None,
    warnings: list[Diagnostic],
    flows: dict[str, FlowInfo] | None = None,
    commit: str | None = None,
    deploy_time: DeployTime | None = None,
) -> DesiredResource:
    if not d.entrypoint:
        raise DesiredStateError(
            f"deployment {d.name!r} has no entrypoint",
            location=d.location,
            path=d.path,
            hint="add `entrypoint: path/file.py:flow_function`",
        )
    try:
        info = _flow(d.entrypoint, read, flows if flows is not None else {})
    except ValueError as exc:
        raise DesiredStateError(str(exc), location=d.location, path=d.path) from None
    except (EntrypointError, UnreadableFile) as exc:
        raise DesiredStateError(
            f"deployment {d.name!r}: entrypoint {d.entrypoint}: {exc.message}",
            location=d.location,
            path=f"{d.path}.entrypoint",
            hint=exc.hint,
        ) from None
    # a missing `file.py` is already reported by the loader; say it only for module paths
    if info.problem and not (info.file is None and ".py:" in d.entrypoint):
        warnings.append(
            Diagnostic(
                "warning",
                f"flow name of deployment {d.name!r} taken from the function name ({info.name!r}): {info.problem}",
                d.location,
                d.path,
                "the flow name is read from `@flow(name=...)` in the entrypoint file when it can be found",
            )
        )
    deploy_time = deploy_time or DeployTime()
    scope = _scope(d, outputs, deploy_time)
    r = _Renderer(scope, d)
    spec: dict[str, Any] = {
        "flow_name": info.name,
        "name": d.name,
        "entrypoint": d.entrypoint.removeprefix("./"),
        "description": r.value(d.description, "description") if d.description else info.docstring,
        "version": _version(d, r, commit, info, warnings),
        "tags": _tags(r.value(d.tags, "tags")),
        "parameters": r.value(dict(d.parameters), "parameters"),
        "parameter_schema": info.parameter_schema,
        "work_pool_name": d.work_pool.name,
        # Prefect stores the pool's default queue by name when none is given
        "work_queue_name": d.work_pool.work_queue_name or ("default" if d.work_pool.name else None),
        "job_variables": r.value(dict(d.work_pool.job_variables), "work_pool.job_variables"),
        "pull_steps": r.pull_steps(d.pull),
        "concurrency_limit": d.concurrency_limit,
        "concurrency_options": _concurrency_options(d.concurrency_options),
        "triggers": _triggers(d, r),
        # Prefect 3's server default; enforced by `run` and by plan's preflight
        "enforce_parameter_schema": d.enforce_parameter_schema is not False,
    }
    managed = _managed(d.declared)
    if "paused" in managed:
        spec["paused"] = bool(d.paused)
    if "retries" in managed:
        spec["retries"] = d.retries or 0
    if "retry_delay_seconds" in managed:
        spec["retry_delay_seconds"] = d.retry_delay_seconds or 0
    if "schedules" in managed:
        spec["schedules"] = [_schedule(s, r, f"schedules[{i}]") for i, s in enumerate(d.schedules)]
    _note_secrets(d, scope, deploy_time, warnings)
    _no_blocks_in_parameters(d, spec)
    name = f"{info.name}/{d.name}"
    return DesiredResource._canonical(
        "deployment", name, _deployment_spec(_with_defaults("deployment", spec)), managed, d.path, d.location
    )


# the fields `deployment_resource` renders JSON-shaped (`_Renderer`): canonical as made
_RENDERED = frozenset({"parameters", "job_variables", "pull_steps"})


def _deployment_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """`canonical(spec)` without walking again what is canonical by construction: the rendered
    fields, and the parameter schema (one object for every deployment of a flow, made by
    buildsys.entrypoints), checked once per flow, not once per deployment."""
    out = spec
    for key, value in spec.items():
        if key in _RENDERED:
            continue
        if key == "parameter_schema":
            made = _canonical_schema(value)
        else:
            leaf = type(value)
            if leaf is str or leaf is int or leaf is bool or leaf is float or value is None or _is_canonical(value):
                continue
            made = _canonical_copy(value)
        if made is not value:
            if out is spec:
                out = dict(spec)
            out[key] = made
    return out


# id → (schema, its canonical form): the schema is held, so its id is not reused while remembered
_SCHEMAS: dict[int, tuple[Any, Any]] = {}


def _canonical_schema(schema: Any) -> Any:
    known = _SCHEMAS.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1]
    if len(_SCHEMAS) >= 256:  # flows of earlier plans in one process (tests, watch): forget them
        _SCHEMAS.clear()
    made = canonical(schema)
    _SCHEMAS[id(schema)] = (schema, made)
    return made


_WHEN_DECLARED_YAML = frozenset(k for keys in DEPLOYMENT_WHEN_DECLARED.values() for k in keys)
_MANAGED: dict[frozenset[str], frozenset[str]] = {}  # by the declared YAML keys that decide it


def _managed(declared: frozenset[str]) -> frozenset[str]:
    """The spec keys a deployment declaring these YAML keys manages: one shared set per kind."""
    deciding = declared & _WHEN_DECLARED_YAML
    found = _MANAGED.get(deciding)
    if found is None:
        extra = {key for key, yaml_keys in DEPLOYMENT_WHEN_DECLARED.items() if deciding & set(yaml_keys)}
        found = _MANAGED[deciding] = frozenset({*DEPLOYMENT_KEYS, *extra})
    return found


def _triggers(d: Deployment, r: _Renderer) -> list[dict[str, Any]]:
    """Prefect's rules: everything is templated except a trigger's `parameters` (event templates,
    filled when the trigger fires), and an unnamed trigger is `<deployment>__automation_<n>`."""
    out = []
    for n, trigger in enumerate(d.triggers, start=1):
        rest = {k: v for k, v in trigger.items() if k != "parameters"}
        item: dict[str, Any] = r.value(rest, f"triggers[{n - 1}]")
        if "parameters" in trigger:
            item["parameters"] = trigger["parameters"]
        if item.get("name") is None:
            item["name"] = f"{d.name}__automation_{n}"
        out.append(item)
    return out


VERSION_TYPES = ("prefect:simple", "vcs:git", "vcs:github", "vcs:gitlab", "vcs:bitbucket", "vcs:azuredevops")


def _version(
    d: Deployment, r: _Renderer, commit: str | None, info: FlowInfo, warnings: list[Diagnostic]
) -> Any:
    """`version` as written; else, as Prefect: with a `vcs:*` version_type the first 8 characters of
    the commit the plan is made from, otherwise the flow's version (`@flow(version=...)`, else the
    MD5 of the flow's file). Unlike Prefect, an unset version_type does not try git: a version
    that follows every commit would make every plan change every deployment."""
    if d.version is not None:
        return r.value(d.version, "version")
    kind = d.version_type
    if kind is None:
        return info.version
    if kind not in VERSION_TYPES:
        raise DesiredStateError(
            f"deployment {d.name!r}: unknown version_type {kind!r}",
            location=d.location,
            path=f"{d.path}.version_type",
            hint="one of " + ", ".join(VERSION_TYPES),
        )
    if not kind.startswith("vcs:"):
        return info.version
    if commit is None:
        warnings.append(
            Diagnostic(
                "warning",
                f"deployment {d.name!r} has version_type {kind} but the project is not in a git repository "
                "with a commit; its version is the flow's (the MD5 of its file)",
                d.location,
                d.path,
                "commit the project, or set `version:`",
            )
        )
        return info.version
    return commit[:8]


def _flow(entrypoint: str, read: SourceReader, cache: dict[str, FlowInfo]) -> FlowInfo:
    if entrypoint not in cache:
        cache[entrypoint] = flow_info(entrypoint, read)
    return cache[entrypoint]


def _with_defaults(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` (a dict the caller just made) with the create defaults it lacks added at its end."""
    for key, value in CREATE_DEFAULTS[kind].items():
        spec.setdefault(key, value)
    return spec


def _tags(value: Any) -> Any:
    if value is UNKNOWN or value is None:
        return [] if value is None else value
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list | tuple):
        return [v if v is UNKNOWN else str(v) for v in value]
    return [str(value)]


def _concurrency_options(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Prefect stores both keys of the mapping form (an unset grace period as null)."""
    if not options:
        return None
    return {"grace_period_seconds": None, **options}


def _schedule(s: ScheduleSpec, r: _Renderer, where: str) -> dict[str, Any]:
    """Stored as Prefect stores it: cron with `day_or` (default true), intervals and rrules in UTC
    unless a timezone is given, rrules with Prefect's default DTSTART, anchor dates in ISO 8601 (`Z` for UTC). Unlike Prefect, an interval without an
    anchor_date is not anchored at deploy time (which moves it on every deploy) but at the
    deployment's creation (buildsys.schedules)."""
    value = r.value(s.value, where)
    item: dict[str, Any] = {s.kind: _rrule_text(value) if s.kind == "rrule" else value}
    timezone = s.timezone if s.timezone is not None or s.kind == "cron" else "UTC"
    day_or = s.day_or if s.day_or is not None or s.kind != "cron" else True
    for key, value in (
        ("timezone", timezone),
        ("anchor_date", _iso_text(s.anchor_date)),
        ("day_or", day_or),
        ("slug", s.slug),
    ):
        if value is not None:
            item[key] = value
    active = r.value(s.active, f"{where}.active")
    item["active"] = _truthy(active)
    item["parameters"] = r.value(dict(s.parameters), f"{where}.parameters")
    return item


def _rrule_text(value: Any) -> Any:
    """An RRULE as Prefect stores it: without its own DTSTART it starts 2020-01-01 00:00 (so
    `FREQ=DAILY;BYHOUR=3` runs at 03:00:00, not at the minute the deployment was created)."""
    from datetime import datetime

    from dateutil import rrule as dateutil_rrule

    if not isinstance(value, str) or "{{" in value or value.lstrip().startswith("{") or "DTSTART" in value.upper():
        return value
    try:
        rule = dateutil_rrule.rrulestr(value, dtstart=datetime(2020, 1, 1))
    except (ValueError, TypeError):
        return value  # the schedule checks report it
    return str(rule).replace("\nRRULE:", "\n") if isinstance(rule, dateutil_rrule.rrule) else value


def _iso_text(value: str | None) -> str | None:
    """An ISO datetime as Prefect returns it (`T`, a zero offset as `Z`); anything else as written."""
    if value is None or "{{" in value:
        return value
    from datetime import datetime, timedelta

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    text = moment.isoformat()
    return text[:-6] + "Z" if moment.utcoffset() == timedelta(0) else text


def _truthy(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "on")
    return value if value is UNKNOWN else bool(value)


class _Renderer:
    """Renders one deployment's fields with its build/push outputs (UNKNOWN when not built)."""

    __slots__ = ("built_ids", "deployment", "fields", "scope")

    def __init__(self, scope: Scope, deployment: Deployment) -> None:
        self.scope = scope
        self.deployment = deployment
        self.fields: JsonRenderer | None = None
        self.built_ids = frozenset(s.label for s in (*deployment.build, *deployment.push))

    def value(self, value: Any, where: str) -> Any:
        kind = type(value)
        if (kind is str and "{{" not in value) or kind is bool or kind is int or kind is float or value is None:
            return value  # what render gives back for a plain value, without making a renderer
        fields = self.fields
        if fields is None:  # one renderer for every templated field of the deployment
            d = self.deployment
            fields = self.fields = JsonRenderer(self.scope, "unknown", d.location, d.path, canonical)
        return fields.field(value, where)

    def pull_steps(self, steps: Sequence[StepSpec]) -> list[dict[str, Any]]:
        """Pull steps keep block and variable placeholders for run time, and get the outputs of
        build/push steps and the environment now (as Prefect does); an unset variable is an error."""
        out = []
        pull_scope = Scope(
            outputs=self.scope.outputs,
            ids=self.scope.ids,
            env=self.scope.env,
            pending=self.scope.pending,
            secrets=self.scope.secrets,
        )
        for step in steps:
            raw = dict(step.raw) if step.raw else {step.name: dict(step.inputs)}
            where = f"{self.deployment.path}.pull[{step.index}]"
            texts: list[str] = []
            templated(raw, texts)  # most pull steps hold no placeholder: then nothing below can find one
            if texts and self.scope.env is not None:
                _check_env(raw, self.scope.env, step.location or self.deployment.location, where)
            rendered = render(raw, pull_scope, missing="keep", location=step.location, path=where, json_shaped=canonical)
            out.append(self._unknown_if_pending(rendered) if texts else rendered)
        return out

    def _unknown_if_pending(self, value: Any) -> Any:
        if isinstance(value, str):
            if "{{" not in value:
                return value
            pending = any(p.kind == "output" and p.step_id in self.built_ids for p in placeholders(value))
            return UNKNOWN if pending else value
        if isinstance(value, Mapping):
            return {k: self._unknown_if_pending(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._unknown_if_pending(v) for v in value]
        return value


def _no_blocks_in_parameters(d: Deployment, spec: Mapping[str, Any]) -> None:
    """Prefect resolves a block in `parameters` when deploying and stores its (secret) value in
    plain text; buildsys never stores block values, and a flow must not receive the template
    text either, so it is refused."""
    found = [p for p in placeholders([spec.get("parameters"), spec.get("schedules")]) if p.kind == "block"]
    if found:
        raise DesiredStateError(
            f"deployment {d.name!r}: {found[0].text} in parameters would store the block's value with the "
            "deployment (Prefect stores it in plain text)",
            location=d.location,
            path=f"{d.path}.parameters",
            hint="pass the block's name as the parameter and load it in the flow (e.g. Secret.load(name))",
        )


def _check_env(value: Any, env: Mapping[str, str], location: Location | None, where: str) -> None:
    """Every `{{ $NAME }}` in `value` is set (Prefect would leave it for the worker's environment)."""
    for p in placeholders(value):
        name = str(p.keypath[0]) if p.keypath else ""
        if p.kind == "env" and name not in env:
            from buildsys.errors import TemplateError

            raise TemplateError(
                f"environment variable {name} is not set (used as {p.text})",
                location=location,
                path=where,
                hint=f"export {name}=… before planning: environment values are resolved at plan time, "
                "as `prefect deploy` resolves them",
            )


def _scope(d: Deployment, outputs: BuildOutputs | None, deploy_time: DeployTime) -> Scope:
    env, variables = deploy_time.env, deploy_time.variables
    if not (d.build or d.push) and outputs is not None and not outputs.namespace and not outputs.pending:
        # nothing built for it (most deployments of a large project): what the lines below make of nothing
        return Scope(outputs={FLAT: {}}, ids=_NO_IDS, pending=_NO_IDS, env=env, variables=variables)
    steps = (*d.build, *d.push)
    ids = frozenset(s.id for s in steps if s.id)
    if outputs is None:
        return Scope(
            outputs={}, ids=ids, pending=frozenset(s.label for s in steps), env=env, variables=variables
        )
    ns = outputs.namespace
    by_id = {k: v for k, v in ns.items() if k in ids and isinstance(v, Mapping)}
    flat = {k: v for k, v in ns.items() if k not in ids}
    # the flat merge is one more producer, so `{{ key }}` finds outputs of steps without an id
    return Scope(
        outputs={**by_id, FLAT: flat},
        ids=ids,
        pending=frozenset(outputs.pending),
        env=env,
        variables=variables,
    )


_NO_IDS: frozenset[str] = frozenset()


def _note_secrets(d: Deployment, scope: Scope, deploy_time: DeployTime, warnings: list[Diagnostic]) -> None:
    """A value from a secret-looking environment variable is stored (the flow needs it): say so,
    name the way to keep it out of the store, and remember it so every view of the plan masks it."""
    env = deploy_time.env
    if env is None or not scope.secrets:
        return
    texts = d.templates  # the loader noted them
    used = None if texts is None else deploy_time.secret_names.get(texts)
    if used is None:
        used = sorted(
            {
                str(p.keypath[0])
                for p in placeholders(d.raw if texts is None else texts)
                if p.kind == "env" and secret_env_name(str(p.keypath[0])) and str(p.keypath[0]) in env
            }
        )
        if texts is not None:
            deploy_time.secret_names[texts] = used
    for name in used:
        value = env[name]
        if value not in scope.secrets:
            continue
        deploy_time.sensitive[value] = f"${name}"
        block = _block_name(name)
        warnings.append(
            Diagnostic(
                "warning",
                f"deployment {d.name!r}: the value of ${name} (a secret, by its name) is resolved now and "
                "stored with the deployment, as `prefect deploy` does",
                d.location,
                d.path,
                f"to keep it out of the store, put it in a Secret block and write "
                f"`{{{{ prefect.blocks.secret.{block} }}}}` (resolved when the run starts)",
            )
        )


@lru_cache(maxsize=1024)
def _block_name(name: str) -> str:
    """The Secret block a warning suggests for the environment variable `name`."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def canonical(value: Any) -> Any:
    """JSON-shaped: tuples become lists, mappings plain dicts with str keys, dates ISO text
    (UNKNOWN is kept). A value that already is JSON-shaped is returned as is, not copied, so the
    deployments of one flow share one parameter schema."""
    return value if _is_canonical(value) else _canonical_copy(value)


def _is_canonical(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None or value is UNKNOWN:
        return True
    if kind is dict:
        for k, v in value.items():  # loops, not all(...): no generator per call on this hot path
            if type(k) is not str:
                return False
            leaf = type(v)  # a text or number is canonical: no call for it (most of a spec)
            if not (leaf is str or leaf is int or leaf is bool or leaf is float or v is None or _is_canonical(v)):
                return False
        return True
    if kind is list:
        for v in value:
            leaf = type(v)  # as above
            if not (leaf is str or leaf is int or leaf is bool or leaf is float or v is None or _is_canonical(v)):
                return False
        return True
    return False


def _canonical_copy(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict or isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [canonical(v) for v in value]
    if isinstance(value, date | time):  # YAML dates: stored as JSON does, ISO 8601 text
        return value.isoformat()
    return value


def has_unknown(value: Any) -> bool:
    """True when a value still holds UNKNOWN somewhere (a build output not produced yet)."""
    kind = type(value)
    if kind is str:
        return UNKNOWN_TEXT in value  # an output embedded in a longer string
    if kind is int or kind is float or kind is bool or value is None:
        return False
    if value is UNKNOWN:
        return True
    if kind is dict or isinstance(value, Mapping):
        return any(has_unknown(v) for v in value.values())
    if kind is list or kind is tuple:
        return any(has_unknown(v) for v in value)
    return False


def known_later(value: Any) -> bool:
    """A value known only when the run starts or after the build (a whole `{{ … }}` template, an
    unbuilt output): its type cannot be checked now."""
    if isinstance(value, str):
        text = value.strip()
        return text.startswith("{{") and text.endswith("}}")
    return has_unknown(value)


# --- from a project file (working tree or git revision) -----------------------------------------


def read_desired(
    project_file: Path,
    *,
    ref: str | None = None,
    select: Sequence[str] | None = None,
    outputs: Callable[[Project], OutputsFor | None] | None = None,
    strict: bool = False,
    loaded: Project | None = None,
    env: Mapping[str, str] | None = None,
    variables: Mapping[str, Any] | None = None,
    only: Collection[str] | None = None,
    flows: dict[str, FlowInfo] | None = None,
) -> tuple[Project, DesiredState]:
    """Load the project at `ref` (or the working tree) and compute its desired state.

    `outputs` gives, for the loaded project, the build outputs of each deployment (from the cache
    for `plan`, from the build just run for `deploy`); without it every output is UNKNOWN.
    `loaded` is the working tree's project when the caller already has it (deploy built from it).
    `env` / `variables` resolve deploy-time placeholders (plan and apply pass the process
    environment and the store's variables); without them those placeholders stay as written.
    `flows`: entrypoints the caller already read from the same files (`desired_state`).
    """
    from buildsys.collector import gc_paused
    from buildsys.project import load_project
    from buildsys.revision import open_revision

    rev = open_revision(project_file, ref)
    with gc_paused(), _closing(rev):
        if loaded is not None and ref is None:
            project = loaded
        else:
            project = load_project(project_file, strict=strict, text=rev.text, file_exists=rev.exists)
        from buildsys.validation import require_references

        require_references(project, text=rev.text)  # refused here exactly as `validate` refuses it
        owner = project_identity(project, remote_url=rev.remote_url, file_in_repo=rev.file_in_repo)
        state = desired_state(
            project,
            owner=owner,
            source=rev.source(),
            read=rev.read,
            outputs=outputs(project) if outputs else None,
            select=select,
            env=env,
            variables=variables,
            only=only,
            flows=flows,
        )
    return project, state


@contextmanager
def _closing(rev: Revision) -> Iterator[None]:
    try:
        yield
    finally:
        rev.close()


