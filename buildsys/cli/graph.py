"""`buildsys graph`: the step graph as text, DOT, Mermaid or JSON."""

from __future__ import annotations

import click

from buildsys.cli import completion
from buildsys.cli.app import App, common_options, pass_app


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "mermaid", "json"]), default="text", show_default=True)
@click.option("-d", "--deployment", "deployments", multiple=True, help="Only these deployments (name or glob).",
              shell_complete=completion.deployments)
@click.option("--push/--no-push", "with_push", default=True, help="Include the push section.", show_default=True)
@click.option("--upstream", "upstream", multiple=True, metavar="STEP", shell_complete=completion.step_ids,
              help="Only STEP (id or label) and the steps it needs.")
@click.option("--downstream", "downstream", multiple=True, metavar="STEP", shell_complete=completion.step_ids,
              help="Only STEP (id or label) and the steps that need it.")
@common_options
@pass_app
def graph(app: App, fmt: str, deployments: tuple[str, ...], with_push: bool, upstream: tuple[str, ...],
          downstream: tuple[str, ...]) -> None:
    """Show the step graph: one node per distinct step, edges from order, needs and templates."""
    from buildsys import graph as g
    from buildsys.compiled import graph_for

    project = app.load_project()
    sections = ("build", "push") if with_push else ("build",)
    step_graph = graph_for(project, sections=sections, deployments=deployments)
    if upstream or downstream:
        up = g.around(step_graph, {g.find_node(step_graph, s) for s in upstream}, upstream=True, downstream=False)
        down = g.around(step_graph, {g.find_node(step_graph, s) for s in downstream}, upstream=False, downstream=True)
        keep = {*up.nodes, *down.nodes}
        step_graph = g.around(step_graph, keep, upstream=False, downstream=False)
    if app.json or fmt == "json":
        app.emit_json(g.to_json(step_graph))
    elif fmt == "dot":
        click.echo(g.to_dot(step_graph))
    elif fmt == "mermaid":
        click.echo(g.to_mermaid(step_graph))
    else:
        click.echo(g.to_text(step_graph))
