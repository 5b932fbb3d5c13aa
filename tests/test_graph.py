"""The step graph: shared nodes, implicit order, needs, template edges, cycles, formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.compiled import graph_for
from buildsys.errors import ProjectError
from buildsys.graph import to_json, to_text
from buildsys.project import load_project

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`


def graph_of(tmp: Path, text: str, **kw: object):  # type: ignore[no-untyped-def]
    (tmp / "prefect.yaml").write_text(text)
    return graph_for(load_project(tmp / "prefect.yaml"), **kw)  # type: ignore[arg-type]


def test_top_level_build_shared_by_twenty_deployments_is_one_node(isolated: Path) -> None:
    deps = "\n".join(f"  - {{name: d{i}, entrypoint: f.py:f}}" for i in range(20))
    g = graph_of(isolated, f"build:\n  - run_shell_script: {{id: img, script: echo}}\ndeployments:\n{deps}\n")
    assert len(g.nodes) == 1
    (node,) = g.nodes.values()
    assert node.deployments == tuple(f"d{i}" for i in range(20))


def test_own_sections_and_push_that_depends_on_them(isolated: Path) -> None:
    g = graph_of(
        isolated,
        """
build:
  - run_shell_script: {id: img, script: echo top}
push:
  - run_shell_script: {id: up, script: "echo {{ img.stdout }}"}
deployments:
  - {name: a, entrypoint: f.py:f}
  - name: b
    entrypoint: f.py:f
    build:
      - run_shell_script: {id: img, script: echo own}
""",
        sections=("build", "push"),
    )
    assert to_text(g).splitlines() == [
        "img@a (build: run_shell_script)  [a]",
        "up@a (push: run_shell_script) ← img@a  [a]",
        "img@b (build: run_shell_script)  [b]",
        "up@b (push: run_shell_script) ← img@b  [b]",
    ]


def test_needs_replaces_the_implicit_edge_and_templates_add_edges(isolated: Path) -> None:
    g = graph_of(
        isolated,
        """
build:
  - run_shell_script: {id: a, script: echo a}
  - run_shell_script: {id: b, script: echo b, needs: []}
  - run_shell_script: {id: c, script: "echo {{ a.stdout }}", needs: [b]}
""",
    )
    edges = {(g.nodes[x].label, g.nodes[y].label) for x, y in to_json(g)["edges"]}
    assert edges == {("b", "c"), ("a", "c")}


def test_reference_to_a_later_step_and_unknown_ids_are_located_errors(isolated: Path) -> None:
    with pytest.raises(ProjectError) as info:
        graph_of(isolated, "build:\n  - run_shell_script: {id: a, script: '{{ b.stdout }}'}\n  - run_shell_script: {id: b, script: echo}\n")
    (d,) = info.value.diagnostics()
    assert (d.message, d.location.line if d.location else None) == (
        "{{ b.stdout }} refers to step 'b', which runs after this step",
        2,
    )
    with pytest.raises(ProjectError) as info2:
        graph_of(isolated, "build:\n  - run_shell_script: {id: build_image, script: echo, needs: [build-image]}\n")
    assert info2.value.diagnostics()[0].hint == "did you mean 'build_image'?; step ids here: build_image"


def test_order_is_networkx_lexicographical_order_without_importing_it() -> None:
    """StepGraph.order sorts with its own Kahn's algorithm (networkx costs every build ~0.1 s to
    import); on random DAGs inserted out of order it gives exactly networkx's order."""
    import random

    import networkx as nx

    from buildsys.graph import StepGraph, StepNode

    for trial in range(200):
        rng = random.Random(trial)
        keys = [f"k{i}" for i in range(rng.randrange(1, 30))]
        nodes = {}
        for i, k in enumerate(keys):
            deps = tuple(rng.sample(keys[:i], rng.randrange(0, min(i, 3) + 1)))
            nodes[k] = StepNode(key=k, spec=None, deps=deps, scope=(), cwd_from=None, label=k)  # type: ignore[arg-type]
        shuffled = list(nodes.items())
        rng.shuffle(shuffled)
        graph = StepGraph(nodes=dict(shuffled))
        position = {k: i for i, k in enumerate(graph.nodes)}
        assert graph.order() == list(nx.lexicographical_topological_sort(graph.to_networkx(), key=position.__getitem__))
