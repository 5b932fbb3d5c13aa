"""The step graph: one node per distinct step, edges from order, `needs` and template references.

A step shared by many deployments (the top-level build used by twenty of them) is one node: a
node's key is a hash of the step as written plus the keys of the steps it depends on, so identical
steps with identical inputs upstream collapse, and anything that differs stays apart.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from buildsys.errors import BuildsysError, Diagnostic, ProjectError
from buildsys.model import Project, StepSpec
from buildsys.records import Record
from buildsys.templating import Placeholder, placeholders, step_ids_hint

_set = object.__setattr__


class StepNode(Record):
    __slots__ = __match_args__ = ("key", "spec", "deps", "scope", "cwd_from", "deployments", "label")
    key: str  # stable identity (hash of the step and its upstream keys)
    spec: StepSpec
    deps: tuple[str, ...]  # node keys this one waits for
    scope: tuple[tuple[str, str], ...]  # earlier steps of its chain: (id or label, node key), in order
    cwd_from: str | None  # node key of the nearest earlier set_working_directory-like step
    deployments: tuple[str, ...]
    label: str

    def __init__(
        self,
        key: str,
        spec: StepSpec,
        deps: tuple[str, ...],
        scope: tuple[tuple[str, str], ...],
        cwd_from: str | None,
        deployments: tuple[str, ...] = (),
        label: str = "",
    ) -> None:
        _set(self, "key", key)
        _set(self, "spec", spec)
        _set(self, "deps", deps)
        _set(self, "scope", scope)
        _set(self, "cwd_from", cwd_from)
        _set(self, "deployments", deployments)
        _set(self, "label", label)

    @property
    def section(self) -> str:
        return self.spec.section


class StepGraph:
    # (a plain class, not a dataclass: generating one's methods costs every build ~0.35 ms at import)
    __slots__ = ("_order", "chains", "nodes")

    def __init__(self, nodes: dict[str, StepNode] | None = None, chains: dict[str, tuple[str, ...]] | None = None) -> None:
        self.nodes: dict[str, StepNode] = {} if nodes is None else nodes  # in insertion (chain) order
        self.chains: dict[str, tuple[str, ...]] = {} if chains is None else chains  # deployment → node keys
        self._order: list[str] | None = None

    def __repr__(self) -> str:
        return f"StepGraph(nodes={self.nodes!r}, chains={self.chains!r})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, StepGraph)
        return (self.nodes, self.chains, self._order) == (other.nodes, other.chains, other._order)

    __hash__ = None  # type: ignore[assignment]  # (mutable: as a dataclass's)

    def order(self) -> list[str]:
        """A topological order (stable: chain order where the graph allows it); computed once."""
        if self._order is None:
            order = _topological(self)
            if order is None:  # a cycle: networkx says so in its own words
                import networkx as nx

                pos = {k: i for i, k in enumerate(self.nodes)}
                order = list(nx.lexicographical_topological_sort(self.to_networkx(), key=lambda k: pos[k]))
            self._order = order
        return self._order

    def to_networkx(self) -> Any:
        import networkx as nx

        g = nx.DiGraph()
        for key, node in self.nodes.items():
            g.add_node(key, label=node.label)
            for dep in node.deps:
                g.add_edge(dep, key)
        return g

    def dependents(self, key: str) -> set[str]:
        """Every node downstream of `key`."""
        out: set[str] = set()
        stack = [key]
        children: dict[str, list[str]] = {}
        for k, n in self.nodes.items():
            for d in n.deps:
                children.setdefault(d, []).append(k)
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in out:
                    out.add(child)
                    stack.append(child)
        return out


def find_node(graph: StepGraph, step: str) -> str:
    """The key of the node whose label or step id is `step`; an unknown name is an error naming them."""
    found = next((k for k, n in graph.nodes.items() if step in (n.label, n.spec.id)), None)
    if found is None:
        from buildsys.suggest import did_you_mean

        labels = [n.label for n in graph.nodes.values()]
        raise BuildsysError(f"no step {step!r} in the graph", hint=did_you_mean(step, labels) or ", ".join(labels))
    return found


def around(graph: StepGraph, keys: set[str], *, upstream: bool, downstream: bool) -> StepGraph:
    """The part of the graph around `keys`: them, what they need (upstream) and what needs them
    (downstream); edges to nodes left out are dropped."""
    keep = set(keys)
    for key in keys:
        if upstream:
            ancestors, stack = set(), [key]
            while stack:
                for dep in graph.nodes[stack.pop()].deps:
                    if dep not in ancestors:
                        ancestors.add(dep)
                        stack.append(dep)
            keep |= ancestors
        if downstream:
            keep |= graph.dependents(key)
    nodes = {
        k: StepNode(n.key, n.spec, tuple(d for d in n.deps if d in keep), n.scope, n.cwd_from, n.deployments, n.label)
        for k, n in graph.nodes.items()
        if k in keep
    }
    chains = {d: tuple(k for k in chain if k in keep) for d, chain in graph.chains.items()}
    return StepGraph(nodes=nodes, chains={d: c for d, c in chains.items() if c})


def build_graph(
    project: Project,
    *,
    sections: Sequence[str] = ("build",),
    deployments: Sequence[str] = (),
    stepdefs: Mapping[str, Any] | None = None,
) -> StepGraph:
    """The graph for the given sections of the selected deployments (all when none is named).

    `stepdefs` maps step names to StepDefs (for declared outputs and cwd handling); missing names
    are simply treated as steps with unknown outputs.
    """
    graph = StepGraph()
    problems: list[Diagnostic] = []
    chains: list[tuple[str, list[StepSpec]]] = []
    from buildsys.selector import select_deployments

    selected = select_deployments(project, deployments)
    if selected:
        for d in selected:
            steps = [s for sec in sections for s in (d.build if sec == "build" else d.push if sec == "push" else ())]
            chains.append((d.name, steps))
    else:
        steps = [s for sec in sections for s in (project.build if sec == "build" else project.push if sec == "push" else ())]
        chains.append(("", steps))
    for dep_name, steps in chains:
        graph.chains[dep_name] = tuple(_add_chain(graph, steps, dep_name, stepdefs or {}, problems))
    if any(p.is_error for p in problems):
        raise ProjectError(problems)
    _label(graph)
    _check_cycles(graph)
    return graph


def _add_chain(
    graph: StepGraph,
    steps: list[StepSpec],
    dep_name: str,
    stepdefs: Mapping[str, Any],
    problems: list[Diagnostic],
) -> list[str]:
    chain = _Chain(steps, {s.id: s for s in steps if s.id}, stepdefs, problems)
    scope: list[tuple[str, str]] = []
    cwd_from: str | None = None
    for i, spec in enumerate(steps):
        deps = chain.deps(spec, i)
        key = _node_key(spec, [graph_key for graph_key in deps])
        node = graph.nodes.get(key)
        if node is None:
            graph.nodes[key] = StepNode(
                key=key,
                spec=spec,
                deps=tuple(deps),
                scope=tuple(scope),
                cwd_from=cwd_from,
                deployments=(dep_name,) if dep_name else (),
            )
        elif dep_name and dep_name not in node.deployments:
            graph.nodes[key] = StepNode(
                node.key, node.spec, node.deps, node.scope, node.cwd_from, (*node.deployments, dep_name)
            )
        chain.keys.append(key)
        label = spec.id or spec.label
        scope.append((label, key))
        if spec.id:
            chain.by_id[spec.id] = key
        sdef = stepdefs.get(spec.name)
        if sdef is not None and getattr(sdef, "sets_cwd", False):
            cwd_from = key
    return chain.keys


class _Chain:
    """One chain of steps while its nodes are added: the keys so far, in order and by step id."""

    __slots__ = ("by_id", "ids", "keys", "problems", "stepdefs", "steps")

    def __init__(
        self, steps: list[StepSpec], ids: Mapping[str, StepSpec], stepdefs: Mapping[str, Any], problems: list[Diagnostic]
    ) -> None:
        self.steps = steps
        self.ids = ids  # every step id of the chain, earlier or later
        self.stepdefs = stepdefs
        self.problems = problems
        self.keys: list[str] = []
        self.by_id: dict[str, str] = {}

    def deps(self, spec: StepSpec, i: int) -> list[str]:
        deps: list[str] = []
        if spec.needs is not None:
            for need in spec.needs:
                if need in self.by_id:
                    deps.append(self.by_id[need])
                else:
                    self.problems.append(_unknown_id(spec, need, self.ids, "needs", later=need in self.ids))
        elif i > 0:
            deps.append(self.keys[i - 1])
        for ph in placeholders(spec.inputs):
            if ph.kind != "output":
                continue
            target = self._reference_target(ph, spec, self.steps[:i])
            if target is not None and target not in deps:
                deps.append(target)
        return deps

    def _reference_target(self, ph: Placeholder, spec: StepSpec, earlier: list[StepSpec]) -> str | None:
        by_id, ids, stepdefs, keys = self.by_id, self.ids, self.stepdefs, self.keys
        if ph.step_id is not None and ph.step_id in by_id:
            return by_id[ph.step_id]
        if ph.step_id is not None and ph.step_id in ids:
            self.problems.append(_unknown_id(spec, ph.step_id, ids, ph.text, later=True))
            return None
        head = str(ph.keypath[0]) if ph.keypath else ph.name
        producers = [
            keys[j]
            for j, s in enumerate(earlier)
            if head in getattr(stepdefs.get(s.name), "outputs", ()) or stepdefs.get(s.name) is None
        ]
        if producers:
            return producers[-1]
        if any(not getattr(stepdefs.get(s.name), "outputs", ()) for s in earlier):
            return keys[-1] if keys else None  # an earlier step with undeclared outputs may provide it
        self.problems.append(_unknown_id(spec, ph.step_id or head, ids, ph.text, later=False))
        return None


def _unknown_id(spec: StepSpec, ref: str, ids: Mapping[str, StepSpec], what: str, *, later: bool) -> Diagnostic:
    if later:
        message = f"{what} refers to step {ref!r}, which runs after this step"
        hint = "move the step, or reference an earlier one"
    else:
        message = f"{what} does not match any step output before this step"
        hint = step_ids_hint(ref, ids)
    return Diagnostic("error", message, spec.location, spec.path, hint)


def _node_key(spec: StepSpec, deps: Iterable[str]) -> str:
    payload = json.dumps(
        {"section": spec.section, "step": spec.raw, "deps": sorted(deps)}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _label(graph: StepGraph) -> None:
    """Human labels: the step id, or name#index; disambiguated with @deployment when needed."""
    base = {k: n.spec.id or n.spec.label for k, n in graph.nodes.items()}
    counts: dict[str, int] = {}
    for label in base.values():
        counts[label] = counts.get(label, 0) + 1
    for key, node in list(graph.nodes.items()):
        label = base[key]
        if counts[label] > 1:
            label = f"{label}@{','.join(node.deployments) or node.spec.section}"
        graph.nodes[key] = StepNode(node.key, node.spec, node.deps, node.scope, node.cwd_from, node.deployments, label)


