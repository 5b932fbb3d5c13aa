"""Whole-project validation: loading, step resolution and inputs, references, graph, environment."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import BuildsysError, Diagnostic, Location, ProjectError, StepError, distinct
from buildsys.model import Deployment, Project, StepSpec
from buildsys.templating import LEAVES, Placeholder, placeholders, templated

if TYPE_CHECKING:
    from buildsys.yamlsource import Located

Path_ = tuple[str | int, ...]


def validate_project(path: Path, *, strict: bool = False) -> tuple[list[Diagnostic], dict[str, Any]]:
    """All problems found, errors and warnings, in file order; plus a small summary."""
    from buildsys.project import load_project

    try:
        project = load_project(path, strict=strict)
    except ProjectError as exc:
        return _in_file_order(exc.diagnostics()), {"deployments": 0, "steps": 0}
    problems = list(project.warnings)
    problems += check_steps(project)
    problems += check_graph(project)
    problems += check_deployment_refs(project)
    problems += check_env(project, strict)
    return _in_file_order(distinct(problems)), {"deployments": len(project.deployments), "steps": len(all_steps(project))}


def _in_file_order(problems: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(problems, key=lambda d: (d.location.line if d.location else 0, d.location.col if d.location else 0))


def all_steps(project: Project) -> list[StepSpec]:
    seen: dict[int, StepSpec] = {}
    for s in (*project.build, *project.push, *(project.pull or ())):
        seen[id(s)] = s
    for d in project.deployments:
        for s in (*d.build, *d.push, *d.pull):
            if s.location is not None:
                seen[id(s)] = s
    return list(seen.values())


def check_steps(project: Project) -> list[Diagnostic]:
    from buildsys import registry
    from buildsys.schema import check_inputs

    out: list[Diagnostic] = []
    for spec in all_steps(project):
        try:
            stepdef = registry.resolve(spec.name, project.root, requires=spec.requires)
        except StepError as exc:
            if spec.section == "pull":
                # Pull steps run where the flow runs; that environment may have them installed.
                out.append(
                    Diagnostic(
                        "warning",
                        exc.message + " here (pull steps must be available where the flow runs)",
                        spec.location,
                        spec.path,
                        exc.hint,
                    )
                )
            else:
                out.append(Diagnostic("error", exc.message, spec.location, spec.path, exc.hint))
            continue
        out += check_inputs(spec, stepdef)
    return out


def check_graph(project: Project) -> list[Diagnostic]:
    from buildsys.compiled import graph_for

    try:
        graph_for(project, sections=("build", "push"))
    except ProjectError as exc:
        return exc.diagnostics()
    return []


def check_deployment_refs(project: Project, *, text: str | None = None) -> list[Diagnostic]:
    """Step-output references in deployment fields and pull steps must name steps that exist; a flat
    name (`{{ image }}`) must be an output some step declares (when every step declares its outputs).

    Each problem points at the placeholder itself, inside the anchor it came from when it came through
    an alias. `text` is the project file's content when it is not the file on disk (`plan --ref`)."""
    from buildsys.suggest import did_you_mean

    out: list[Diagnostic] = []
    where = _Locator(project, text)
    for d in project.deployments:
        if _refers_to_no_output(d):
            continue
        build_ids = {s.id for s in (*d.build, *d.push) if s.id}
        pull_ids = {s.id for s in d.pull if s.id}
        build_outputs = _declared_outputs(project, (*d.build, *d.push))
        fields = {k: v for k, v in d.raw.items() if k not in ("build", "push", "pull", "triggers")}
        for at, ph in _outputs_at(fields, ("deployments", d.index)):
            if ph.kind == "output" and ph.step_id is not None and ph.step_id not in build_ids:
                out.append(_unresolved(ph.text, ph.step_id, build_ids, *where(at, ph.text), did_you_mean))
            elif ph.kind == "output" and ph.step_id is None:
                out += _flat(ph.text, str(ph.keypath[0]), build_outputs, build_ids, *where(at, ph.text))
        section: Path_ = ("deployments", d.index, "pull") if d.pull_is_own else ("pull",)
        for i, s in enumerate(d.pull):
            earlier = _declared_outputs(project, (*d.build, *d.push, *d.pull[:i]))
            step_at: Path_ = (*section, s.index, s.name)
            for at, ph in _outputs_at(s.inputs, step_at):
                shown = ".".join([s.path, *map(str, at[len(step_at):])])
                if ph.kind == "output" and ph.step_id is not None and ph.step_id not in build_ids | pull_ids:
                    out.append(_unresolved(ph.text, ph.step_id, build_ids | pull_ids, where.locate(at, ph.text), shown,
                                           did_you_mean))
                elif ph.kind == "output" and ph.step_id is None:
                    out += _flat(ph.text, str(ph.keypath[0]), earlier, build_ids | pull_ids, where.locate(at, ph.text),
                                 shown)
    return out


