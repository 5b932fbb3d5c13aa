"""The typed project model: what the loader narrows a prefect.yaml into.

Frozen records (`buildsys.records`: a frozen dataclass's behaviour without generating its methods
at import) with a source location on every node. Nothing after the loader handles raw
YAML; mappings kept here (step inputs, parameters, job variables) are JSON-like values that are
templates to be rendered later, so they stay as plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from buildsys.errors import Diagnostic, Location
from buildsys.records import NEW_DICT, Record

_set = object.__setattr__

# Keys every step accepts besides its inputs (buildsys: `needs`, `inputs`): never passed to the step.
RESERVED_STEP_KEYS = ("id", "requires", "needs", "inputs")


class StepSpec(Record):
    """One step as written: `- step.name: {id, requires, needs, inputs, **kwargs}`."""

    __slots__ = __match_args__ = (
        "name", "inputs", "section", "index", "location", "path", "id", "requires", "needs", "input_globs", "raw",
        "input_locations",
    )
    name: str  # as written (short name, Prefect alias, dotted path or file.py:func)
    inputs: Mapping[str, Any]  # kwargs, un-rendered templates; reserved keys removed
    section: str  # build | push | pull
    index: int  # position in its list
    location: Location | None
    path: str  # document path, e.g. "deployments[etl].build[0: build_image]"
    id: str | None
    requires: tuple[str, ...]
    needs: tuple[str, ...] | None  # buildsys: explicit ordering, replaces the implicit edge
    input_globs: tuple[str, ...]  # buildsys: files the step reads, relative to the root
    raw: Mapping[str, Any]  # the whole mapping as written
    input_locations: Mapping[str, Location]  # each input's key, for errors

    def __init__(
        self,
        name: str,
        inputs: Mapping[str, Any],
        section: str,
        index: int,
        location: Location | None,
        path: str,
        id: str | None = None,
        requires: tuple[str, ...] = (),
        needs: tuple[str, ...] | None = None,
        input_globs: tuple[str, ...] = (),
        raw: Mapping[str, Any] = NEW_DICT,
        input_locations: Mapping[str, Location] = NEW_DICT,
    ) -> None:
        _set(self, "name", name)
        _set(self, "inputs", inputs)
        _set(self, "section", section)
        _set(self, "index", index)
        _set(self, "location", location)
        _set(self, "path", path)
        _set(self, "id", id)
        _set(self, "requires", requires)
        _set(self, "needs", needs)
        _set(self, "input_globs", input_globs)
        _set(self, "raw", {} if raw is NEW_DICT else raw)
        _set(self, "input_locations", {} if input_locations is NEW_DICT else input_locations)

    @property
    def label(self) -> str:
        return self.id or f"{self.name.rsplit('.', 1)[-1]}#{self.index}"


class ScheduleSpec(Record):
    """One schedule item: exactly one of cron / interval / rrule."""

    __slots__ = __match_args__ = (
        "kind", "value", "timezone", "active", "parameters", "slug", "replaces", "anchor_date", "day_or",
        "location", "raw",
    )
    kind: str  # cron | interval | rrule
    value: Any  # cron string, interval seconds (float) or rrule string
    timezone: str | None
    active: Any  # bool, or a template string
    parameters: Mapping[str, Any]
    slug: str | None
    replaces: str | None
    anchor_date: str | None
    day_or: bool | None
    location: Location | None
    raw: Mapping[str, Any]

    def __init__(
        self,
        kind: str,
        value: Any,
        timezone: str | None = None,
        active: Any = True,
        parameters: Mapping[str, Any] = NEW_DICT,
        slug: str | None = None,
        replaces: str | None = None,
        anchor_date: str | None = None,
        day_or: bool | None = None,
        location: Location | None = None,
        raw: Mapping[str, Any] = NEW_DICT,
    ) -> None:
        _set(self, "kind", kind)
        _set(self, "value", value)
        _set(self, "timezone", timezone)
        _set(self, "active", active)
        _set(self, "parameters", {} if parameters is NEW_DICT else parameters)
        _set(self, "slug", slug)
        _set(self, "replaces", replaces)
        _set(self, "anchor_date", anchor_date)
        _set(self, "day_or", day_or)
        _set(self, "location", location)
        _set(self, "raw", {} if raw is NEW_DICT else raw)


class WorkPoolRef(Record):
    """A deployment's `work_pool:` block."""

    __slots__ = __match_args__ = ("name", "work_queue_name", "job_variables", "location")
    name: str | None
    work_queue_name: str | None
    job_variables: Mapping[str, Any]
    location: Location | None

    def __init__(
        self,
        name: str | None = None,
        work_queue_name: str | None = None,
        job_variables: Mapping[str, Any] = NEW_DICT,
        location: Location | None = None,
    ) -> None:
        _set(self, "name", name)
        _set(self, "work_queue_name", work_queue_name)
        _set(self, "job_variables", {} if job_variables is NEW_DICT else job_variables)
        _set(self, "location", location)


