"""The project's step graph as a picture: each step's cache state and the reason for it, computed
without running anything (the engine's own cache keys and `explain_change`), drawn as SVG on the
server so it shows without JavaScript."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

NODE_W = 210
NODE_H = 54
GAP_X = 60
GAP_Y = 22
PAD = 16
COLOURS = {  # fill, stroke: readable with black text (contrast > 7:1)
    "cached": ("#d9f2dd", "#1e7b34"),
    "would run": ("#fff0c2", "#8a5a00"),
    "blocked": ("#eeeeee", "#555555"),
    "error": ("#fde0df", "#b3261e"),
}


@dataclass(frozen=True)
class StepState:
    key: str
    label: str
    section: str
    deps: tuple[str, ...]
    state: str  # cached | would run | blocked | error
    reason: str
    last_built: float | None = None


def step_states(root: Path, file: str = "prefect.yaml") -> list[StepState]:
    """Every build and push step of the project at `root`, in graph order, with its state: the
    engine's own decision (`buildsys.engine.foresee`), as the build and `cache explain` make it."""
    from buildsys.cache import Cache
    from buildsys.engine import foresee
    from buildsys.project import load_project

    project = load_project(root / file)
    graph, decisions = foresee(project)
    cache = Cache(project.root)
    try:
        states = []
        for key, decision in decisions.items():
            node = graph.nodes[key]
            previous = cache.entry(node.label)
            states.append(StepState(key, node.label, node.section, node.deps, _STATES[decision.state],
                                    _REASONS.get(decision.reason, decision.reason), previous.updated if previous else None))
    finally:
        cache.close()
    return states


_STATES = {"cached": "cached", "run": "would run", "blocked": "blocked", "error": "error"}
_REASONS = {"unchanged": "unchanged since the last build"}


def layers(steps: list[StepState]) -> dict[str, int]:
    """Each step's column: one right of its deepest dependency."""
    column: dict[str, int] = {}
    for step in steps:  # graph order: dependencies come first
        column[step.key] = 1 + max((column.get(d, -1) for d in step.deps), default=-1)
    return column


def render_svg(steps: list[StepState]) -> str:
    """The graph as an SVG document: columns by depth, arrows from each dependency."""
    column = layers(steps)
    rows: dict[int, int] = {}
    at: dict[str, tuple[int, int]] = {}
    for step in steps:
        c = column[step.key]
        r = rows.get(c, 0)
        rows[c] = r + 1
        at[step.key] = (PAD + c * (NODE_W + GAP_X), PAD + r * (NODE_H + GAP_Y))
    width = PAD * 2 + (max(column.values(), default=0) + 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + max(rows.values(), default=1) * (NODE_H + GAP_Y) - GAP_Y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-labelledby="graph-title" class="stepgraph">',
        f'<title id="graph-title">Step graph: {len(steps)} step(s)</title>',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#444"/></marker></defs>',
    ]
    for step in steps:
        x2, y2 = at[step.key]
        for dep in step.deps:
            if dep in at:
                x1, y1 = at[dep]
                parts.append(
                    f'<line x1="{x1 + NODE_W}" y1="{y1 + NODE_H // 2}" x2="{x2}" y2="{y2 + NODE_H // 2}" '
                    'stroke="#444" stroke-width="1.5" marker-end="url(#arrow)"/>'
                )
    for step in steps:
        x, y = at[step.key]
        fill, stroke = COLOURS.get(step.state, COLOURS["blocked"])
        label = step.label if len(step.label) <= 30 else step.label[:29] + "…"
        parts.append(
            f'<g><title>{escape(step.label)}: {escape(step.state)}: {escape(step.reason)}</title>'
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="2"/>'
            f'<text x="{x + 10}" y="{y + 22}" font-family="sans-serif" font-size="13" fill="#111">{escape(label)}</text>'
            f'<text x="{x + 10}" y="{y + 42}" font-family="sans-serif" font-size="12" fill="#333">'
            f'{escape(step.section)} · {escape(step.state)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
