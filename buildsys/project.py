"""Load a prefect.yaml: YAML with locations → JSON Schema → the typed model in buildsys.model.

Prefect's keys and shapes are accepted as they are, with its section rules (§1.5 of the
compatibility reference); unlike Prefect nothing is silently dropped: unknown keys are warnings with
a did-you-mean (errors under strict), and an invalid file fails before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from buildsys.collector import gc_paused
from buildsys.errors import Diagnostic, Location, ProjectError
from buildsys.model import (
    RESERVED_STEP_KEYS,
    Deployment,
    PoolSpec,
    Project,
    QueueSpec,
    ScheduleSpec,
    StepSpec,
    VariableSpec,
    WorkPoolRef,
)
from buildsys.printable import printable, unsafe_characters
from buildsys.schema import describe_path, schema_problems
from buildsys.sourcefiles import read_source as read_source  # kept importable from here
from buildsys.storable import name_problem, value_problems
from buildsys.yamlsource import Located, SeveralDocuments, YamlError, load_yaml

Path_ = tuple[str | int, ...]
NAME_HINT = (
    "names are stored, put in URLs and FLOW/DEPLOYMENT, and printed: use letters, digits, spaces, "
    "`-`, `_` and `.`"
)
DOCKER_BUILD_NAMES = frozenset(
    {
        "build_docker_image",
        "prefect_docker.deployments.steps.build_docker_image",
        "prefect_docker.projects.steps.build_docker_image",
    }
)


def load_project(
    path: Path | str,
    *,
    strict: bool = False,
    text: str | None = None,
    file_exists: Callable[[str], bool] | None = None,
) -> Project:
    """Load and validate a project file. Raises ProjectError listing every problem found.

    `text` is the file's content when it does not come from disk (`--ref`); `file_exists` then
    answers for files relative to the project root at that revision (entrypoints). Pure: nothing is
    cached here (`buildsys.caches.load_project` is the cached form commands use)."""
    file = Path(path)
    if text is None:
        _, text = read_source(file)
    return parse_project(text, file=str(path), root=file.resolve().parent, strict=strict, file_exists=file_exists)


def parse_project(
    text: str, *, file: str, root: Path, strict: bool = False, file_exists: Callable[[str], bool] | None = None
) -> Project:
    with gc_paused():
        return _parse_project(text, file=file, root=root, strict=strict, file_exists=file_exists)


def _parse_project(
    text: str, *, file: str, root: Path, strict: bool, file_exists: Callable[[str], bool] | None
) -> Project:
    try:
        doc = load_yaml(text, file)
    except SeveralDocuments as exc:
        _check_kind(exc.first)  # a multi-document Kubernetes manifest is said to be one
        raise ProjectError(exc.diagnostics()) from None
    except YamlError as exc:
        raise ProjectError(exc.diagnostics()) from None
    _check_kind(doc)
    problems = [*schema_problems(doc, strict), *_unstorable(doc)]
    if any(p.is_error for p in problems):
        raise ProjectError(_sorted(problems))
    loader = _Narrower(doc, root, problems, file_exists)
    project = loader.project(Path(file))
    if strict:
        problems = [Diagnostic("error", p.message, p.location, p.path, p.hint) for p in problems]
    if any(p.is_error for p in problems):
        raise ProjectError(_sorted(problems))
    return project


def _unstorable(doc: Located) -> Iterator[Diagnostic]:
    """Values the store could not hold as written (huge integers, NaN, NUL, lone surrogates): an
    error here, where the file says them, not a crash of apply. The loader already looked at every
    value it built (`Located.storable`): the document is walked again only when it saw one."""
    if doc.storable:
        return
    data = doc.value if isinstance(doc.value, dict) else {}
    for at, problem in value_problems(doc.value):
        yield Diagnostic(
            "error", problem, doc.loc(at), describe_path(data, at),
            "quote it to keep it as text, or use a value in range" if "integer" in problem else None,
        )  # fmt: skip


def _sorted(problems: Sequence[Diagnostic]) -> list[Diagnostic]:
    def key(d: Diagnostic) -> tuple[int, int, int]:
        loc = d.location
        return (0 if d.is_error else 1, loc.line if loc else 0, loc.col if loc else 0)

    return sorted(problems, key=key)


def _check_kind(doc: Located) -> None:
    """A file that is YAML but not a prefect.yaml gets one clear sentence."""
    value = doc.value
    here = Location(doc.file, 1, 1)
    if value is None:
        return
    if not isinstance(value, dict):
        kind = "a list" if isinstance(value, list) else f"a single {type(value).__name__} value"
        raise ProjectError(
            [Diagnostic("error", f"{doc.file} is {kind}, not a prefect.yaml project (a mapping of keys)", here)]
        )
    if "apiVersion" in value and "kind" in value:
        raise ProjectError(
            [
                Diagnostic(
                    "error",
                    f"{doc.file} looks like a Kubernetes manifest (kind: {value.get('kind')}), not a prefect.yaml",
                    here,
                    hint="point -f at the project's prefect.yaml",
                )
            ]
        )
    if "services" in value and not ({"deployments", "build", "push", "pull"} & set(value)):
        raise ProjectError(
            [
                Diagnostic(
                    "error",
                    f"{doc.file} looks like a docker-compose file (it has `services:`), not a prefect.yaml",
                    here,
                    hint="point -f at the project's prefect.yaml",
                )
            ]
        )


# --- narrowing into the model ---------------------------------------------------------------------


class _Narrower:
    """Turns the validated document into frozen dataclasses, applying Prefect's section rules."""

    def __init__(
        self, doc: Located, root: Path, problems: list[Diagnostic], file_exists: Callable[[str], bool] | None = None
    ) -> None:
        self.doc = doc
        exists = file_exists or (lambda rel: (root / rel).is_file())
        known: dict[str, bool] = {}  # many deployments name one flow file: ask once per file

        def file_exists_once(rel: str) -> bool:
            found = known.get(rel)
            if found is None:
                found = known[rel] = exists(rel)
            return found

        self.file_exists = file_exists_once
        self.data: dict[str, Any] = doc.value if isinstance(doc.value, dict) else {}
        self.root = root
        self.problems = problems
        # the deployment being narrowed (its path, that path described, its value): its steps'
        # paths are described from there, not walked from the top again
        self.inside: tuple[Path_, str, Any] = ((), "", self.data)

    def error(self, message: str, path: Path_, hint: str | None = None) -> None:
        self.problems.append(
            Diagnostic("error", message, self.doc.loc(path), describe_path(self.data, path), hint)
        )

    def check_name(self, value: Any, path: Path_, what: str, *, characters_only: bool = False) -> None:
        """A name the store could not hold or address, or a terminal could not show, is an error."""
        if not isinstance(value, str) or value == "":  # an empty name is an absent one (said elsewhere)
            return
        problem = name_problem(value)
        if characters_only and problem and unsafe_characters(value) == []:
            return
        if problem:
            shown = printable(value, one_line=True)
            self.error(f"{what} '{shown}' {problem}", path, NAME_HINT)

    def warn(self, message: str, path: Path_, hint: str | None = None) -> None:
        self.problems.append(
            Diagnostic("warning", message, self.doc.loc(path), describe_path(self.data, path), hint)
        )

    def project(self, file: Path) -> Project:
        d = self.data
        top: dict[str, tuple[StepSpec, ...] | None] = {
            s: self.section(d.get(s), (s,), s) for s in ("build", "push", "pull")
        }
        deployments = self.deployments(d.get("deployments"), top)
        meta: dict[str, Any] = d["buildsys"] if isinstance(d.get("buildsys"), dict) else {}
        return Project(
            file=file,
            root=self.root,
            name=_str_or_none(d.get("name")),
            prefect_version=_str_or_none(d.get("prefect-version", d.get("prefect_version"))),
            build=top["build"] or (),
            push=top["push"] or (),
            pull=top["pull"],
            deployments=deployments,
            work_pools=self.pools(d.get("work_pools")),
            variables=self.variables(d.get("variables")),
            warnings=tuple(p for p in self.problems if not p.is_error),
            recipe=meta.get("recipe") if isinstance(meta.get("recipe"), dict) else None,
            data=d,
        )

    def section(self, value: Any, path: Path_, name: str) -> tuple[StepSpec, ...] | None:
        """None when absent/null; a tuple (possibly empty) otherwise. A single mapping is one step."""
        if value is None:
            return None
        if isinstance(value, dict):
            if not value:
                return None
            value = [value]
            single = True
        else:
            single = False
        if not isinstance(value, list):
            self.error(f"`{name}` must be a list of steps", path)
            return ()
        steps = []
        for i, item in enumerate(value):
            spec = self.step(item, path if single else (*path, i), name, i)
            if spec is not None:
                steps.append(spec)
        return tuple(steps)

    def step(self, item: Any, path: Path_, section: str, index: int) -> StepSpec | None:
        if not isinstance(item, dict) or len(item) != 1:
            if isinstance(item, dict) and not item:
                return None  # Prefect skips an empty mapping
            self.error(
                "a step must be a mapping with exactly one key: the step's name",
                path,
                "indent the step's inputs under its name",
            )
            return None
        (name, body), = item.items()
        if body is None:
            body = {}
            self.error(
                f"step {name!r} has no inputs mapping (Prefect crashes on this)",
                (*path, name),
                f"write `- {name}: {{}}` for a step without inputs",
            )
        if not isinstance(body, dict):
            self.error(f"the inputs of step {name!r} must be a mapping", (*path, name))
            return None
        sid = body.get("id")
        requires = body.get("requires") or ()
        needs = body.get("needs")
        globs = body.get("inputs") or ()
        if sid is not None and not isinstance(sid, str):
            self.error("a step id must be a string", (*path, name, "id"), f'quote it: id: "{sid}"')
            sid = str(sid)
        self.check_name(sid, (*path, name, "id"), "step id", characters_only=True)
        return StepSpec(
            name=str(name),
            inputs={k: v for k, v in body.items() if k not in RESERVED_STEP_KEYS},
            section=section,
            index=index,
            location=self.doc.at(item, name, (*path, name)),
            path=self.describe(path),
            id=sid,
            requires=(requires,) if isinstance(requires, str) else tuple(str(r) for r in requires),
            needs=None if needs is None else tuple(str(n) for n in (needs if isinstance(needs, list) else [needs])),
            input_globs=(globs,) if isinstance(globs, str) else tuple(str(g) for g in globs),
            raw=item,
            input_locations={
                str(k): where for k, where in zip(body, self.doc.keys_at(body, (*path, name)), strict=True) if where is not None
            },
        )

    def describe(self, path: Path_) -> str:
        """`describe_path(self.data, path)`, from the deployment being narrowed when inside it."""
        at, text, value = self.inside
        if path[: len(at)] == at:
            return describe_path(value, path[len(at) :], text)
        return describe_path(self.data, path)

    def deployments(self, value: Any, top: Mapping[str, tuple[StepSpec, ...] | None]) -> tuple[Deployment, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error("`deployments` must be a list", ("deployments",))
            return ()
        out: list[Deployment] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(value):
            path: Path_ = ("deployments", i)
            if raw is None:
                self.warn("empty deployment entry (ignored)", path)
                continue
            if not isinstance(raw, dict):
                self.error("a deployment must be a mapping", path)
                continue
            dep = self.deployment(raw, path, i, top, self.doc.at(value, i, path))
            if dep is None:
                continue
            if dep.name in seen:
                self.error(
                    f"deployment name {dep.name!r} is used twice (entries {seen[dep.name]} and {i})",
                    (*path, "name"),
                    "deployment names must be unique within a project",
                )
            seen[dep.name] = i
            out.append(dep)
        return tuple(out)

    def deployment(
        self,
        raw: dict[str, Any],
        path: Path_,
        index: int,
        top: Mapping[str, tuple[StepSpec, ...] | None],
        location: Location | None,
    ) -> Deployment | None:
        name = raw.get("name")
        if name is None or name == "":
            self.warn(
                "deployment entry without a `name` is skipped (as `prefect deploy` skips it)",
                path,
                "give it a `name:`, or delete the skeleton entry",
            )
            return None
        name = str(name)
        if name.endswith(".py"):
            name = name[:-3]
        described = describe_path(self.data, path)
        self.inside = (path, described, raw)
        self.check_name(name, (*path, "name"), "deployment name")
        self.check_name(raw.get("flow_name"), (*path, "flow_name"), "flow name")
        own: dict[str, tuple[StepSpec, ...] | None] = {
            s: self.section(raw.get(s), (*path, s), s) for s in ("build", "push", "pull") if s in raw
        }
        build = own["build"] if "build" in own else top["build"]
        push = own["push"] if "push" in own else top["push"]
        pull, pull_default = self.effective_pull(raw, own, top, build or ())
        wp: dict[str, Any] = raw["work_pool"] if isinstance(raw.get("work_pool"), dict) else {}
        wp = self.legacy_work_pool(raw, wp, path)
        self.check_name(wp.get("name"), (*path, "work_pool", "name"), "work pool name")
        self.check_name(wp.get("work_queue_name"), (*path, "work_pool", "work_queue_name"), "work queue name")
        paused = self.legacy_paused(raw, path)
        entrypoint = _str_or_none(raw.get("entrypoint"))
        if entrypoint is None:
            self.warn("deployment has no `entrypoint`", (*path, "name"), "add `entrypoint: path/file.py:flow_function`")
        else:
            self.check_entrypoint(entrypoint, (*path, "entrypoint"))
        limit, options = _concurrency(raw.get("concurrency_limit"))
        tags = raw.get("tags")
        return Deployment(
            name=name,
            index=index,
            location=location,
            path=described,
            entrypoint=entrypoint,
            flow_name=_str_or_none(raw.get("flow_name")),
            version=raw.get("version"),
            version_type=_str_or_none(raw.get("version_type")),
            description=raw.get("description"),
            tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (tags if tags is not None else ()),
            parameters=raw.get("parameters") or {},
            enforce_parameter_schema=raw.get("enforce_parameter_schema"),
            schedules=self.schedules(raw, path),
            paused=paused,
            concurrency_limit=limit,
            concurrency_options=options,
            retries=raw.get("retries"),
            retry_delay_seconds=raw.get("retry_delay_seconds"),
            work_pool=WorkPoolRef(
                name=_str_or_none(wp.get("name")),
                work_queue_name=_str_or_none(wp.get("work_queue_name")),
                job_variables=wp.get("job_variables") or {},
                location=self.doc.at(raw, "work_pool", (*path, "work_pool")),
            ),
            build=build or (),
            push=push or (),
            pull=pull,
            pull_is_default=pull_default,
            build_is_own="build" in own,
            push_is_own="push" in own,
            pull_is_own="pull" in own,
            triggers=self.triggers(raw, path),
            sla=tuple(raw["sla"]) if isinstance(raw.get("sla"), list) else None,
            declared=frozenset(raw),
            raw=raw,
            templates=self.doc.templates(raw),
        )

    def legacy_paused(self, raw: Mapping[str, Any], path: Path_) -> Any:
        """Prefect 2's `is_schedule_active: false` is Prefect 2.16+/3's `paused: true`."""
        if raw.get("is_schedule_active") is None:
            return raw.get("paused")
        active = bool(raw["is_schedule_active"])
        if raw.get("paused") is not None and bool(raw["paused"]) == active:
            self.error(
                f"`is_schedule_active: {str(active).lower()}` contradicts `paused: {str(bool(raw['paused'])).lower()}`",
                (*path, "is_schedule_active"),
                "delete `is_schedule_active` (Prefect 2); `paused` is the key Prefect 3 reads",
            )
        self.warn(
            f"`is_schedule_active` is Prefect 2's key (Prefect 3 ignores it): read as `paused: {str(not active).lower()}`",
            (*path, "is_schedule_active"),
            f"write `paused: {str(not active).lower()}` instead",
        )
        return not active

    def legacy_work_pool(self, raw: Mapping[str, Any], wp: dict[str, Any], path: Path_) -> dict[str, Any]:
        """Prefect 2 deployment keys that live under `work_pool:` now; blocks that became pools."""
        for key, target in (
            ("work_queue_name", "work_queue_name"),
            ("infra_overrides", "job_variables"),
            ("job_variables", "job_variables"),  # the Python API's name, written one level too high
        ):
            if raw.get(key) is None:
                continue
            if key == "work_queue_name" and not wp.get("name"):
                self.warn(
                    "`work_queue_name` (Prefect 2) is ignored: a work queue belongs to a work pool, and "
                    "this deployment names none",
                    (*path, key),
                    "set `work_pool: {name: POOL, work_queue_name: QUEUE}`",
                )
                continue
            if wp.get(target) not in (None, {}) and wp.get(target) != raw[key]:
                if key == "job_variables":  # not a Prefect key at all: ignored, as Prefect does
                    self.warn(
                        "a deployment-level `job_variables` is ignored (as Prefect ignores it): "
                        "`work_pool.job_variables` is set too",
                        (*path, key),
                        "move its keys into `work_pool.job_variables`",
                    )
                else:
                    self.error(
                        f"`{key}` (Prefect 2) and `work_pool.{target}` are both set",
                        (*path, key),
                        f"keep only `work_pool.{target}`",
                    )
                continue
            self.warn(
                f"`{key}` is not a deployment key in Prefect 3 (it ignores it): read as `work_pool.{target}`",
                (*path, key),
                f"move it under `work_pool:` as `{target}`",
            )
            wp = {**wp, target: raw[key]}
        for key, hint in (
            ("infrastructure", "Prefect 2 infrastructure blocks became work pools: set `work_pool.name` and `job_variables`"),
            ("storage", "Prefect 2 storage blocks became pull steps: declare a `pull:` section (git_clone, pull_from_s3, ...)"),
        ):
            if key in raw:
                self.error(f"`{key}` is not a deployment key here", (*path, key), hint)
        return wp

    def triggers(self, raw: Mapping[str, Any], path: Path_) -> tuple[Mapping[str, Any], ...]:
        found = tuple(t for t in (raw.get("triggers") or []) if isinstance(t, dict))
        if found:
            self.warn(
                f"{len(found)} trigger(s) are stored with the deployment but buildsys does not evaluate "
                "them: no event creates a run",
                (*path, "triggers"),
                "start runs with `buildsys run` or schedules; a Prefect server evaluates triggers",
            )
        return found

    def effective_pull(
        self,
        raw: Mapping[str, Any],
        own: Mapping[str, tuple[StepSpec, ...] | None],
        top: Mapping[str, tuple[StepSpec, ...] | None],
        build: tuple[StepSpec, ...],
    ) -> tuple[tuple[StepSpec, ...], bool]:
        """Prefect §1.5: `pull: []` disables; null/{} falls back to the top level; empty → a default."""
        if "pull" in raw and raw["pull"] == []:
            return (), False
        pull = own.get("pull") if own.get("pull") else top["pull"]
        if pull is not None and (pull or self.data.get("pull") == []):
            return pull, False
        return self.default_pull(raw, build), True

    def default_pull(self, raw: Mapping[str, Any], build: tuple[StepSpec, ...]) -> tuple[StepSpec, ...]:
        docker = [s for s in build if s.name in DOCKER_BUILD_NAMES]
        wp: dict[str, Any] = raw["work_pool"] if isinstance(raw.get("work_pool"), dict) else {}
        jv: dict[str, Any] = wp["job_variables"] if isinstance(wp.get("job_variables"), dict) else {}
        if docker:
            if docker[0].inputs.get("dockerfile") != "auto":
                return ()
            directory = f"/opt/prefect/{self.root.name}"
        elif jv.get("image"):
            directory = "/opt/prefect"
        else:
            directory = str(self.root)
        name = "prefect.deployments.steps.set_working_directory"
        return (
            StepSpec(
                name=name,
                inputs={"directory": directory},
                section="pull",
                index=0,
                location=None,
                path="(generated default pull step)",
                raw={name: {"directory": directory}},
            ),
        )

    def check_entrypoint(self, entrypoint: str, path: Path_) -> None:
        if ".py:" in entrypoint:
            file = entrypoint.rsplit(":", 1)[0]
            if not self.file_exists(file):
                self.warn(
                    f"entrypoint file {file} does not exist (relative to {self.root})",
                    path,
                    "entrypoints are relative to the directory that holds the project file",
                )
        elif ":" not in entrypoint and "." not in entrypoint:
            self.error(
                f"entrypoint {entrypoint!r} names no function",
                path,
                "use `path/file.py:function` or `package.module:function`",
            )

    def schedules(self, raw: Mapping[str, Any], path: Path_) -> tuple[ScheduleSpec, ...]:
        items: list[tuple[Any, Path_, Location | None]] = []  # each with its location
        single = raw.get("schedule")
        many = raw.get("schedules")
        if single and many:
            self.error(
                "both `schedule` and `schedules` are set",
                (*path, "schedule"),
                "move the `schedule` item into the `schedules` list (`schedule` is deprecated)",
            )
        if isinstance(single, dict) and single:
            items.append((single, (*path, "schedule"), self.doc.at(raw, "schedule", (*path, "schedule"))))
        elif single is not None and not isinstance(single, dict):
            self.error(
                "`schedule` must be a mapping such as {cron: '0 * * * *'}",
                (*path, "schedule"),
                "write `schedules: [{cron: ...}]` (`schedule` is deprecated)",
            )
        if isinstance(many, list):
            at = self.doc.at
            items.extend((s, (*path, "schedules", i), at(many, i, (*path, "schedules", i))) for i, s in enumerate(many))
        out = []
        for item, ipath, location in items:
            spec = self.schedule(item, ipath, location)
            if spec is not None:
                out.append(spec)
        return tuple(out)

    def schedule(self, item: Any, path: Path_, location: Location | None) -> ScheduleSpec | None:
        if not isinstance(item, dict):
            self.error("a schedule must be a mapping", path)
            return None
        kinds = [k for k in ("cron", "interval", "rrule") if item.get(k) is not None]
        if len(kinds) != 1:
            self.error(
                "a schedule needs exactly one of cron, interval or rrule"
                + (f" (found {', '.join(kinds)})" if kinds else ""),
                path,
            )
            return None
        kind = kinds[0]
        value = item[kind]
        if kind == "interval":
            seconds = _interval_seconds(value)
            if seconds is None or seconds <= 0:
                self.error(
                    f"interval {value!r} is not a positive number of seconds, ISO-8601 duration or HH:MM:SS",
                    (*path, "interval"),
                )
                return None
            value = seconds
        elif kind == "cron":
            self.check_cron(str(value), (*path, "cron"))
        return ScheduleSpec(
            kind=kind,
            value=value,
            timezone=_str_or_none(item.get("timezone")),
            active=item.get("active", True),
            parameters=item.get("parameters") or {},
            slug=_str_or_none(item.get("slug")),
            replaces=_str_or_none(item.get("replaces")),
            anchor_date=_str_or_none(item.get("anchor_date")),
            day_or=item.get("day_or"),
            location=location,
            raw=item,
        )

    def check_cron(self, expr: str, path: Path_) -> None:
        if "{{" in expr:
            return
        fields = expr.split()
        if not (5 <= len(fields) <= 6) and not expr.startswith("@"):
            self.error(f"cron expression {expr!r} needs 5 fields (minute hour day month weekday)", path)

    def pools(self, value: Any) -> tuple[PoolSpec, ...]:
        if not isinstance(value, list):
            return ()
        out = []
        names: set[str] = set()
        for i, raw in enumerate(value):
            path: Path_ = ("work_pools", i)
            if not isinstance(raw, dict) or not raw.get("name"):
                self.error("a work pool needs a `name`", path)
                continue
            name = str(raw["name"])
            if name in names:
                self.error(f"work pool {name!r} is declared twice", (*path, "name"))
            names.add(name)
            self.check_name(raw["name"], (*path, "name"), "work pool name")
            for j, q in enumerate(raw.get("queues") or []):
                if isinstance(q, dict):
                    self.check_name(q.get("name"), (*path, "queues", j, "name"), "work queue name")
            queues = tuple(
                QueueSpec(
                    name=str(q.get("name")),
                    priority=q.get("priority"),
                    concurrency_limit=q.get("concurrency_limit"),
                    description=q.get("description"),
                    paused=q.get("paused"),
                    location=self.doc.loc((*path, "queues", j)),
                )
                for j, q in enumerate(raw.get("queues") or [])
                if isinstance(q, dict)
            )
            pool_type = str(raw.get("type") or "process")
            from buildsys.infra import unknown_pool_type  # plugin entry points: only for a project with pools

            problem = unknown_pool_type(pool_type) if isinstance(raw.get("type"), str) else None
            if problem is not None:
                self.error(problem[0], (*path, "type"), hint=problem[1])
            out.append(
                PoolSpec(
                    name=name,
                    type=pool_type,
                    location=self.doc.loc(path),
                    path=describe_path(self.data, path),
                    description=raw.get("description"),
                    concurrency_limit=raw.get("concurrency_limit"),
                    paused=raw.get("paused"),
                    job_variables=raw.get("job_variables") or {},
                    base_job_template=raw.get("base_job_template"),
                    queues=queues,
                    declared=frozenset(raw),
                )
            )
        return tuple(out)

    def variables(self, value: Any) -> tuple[VariableSpec, ...]:
        if not isinstance(value, dict):
            return ()
        return tuple(VariableSpec(str(k), v, self.doc.loc(("variables", k))) for k, v in value.items())


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _concurrency(value: Any) -> tuple[int | None, dict[str, Any] | None]:
    if isinstance(value, dict):
        limit = value.get("limit")
        options = {k: v for k, v in value.items() if k != "limit"}
        return (int(limit) if isinstance(limit, int) else None), (options or None)
    return (value if isinstance(value, int) and not isinstance(value, bool) else None), None


def _interval_seconds(value: Any) -> float | None:
    """Seconds from a number, an ISO-8601 duration (PT10M, P1D) or HH:MM:SS."""
    import re

    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = re.fullmatch(r"(?:(\d+)\s*days?,\s*)?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)", text)
    if m:
        days = int(m.group(1) or 0)
        return days * 86400 + int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
    m = re.fullmatch(
        r"P(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?",
        text,
    )
    if m and any(m.groups()):
        w, d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        return w * 604800 + d * 86400 + h * 3600 + mi * 60 + s
    return None