_NEW_POOL = WorkPoolRef()  # a default: each deployment gets a new WorkPoolRef (never this one)


class Deployment(Record):
    """One `deployments[*]` entry, with build/push/pull already resolved per Prefect's rules."""

    __slots__ = __match_args__ = (
        "name", "index", "location", "path", "entrypoint", "flow_name", "version", "version_type", "description",
        "tags", "parameters", "enforce_parameter_schema", "schedules", "paused", "concurrency_limit",
        "concurrency_options", "retries", "retry_delay_seconds", "work_pool", "build", "push", "pull",
        "pull_is_default", "build_is_own", "push_is_own", "pull_is_own", "triggers", "sla", "declared", "raw",
        "templates",
    )
    name: str
    index: int
    location: Location | None
    path: str
    entrypoint: str | None
    flow_name: str | None  # as declared (Prefect ignores it; we derive from the entrypoint)
    version: Any
    version_type: str | None
    description: str | None
    tags: Any  # tuple of str, or a template string
    parameters: Mapping[str, Any]
    enforce_parameter_schema: bool | None
    schedules: tuple[ScheduleSpec, ...]
    paused: bool | None
    concurrency_limit: int | None
    concurrency_options: Mapping[str, Any] | None
    retries: int | None  # buildsys: reschedule a Failed/Crashed run this many times
    retry_delay_seconds: float | None
    work_pool: WorkPoolRef
    # Effective sections after §1.5 resolution (top level vs per deployment).
    build: tuple[StepSpec, ...]
    push: tuple[StepSpec, ...]
    pull: tuple[StepSpec, ...]
    pull_is_default: bool  # pull steps were generated (no pull configured)
    build_is_own: bool  # the deployment has its own `build:` key
    push_is_own: bool
    pull_is_own: bool
    triggers: tuple[Mapping[str, Any], ...]
    sla: tuple[Mapping[str, Any], ...] | None
    declared: frozenset[str]  # the keys the project declared for this deployment
    raw: Mapping[str, Any]
    # The strings in `raw` that hold `{{`, as `templating.templated(raw)` finds them, when the
    # loader noted them (None: not known, walk `raw`)
    templates: tuple[str, ...] | None

    def __init__(
        self,
        name: str,
        index: int,
        location: Location | None,
        path: str,
        entrypoint: str | None = None,
        flow_name: str | None = None,
        version: Any = None,
        version_type: str | None = None,
        description: str | None = None,
        tags: Any = (),
        parameters: Mapping[str, Any] = NEW_DICT,
        enforce_parameter_schema: bool | None = None,
        schedules: tuple[ScheduleSpec, ...] = (),
        paused: bool | None = None,
        concurrency_limit: int | None = None,
        concurrency_options: Mapping[str, Any] | None = None,
        retries: int | None = None,
        retry_delay_seconds: float | None = None,
        work_pool: WorkPoolRef = _NEW_POOL,
        build: tuple[StepSpec, ...] = (),
        push: tuple[StepSpec, ...] = (),
        pull: tuple[StepSpec, ...] = (),
        pull_is_default: bool = False,
        build_is_own: bool = False,
        push_is_own: bool = False,
        pull_is_own: bool = False,
        triggers: tuple[Mapping[str, Any], ...] = (),
        sla: tuple[Mapping[str, Any], ...] | None = None,
        declared: frozenset[str] = frozenset(),
        raw: Mapping[str, Any] = NEW_DICT,
        templates: tuple[str, ...] | None = None,
    ) -> None:
        _set(self, "name", name)
        _set(self, "index", index)
        _set(self, "location", location)
        _set(self, "path", path)
        _set(self, "entrypoint", entrypoint)
        _set(self, "flow_name", flow_name)
        _set(self, "version", version)
        _set(self, "version_type", version_type)
        _set(self, "description", description)
        _set(self, "tags", tags)
        _set(self, "parameters", {} if parameters is NEW_DICT else parameters)
        _set(self, "enforce_parameter_schema", enforce_parameter_schema)
        _set(self, "schedules", schedules)
        _set(self, "paused", paused)
        _set(self, "concurrency_limit", concurrency_limit)
        _set(self, "concurrency_options", concurrency_options)
        _set(self, "retries", retries)
        _set(self, "retry_delay_seconds", retry_delay_seconds)
        _set(self, "work_pool", WorkPoolRef() if work_pool is _NEW_POOL else work_pool)
        _set(self, "build", build)
        _set(self, "push", push)
        _set(self, "pull", pull)
        _set(self, "pull_is_default", pull_is_default)
        _set(self, "build_is_own", build_is_own)
        _set(self, "push_is_own", push_is_own)
        _set(self, "pull_is_own", pull_is_own)
        _set(self, "triggers", triggers)
        _set(self, "sla", sla)
        _set(self, "declared", declared)
        _set(self, "raw", {} if raw is NEW_DICT else raw)
        _set(self, "templates", templates)


