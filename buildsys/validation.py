"""Whole-project validation: loading, step resolution and inputs, references, graph, environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from buildsys.errors import Diagnostic, ProjectError, StepError
from buildsys.model import Project, StepSpec
from buildsys.templating import placeholders


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
    seen: set[tuple[object, ...]] = set()
    unique = []
    for p in problems:
        k = (p.severity, p.message, p.location, p.path)
        if k not in seen:
            seen.add(k)
            unique.append(p)
    return _in_file_order(unique), {"deployments": len(project.deployments), "steps": len(all_steps(project))}


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
    from buildsys.engine import graph_for

    try:
        graph_for(project, sections=("build", "push"))
    except ProjectError as exc:
        return exc.diagnostics()
    return []


def check_deployment_refs(project: Project) -> list[Diagnostic]:
    """Step-output references in deployment fields and pull steps must name steps that exist; a flat
    name (`{{ image }}`) must be an output some step declares (when every step declares its outputs)."""
    from buildsys.suggest import did_you_mean

    out: list[Diagnostic] = []
    for d in project.deployments:
        build_ids = {s.id for s in (*d.build, *d.push) if s.id}
        pull_ids = {s.id for s in d.pull if s.id}
        build_outputs = _declared_outputs(project, (*d.build, *d.push))
        fields = {k: v for k, v in d.raw.items() if k not in ("build", "push", "pull", "triggers")}
        for ph in placeholders(fields):
            if ph.kind == "output" and ph.step_id is not None and ph.step_id not in build_ids:
                out.append(_unresolved(ph.text, ph.step_id, build_ids, d.location, d.path, did_you_mean))
            elif ph.kind == "output" and ph.step_id is None:
                out += _flat(ph.text, str(ph.keypath[0]), build_outputs, build_ids, d.location, d.path)
        for i, s in enumerate(d.pull):
            earlier = _declared_outputs(project, (*d.build, *d.push, *d.pull[:i]))
            for ph in placeholders(s.inputs):
                if ph.kind == "output" and ph.step_id is not None and ph.step_id not in build_ids | pull_ids:
                    out.append(_unresolved(ph.text, ph.step_id, build_ids | pull_ids, s.location, s.path, did_you_mean))
                elif ph.kind == "output" and ph.step_id is None:
                    out += _flat(ph.text, str(ph.keypath[0]), earlier, build_ids | pull_ids, s.location, s.path)
    return out


def _declared_outputs(project: Project, steps: tuple[StepSpec, ...]) -> set[str] | None:
    """Every output name these steps declare; None when one of them declares none (unknowable)."""
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


def _flat(text: str, name: str, outputs: set[str] | None, ids: set[str], location: Any, path: str) -> list[Diagnostic]:
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
    known = sorted(ids)
    guess = dym(ref, known)
    return Diagnostic(
        "error",
        f"{text} refers to step {ref!r}, which does not exist here (Prefect would silently drop the value)",
        location,
        path,
        (guess + "; " if guess else "") + (f"step ids here: {', '.join(known)}" if known else "no step here has an id"),
    )


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