def _topological(graph: StepGraph) -> list[str] | None:
    """Kahn's algorithm taking, among the ready nodes, the first in insertion order: the order
    networkx's lexicographical_topological_sort gives with that key, without importing networkx
    (~0.1 s) on every build. None when there is a cycle."""
    import heapq

    pos = {k: i for i, k in enumerate(graph.nodes)}
    keys = list(graph.nodes)
    waiting = {k: 0 for k in keys}
    children: dict[str, list[str]] = {k: [] for k in keys}
    for k, node in graph.nodes.items():
        for d in set(node.deps):
            if d in children:
                children[d].append(k)
                waiting[k] += 1
            else:
                return None  # an edge to a node outside the graph: let networkx decide
    ready = [pos[k] for k in keys if waiting[k] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        k = keys[heapq.heappop(ready)]
        order.append(k)
        for child in children[k]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, pos[child])
    return order if len(order) == len(keys) else None


def _check_cycles(graph: StepGraph) -> None:
    if _topological(graph) is not None:
        return  # no cycle (the common case): networkx, which names the cycle, is not needed
    import networkx as nx

    try:
        cycle = nx.find_cycle(graph.to_networkx())
    except nx.NetworkXNoCycle:
        return
    names = [graph.nodes[a].label for a, _ in cycle] + [graph.nodes[cycle[0][0]].label]
    first = graph.nodes[cycle[0][0]].spec
    raise ProjectError(
        [
            Diagnostic(
                "error",
                "the steps form a cycle: " + " → ".join(names),
                first.location,
                first.path,
                "remove one of the `needs` entries or template references that close the cycle",
            )
        ]
    )