class QueueSpec(Record):
    __slots__ = __match_args__ = ("name", "priority", "concurrency_limit", "description", "paused", "location")
    name: str
    priority: int | None
    concurrency_limit: int | None
    description: str | None
    paused: bool | None
    location: Location | None

    def __init__(
        self,
        name: str,
        priority: int | None = None,
        concurrency_limit: int | None = None,
        description: str | None = None,
        paused: bool | None = None,
        location: Location | None = None,
    ) -> None:
        _set(self, "name", name)
        _set(self, "priority", priority)
        _set(self, "concurrency_limit", concurrency_limit)
        _set(self, "description", description)
        _set(self, "paused", paused)
        _set(self, "location", location)


class PoolSpec(Record):
    """A buildsys `work_pools[*]` entry."""

    __slots__ = __match_args__ = (
        "name", "type", "location", "path", "description", "concurrency_limit", "paused", "job_variables",
        "base_job_template", "queues", "declared",
    )
    name: str
    type: str  # process | docker | kubernetes
    location: Location | None
    path: str
    description: str | None
    concurrency_limit: int | None
    paused: bool | None
    job_variables: Mapping[str, Any]  # new defaults for variables
    base_job_template: Mapping[str, Any] | None  # a whole template, Prefect's format
    queues: tuple[QueueSpec, ...]
    declared: frozenset[str]

    def __init__(
        self,
        name: str,
        type: str,
        location: Location | None,
        path: str,
        description: str | None = None,
        concurrency_limit: int | None = None,
        paused: bool | None = None,
        job_variables: Mapping[str, Any] = NEW_DICT,
        base_job_template: Mapping[str, Any] | None = None,
        queues: tuple[QueueSpec, ...] = (),
        declared: frozenset[str] = frozenset(),
    ) -> None:
        _set(self, "name", name)
        _set(self, "type", type)
        _set(self, "location", location)
        _set(self, "path", path)
        _set(self, "description", description)
        _set(self, "concurrency_limit", concurrency_limit)
        _set(self, "paused", paused)
        _set(self, "job_variables", {} if job_variables is NEW_DICT else job_variables)
        _set(self, "base_job_template", base_job_template)
        _set(self, "queues", queues)
        _set(self, "declared", declared)


class VariableSpec(Record):
    __slots__ = __match_args__ = ("name", "value", "location")
    name: str
    value: Any
    location: Location | None

    def __init__(
        self,
        name: str,
        value: Any,
        location: Location | None = None,
    ) -> None:
        _set(self, "name", name)
        _set(self, "value", value)
        _set(self, "location", location)


class Project(Record):
    """A loaded, validated project file."""

    __slots__ = __match_args__ = (
        "file", "root", "name", "prefect_version", "build", "push", "pull", "deployments", "work_pools",
        "variables", "warnings", "recipe", "data",
    )
    file: Path  # the project file
    root: Path  # the project root (the directory commands run from; entrypoints are relative to it)
    name: str | None
    prefect_version: str | None
    build: tuple[StepSpec, ...]
    push: tuple[StepSpec, ...]
    pull: tuple[StepSpec, ...] | None
    deployments: tuple[Deployment, ...]
    work_pools: tuple[PoolSpec, ...]
    variables: tuple[VariableSpec, ...]
    warnings: tuple[Diagnostic, ...]
    recipe: Mapping[str, Any] | None  # buildsys: where the project was rendered from
    data: Mapping[str, Any]  # the document after YAML expansion

    def __init__(
        self,
        file: Path,
        root: Path,
        name: str | None,
        prefect_version: str | None,
        build: tuple[StepSpec, ...],
        push: tuple[StepSpec, ...],
        pull: tuple[StepSpec, ...] | None,
        deployments: tuple[Deployment, ...],
        work_pools: tuple[PoolSpec, ...] = (),
        variables: tuple[VariableSpec, ...] = (),
        warnings: tuple[Diagnostic, ...] = (),
        recipe: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] = NEW_DICT,
    ) -> None:
        _set(self, "file", file)
        _set(self, "root", root)
        _set(self, "name", name)
        _set(self, "prefect_version", prefect_version)
        _set(self, "build", build)
        _set(self, "push", push)
        _set(self, "pull", pull)
        _set(self, "deployments", deployments)
        _set(self, "work_pools", work_pools)
        _set(self, "variables", variables)
        _set(self, "warnings", warnings)
        _set(self, "recipe", recipe)
        _set(self, "data", {} if data is NEW_DICT else data)

    def with_root(self, root: Path) -> Project:
        """The same project read from another root (the affected analysis compiles a project file
        of another revision against the files it checked out)."""
        return Project(self.file, root, self.name, self.prefect_version, self.build, self.push, self.pull,
                       self.deployments, self.work_pools, self.variables, self.warnings, self.recipe, self.data)

    def deployment(self, name: str) -> Deployment | None:
        for d in self.deployments:
            if d.name == name:
                return d
        return None