def _refers_to_no_output(d: Deployment) -> bool:
    """True when no field or pull step of `d` names a step output: the loader noted every templated
    string of the entry (`Deployment.templates`) and none names one, and a pull step that is not an
    item of the entry (the top level's, the generated default) names none either. Most plans
    check thousands of deployments that refer to none."""
    if d.templates is None or any(ph.kind == "output" for text in d.templates for ph in placeholders(text)):
        return False
    own = d.raw.get("pull")
    items = own if isinstance(own, list) else [own]
    for s in d.pull:
        if not any(s.raw is item for item in items) and any(ph.kind == "output" for ph in placeholders(s.inputs)):
            return False
    return True


def _outputs_at(value: Any, at: Path_) -> list[tuple[Path_, Placeholder]]:
    """Every step-output placeholder in `value` with the document path of the string that holds
    it. The paths are made only for a value that holds one (one fast look first): plans ask this
    of every deployment, and most of a project refers to no output (an environment value, say)."""
    texts: list[str] = []
    templated(value, texts)
    if not any(ph.kind == "output" for text in texts for ph in placeholders(text)):
        return []
    out: list[tuple[Path_, Placeholder]] = []
    _located(value, at, out)
    return [(path, ph) for path, ph in out if ph.kind == "output"]


def _located(value: Any, at: Path_, out: list[tuple[Path_, Placeholder]]) -> None:
    if isinstance(value, str):
        out.extend((at, ph) for ph in placeholders(value))
        return
    if isinstance(value, Mapping):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        kind = type(item)
        if (kind is str and "{{" not in item) or kind in LEAVES:
            continue  # no path made for what holds no placeholder
        _located(item, (*at, key), out)



class _Locator:
    """Where a placeholder is written: the project file is read again (with every node's location)
    only when there is a problem to place, so a valid project pays nothing."""

    def __init__(self, project: Project, text: str | None) -> None:
        self.project = project
        self.text = text
        self.doc: Located | None = None
        self.lines: list[str] = []

    def __call__(self, at: Path_, placeholder: str) -> tuple[Location | None, str]:
        from buildsys.schema import describe_path

        return self.locate(at, placeholder), describe_path(self.project.data, at)

    def locate(self, at: Path_, placeholder: str) -> Location | None:
        if self.doc is None:
            from buildsys.yamlsource import load_yaml

            try:
                text = self.text if self.text is not None else self.project.file.read_text(encoding="utf-8-sig")
                self.doc = load_yaml(text, str(self.project.file))
            except (OSError, UnicodeDecodeError, BuildsysError):
                return None
            self.lines = text.splitlines()
        node = self.doc.loc(at)
        if node is None:
            return None
        line = self.lines[node.line - 1] if 0 < node.line <= len(self.lines) else ""
        column = line.find(placeholder, node.col - 1)
        return Location(node.file, node.line, column + 1) if column >= 0 else node


def require_references(project: Project, *, text: str | None = None) -> None:
    """Raise the reference errors `validate` reports, so that plan, apply and deploy refuse exactly
    what validate refuses, before anything is built, pushed or rendered."""
    errors = [p for p in check_deployment_refs(project, text=text) if p.is_error]
    if errors:
        raise ProjectError(_in_file_order(errors))


def _declared_outputs(project: Project, steps: tuple[StepSpec, ...]) -> set[str] | None:
    """Every output name these steps declare; None when one of them declares none (unknowable)."""
    if not steps:
        return set()  # without importing the registry (and every step's module): most plans
    from buildsys import registry

    names: set[str] = set()
    for spec in steps:
        try:
            outputs = registry.resolve(spec.name, project.root, requires=spec.requires).outputs
        except StepError:
            return None
        if not outputs:
            return None
        names.update(outputs)
    return names


def _flat(text: str, name: str, outputs: set[str] | None, ids: set[str], location: Location | None,
          path: str) -> list[Diagnostic]:
    from buildsys.suggest import did_you_mean

    if outputs is None or name in outputs:
        return []
    guess = did_you_mean(name, sorted(outputs | ids))
    return [
        Diagnostic(
            "error",
            f"{text} does not match any step id or output before it (Prefect would silently drop the value)",
            location,
            path,
            (guess + "; " if guess else "") + (f"outputs here: {', '.join(sorted(outputs))}" if outputs else "no step before it"),
        )
    ]


def _unresolved(text: str, ref: str, ids: set[str], location: Any, path: str, dym: Any) -> Diagnostic:
    from buildsys.templating import unknown_step

    message, hint = unknown_step(text, ref, ids)
    return Diagnostic("error", message, location, path, hint)


def check_env(project: Project, strict: bool) -> list[Diagnostic]:
    out = []
    for spec in all_steps(project):
        if spec.section == "pull":
            continue  # resolved on the worker at run time
        for ph in placeholders(spec.inputs):
            if ph.kind == "env" and str(ph.keypath[0]) not in os.environ:
                out.append(
                    Diagnostic(
                        "error" if strict else "warning",
                        f"environment variable {ph.keypath[0]} is not set (used as {ph.text}); the step will fail unless it is set when it runs",
                        spec.location,
                        spec.path,
                    )
                )
    return out
