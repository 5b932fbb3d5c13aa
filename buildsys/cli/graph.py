"""`buildsys graph`: the step graph as text, DOT, Mermaid or JSON; with `--cache` each step's cache
state (what `build` would do now, nothing run), with `--pull` each deployment's pull steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from buildsys.cli import completion
from buildsys.cli.app import App, common_options, pass_app
from buildsys.cli.select import deployments_option
from buildsys.printable import printable

if TYPE_CHECKING:
    from buildsys.engine import Decision
    from buildsys.graph import StepGraph
    from buildsys.model import Project

# what each decision state is called in the graph
SAID = {"cached": "cached", "run": "would run", "blocked": "would run", "error": "error"}


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "mermaid", "json"]), default="text", show_default=True)
@deployments_option
@click.option("--push/--no-push", "with_push", default=True, help="Include the push section.", show_default=True)
@click.option("--upstream", "upstream", multiple=True, metavar="STEP", shell_complete=completion.step_ids,
              help="Only STEP (id or label) and the steps it needs.")
@click.option("--downstream", "downstream", multiple=True, metavar="STEP", shell_complete=completion.step_ids,
              help="Only STEP (id or label) and the steps that need it.")
@click.option("--cache", "with_cache", is_flag=True,
              help="Each step's cache state: cached, or would run and why (nothing is run).")
@click.option("--pull", "with_pull", is_flag=True, help="Also each deployment's pull steps (run by the worker).")
@common_options
@pass_app
def graph(app: App, fmt: str, deployments: tuple[str, ...], with_push: bool, upstream: tuple[str, ...],
          downstream: tuple[str, ...], with_cache: bool, with_pull: bool) -> None:
    """Show the step graph: one node per distinct step, edges from order, needs and templates."""
    from buildsys import graph as g

    sections = ("build", "push") if with_push else ("build",)
    project, step_graph, decisions = _graph(app, sections, deployments, with_cache)
    if upstream or downstream:
        up = g.around(step_graph, {g.find_node(step_graph, s) for s in upstream}, upstream=True, downstream=False)
        down = g.around(step_graph, {g.find_node(step_graph, s) for s in downstream}, upstream=False, downstream=True)
        keep = {*up.nodes, *down.nodes}
        step_graph = g.around(step_graph, keep, upstream=False, downstream=False)
    pull = _pull_steps(project, deployments) if with_pull else None
    if app.json or fmt == "json":
        data = g.to_json(step_graph)
        if decisions is not None:
            for node in data["nodes"]:
                d = decisions[node["key"]]
                node["cache"] = {"state": d.state, "reason": d.reason}
        if pull is not None:
            data["pull"] = pull
        app.emit_json(data)
        return
    notes = {k: _note(d) for k, d in decisions.items()} if decisions is not None else {}
    if fmt == "dot":
        click.echo(printable(g.to_dot(step_graph, notes=notes, pull=pull)))
    elif fmt == "mermaid":
        click.echo(printable(g.to_mermaid(step_graph, notes=notes, pull=pull)))
    else:
        click.echo(printable(g.to_text(step_graph, notes=notes, pull=pull)))


def _graph(
    app: App, sections: tuple[str, ...], deployments: tuple[str, ...], with_cache: bool
) -> tuple[Project, StepGraph, dict[str, Decision] | None]:
    if not with_cache:
        from buildsys.compiled import graph_for

        project = app.load_project()
        return project, graph_for(project, sections=sections, deployments=deployments), None
    from buildsys.caches import compiled_build
    from buildsys.engine import Engine

    compiled = compiled_build(app.project_file, sections=sections, deployments=deployments)
    engine = Engine(compiled.project, compiled.graph, compiled.steps, dry_run=True)
    try:
        decisions = engine.foresee()
    finally:
        engine.cache.close()
    return compiled.project, compiled.graph, decisions


def _note(decision: Decision) -> str:
    said = SAID.get(decision.state, decision.state)
    return said if decision.state == "cached" and decision.reason == "unchanged" else f"{said}: {decision.reason}"


def _pull_steps(project: Project, patterns: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    from buildsys.selector import select_deployments

    return {
        d.name: [{"label": s.label, "step": s.name, "generated": d.pull_is_default} for s in d.pull]
        for d in select_deployments(project, patterns)
    }