# --- output formats ---------------------------------------------------------------------------------


Notes = Mapping[str, str]  # node key → what to say after it (its cache state)
Pulls = Mapping[str, Sequence[Mapping[str, Any]]]  # deployment → its pull steps (label, step)


def to_text(graph: StepGraph, *, notes: Notes | None = None, pull: Pulls | None = None) -> str:
    lines = []
    for key in graph.order():
        n = graph.nodes[key]
        deps = ", ".join(graph.nodes[d].label for d in n.deps)
        used = f"  [{', '.join(n.deployments)}]" if n.deployments else ""
        note = f"  — {notes[key]}" if notes and key in notes else ""
        lines.append(f"{n.label} ({n.spec.section}: {n.spec.name})" + (f" ← {deps}" if deps else "") + used + note)
    text = "\n".join(lines) if lines else "(no steps)"
    if pull is not None:
        text += "\n\npull steps (run by the worker where the flow runs, never cached):"
        for name, steps in pull.items():
            said = " → ".join(f"{s['label']} ({s['step']})" for s in steps) or "(none)"
            text += f"\n  {name}: {said}" + ("  (generated default)" if any(s.get("generated") for s in steps) else "")
    return text


def to_dot(graph: StepGraph, *, notes: Notes | None = None, pull: Pulls | None = None) -> str:
    return _draw(graph, notes, pull, _DOT)


