"""A compiled build: what the engine needs from a loaded project — the step graph of the selected
sections and deployments, and every step it names resolved and its inputs checked.

Pure with respect to caches: this always computes. `buildsys.caches.compiled_build` reuses one from
`.buildsys/compiled/` when nothing it depends on changed; the command chooses which.
"""

from __future__ import annotations

from collections.abc import Sequence

from buildsys.errors import StepError
from buildsys.graph import StepGraph, build_graph
from buildsys.model import Project
from buildsys.step import StepDef


class Compiled:
    __slots__ = ("graph", "project", "steps")

    def __init__(self, project: Project, graph: StepGraph, steps: dict[str, StepDef]) -> None:
        self.project = project
        self.graph = graph
        self.steps = steps  # step name as written → its definition, for every node of the graph


def compile_project(
    project: Project,
    *,
    sections: Sequence[str] = ("build",),
    deployments: Sequence[str] = (),
    install_missing: bool = False,
) -> Compiled:
    """The graph and its resolved steps. Raises ProjectError (unknown steps, bad inputs, a bad
    graph) before anything runs."""
    from buildsys import registry

    graph = graph_for(project, sections=sections, deployments=deployments)
    graph.order()  # computed once, here (and cached with the graph)
    specs = [node.spec for node in graph.nodes.values()]
    steps = registry.resolve_steps(specs, project.root, install_missing=install_missing)
    return Compiled(project, graph, steps)


def graph_for(project: Project, *, sections: Sequence[str] = ("build",), deployments: Sequence[str] = ()) -> StepGraph:
    """The graph, built knowing the steps it can resolve (their declared outputs and cwd handling);
    a step that does not resolve is one with unknown outputs here (compile_project reports it)."""
    from buildsys import registry

    stepdefs: dict[str, StepDef | None] = {}
    specs = [*project.build, *project.push, *(s for d in project.deployments for s in (*d.build, *d.push))]
    for spec in specs:
        if spec.name not in stepdefs:
            try:
                stepdefs[spec.name] = registry.resolve(spec.name, project.root, requires=spec.requires)
            except StepError:
                stepdefs[spec.name] = None
    return build_graph(project, sections=sections, deployments=deployments, stepdefs=stepdefs)
