"""The typed project model: what the loader narrows a prefect.yaml into.

Frozen dataclasses with a source location on every node. Nothing after the loader handles raw
YAML; mappings kept here (step inputs, parameters, job variables) are JSON-like values that are
templates to be rendered later, so they stay as plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.errors import Diagnostic, Location

# Keys every step accepts besides its inputs (buildsys: `needs`, `inputs`): never passed to the step.
RESERVED_STEP_KEYS = ("id", "requires", "needs", "inputs")


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step as written: `- step.name: {id, requires, needs, inputs, **kwargs}`."""

    name: str  # as written (short name, Prefect alias, dotted path or file.py:func)
    inputs: Mapping[str, Any]  # kwargs, un-rendered templates; reserved keys removed
    section: str  # build | push | pull
    index: int  # position in its list
    location: Location | None
    path: str  # document path, e.g. "deployments[etl].build[0: build_image]"
    id: str | None = None
    requires: tuple[str, ...] = ()
    needs: tuple[str, ...] | None = None  # buildsys: explicit ordering, replaces the implicit edge
    input_globs: tuple[str, ...] = ()  # buildsys: files the step reads, relative to the root
    raw: Mapping[str, Any] = field(default_factory=dict)  # the whole mapping as written
    input_locations: Mapping[str, Location] = field(default_factory=dict)  # each input's key, for errors

    @property
    def label(self) -> str:
        return self.id or f"{self.name.rsplit('.', 1)[-1]}#{self.index}"


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """One schedule item: exactly one of cron / interval / rrule."""

    kind: str  # cron | interval | rrule
    value: Any  # cron string, interval seconds (float) or rrule string
    timezone: str | None = None
    active: Any = True  # bool, or a template string
    parameters: Mapping[str, Any] = field(default_factory=dict)
    slug: str | None = None
    replaces: str | None = None
    anchor_date: str | None = None
    day_or: bool | None = None
    location: Location | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkPoolRef:
    """A deployment's `work_pool:` block."""

    name: str | None = None
    work_queue_name: str | None = None
    job_variables: Mapping[str, Any] = field(default_factory=dict)
    location: Location | None = None


@dataclass(frozen=True, slots=True)
class Deployment:
    """One `deployments[*]` entry, with build/push/pull already resolved per Prefect's rules."""

    name: str
    index: int
    location: Location | None
    path: str
    entrypoint: str | None = None
    flow_name: str | None = None  # as declared (Prefect ignores it; we derive from the entrypoint)
    version: Any = None
    version_type: str | None = None
    description: str | None = None
    tags: Any = ()  # tuple of str, or a template string
    parameters: Mapping[str, Any] = field(default_factory=dict)
    enforce_parameter_schema: bool | None = None
    schedules: tuple[ScheduleSpec, ...] = ()
    paused: bool | None = None
    concurrency_limit: int | None = None
    concurrency_options: Mapping[str, Any] | None = None
    retries: int | None = None  # buildsys: reschedule a Failed/Crashed run this many times
    retry_delay_seconds: float | None = None
    work_pool: WorkPoolRef = field(default_factory=WorkPoolRef)
    # Effective sections after §1.5 resolution (top level vs per deployment).
    build: tuple[StepSpec, ...] = ()
    push: tuple[StepSpec, ...] = ()
    pull: tuple[StepSpec, ...] = ()
    pull_is_default: bool = False  # pull steps were generated (no pull configured)
    build_is_own: bool = False  # the deployment has its own `build:` key
    push_is_own: bool = False
    pull_is_own: bool = False
    triggers: tuple[Mapping[str, Any], ...] = ()
    sla: tuple[Mapping[str, Any], ...] | None = None
    declared: frozenset[str] = frozenset()  # the keys the project declared for this deployment
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    priority: int | None = None
    concurrency_limit: int | None = None
    description: str | None = None
    paused: bool | None = None
    location: Location | None = None


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A buildsys `work_pools[*]` entry."""

    name: str
    type: str  # process | docker | kubernetes
    location: Location | None
    path: str
    description: str | None = None
    concurrency_limit: int | None = None
    paused: bool | None = None
    job_variables: Mapping[str, Any] = field(default_factory=dict)  # new defaults for variables
    base_job_template: Mapping[str, Any] | None = None  # a whole template, Prefect's format
    queues: tuple[QueueSpec, ...] = ()
    declared: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class VariableSpec:
    name: str
    value: Any
    location: Location | None = None


@dataclass(frozen=True, slots=True)
class Project:
    """A loaded, validated project file."""

    file: Path  # the project file
    root: Path  # the project root (the directory commands run from; entrypoints are relative to it)
    name: str | None
    prefect_version: str | None
    build: tuple[StepSpec, ...]
    push: tuple[StepSpec, ...]
    pull: tuple[StepSpec, ...] | None
    deployments: tuple[Deployment, ...]
    work_pools: tuple[PoolSpec, ...] = ()
    variables: tuple[VariableSpec, ...] = ()
    warnings: tuple[Diagnostic, ...] = ()
    recipe: Mapping[str, Any] | None = None  # buildsys: where the project was rendered from
    data: Mapping[str, Any] = field(default_factory=dict)  # the document after YAML expansion

    def deployment(self, name: str) -> Deployment | None:
        for d in self.deployments:
            if d.name == name:
                return d
        return None