def to_mermaid(graph: StepGraph, *, notes: Notes | None = None, pull: Pulls | None = None) -> str:
    return _draw(graph, notes, pull, _MERMAID)


class _Syntax(Record):
    """How one drawing format writes what `_draw` walks: a node and a pull step by their id and
    the lines of their label, an edge, a pull chain's edge."""

    __slots__ = __match_args__ = ("head", "node", "edge", "pull_node", "pull_edge", "tail")
    head: tuple[str, ...]
    node: Callable[[str, list[str]], str]
    edge: Callable[[str, str], str]
    pull_node: Callable[[str, list[str]], str]
    pull_edge: Callable[[str, str], str]
    tail: tuple[str, ...]

    def __init__(
        self,
        head: tuple[str, ...],
        node: Callable[[str, list[str]], str],
        edge: Callable[[str, str], str],
        pull_node: Callable[[str, list[str]], str],
        pull_edge: Callable[[str, str], str],
        tail: tuple[str, ...] = (),
    ) -> None:
        _set(self, "head", head)
        _set(self, "node", node)
        _set(self, "edge", edge)
        _set(self, "pull_node", pull_node)
        _set(self, "pull_edge", pull_edge)
        _set(self, "tail", tail)


def _draw(graph: StepGraph, notes: Notes | None, pull: Pulls | None, syntax: _Syntax) -> str:
    """The nodes (label, step, note), the edges, then each deployment's pull chain (dashed)."""
    out = list(syntax.head)
    for key, n in graph.nodes.items():
        out.append(syntax.node(key, [n.label, n.spec.name, *([notes[key]] if notes and key in notes else [])]))
    for key, n in graph.nodes.items():
        out += [syntax.edge(d, key) for d in n.deps]
    for i, (name, steps) in enumerate((pull or {}).items()):
        ids = [f"pull{i}_{j}" for j in range(len(steps))]
        out += [syntax.pull_node(node_id, [name, s["label"], s["step"]]) for node_id, s in zip(ids, steps, strict=True)]
        out += [syntax.pull_edge(a, b) for a, b in itertools.pairwise(ids)]
    return "\n".join([*out, *syntax.tail])


def _mermaid_text(lines: list[str]) -> str:
    return "<br/>".join(lines).replace('"', "'")


_DOT = _Syntax(
    head=("digraph buildsys {", "  rankdir=LR;", "  node [shape=box];"),
    node=lambda key, lines: f"  {json.dumps(key)} [label={json.dumps(chr(10).join(lines))}];",
    edge=lambda a, b: f"  {json.dumps(a)} -> {json.dumps(b)};",
    pull_node=lambda node_id, lines: f"  {node_id} [label={json.dumps(chr(10).join(lines))}, style=dashed];",
    pull_edge=lambda a, b: f"  {a} -> {b} [style=dashed];",
    tail=("}",),
)
_MERMAID = _Syntax(
    head=("flowchart LR",),
    node=lambda key, lines: f'  n{key}["{_mermaid_text(lines)}"]',
    edge=lambda a, b: f"  n{a} --> n{b}",
    pull_node=lambda node_id, lines: f'  {node_id}(["{_mermaid_text(lines)}"])',
    pull_edge=lambda a, b: f"  {a} -.-> {b}",
)


def to_json(graph: StepGraph) -> dict[str, Any]:
    return {
        "nodes": [
            {
                "key": k,
                "label": n.label,
                "step": n.spec.name,
                "id": n.spec.id,
                "section": n.spec.section,
                "deployments": list(n.deployments),
                "needs": [graph.nodes[d].label for d in n.deps],
                "location": str(n.spec.location) if n.spec.location else None,
            }
            for k, n in graph.nodes.items()
        ],
        "edges": [[d, k] for k, n in graph.nodes.items() for d in n.deps],
    }
