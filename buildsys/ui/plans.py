"""Plans and builds: the last applied plans with their diffs as `plan` prints them (the project's
own records under `buildsys ui`, else the store's record of each apply), the store's resources by
the apply that last wrote them, and the step graph with each step's cache state (which needs a
project: `buildsys ui` serves the one it runs in)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from buildsys.errors import BuildsysError
from buildsys.store.base import ApplyHistory, Resource
from buildsys.ui.page import Ui
from buildsys.ui.session import Viewer

APPLIES_SHOWN = 20
PLANS_SHOWN = 20


def applies(resources: list[Resource]) -> list[dict[str, Any]]:
    """Resources grouped by the store serial of the apply that last wrote them, newest first."""
    by_serial: dict[int, list[Resource]] = defaultdict(list)
    for r in resources:
        by_serial[r.serial].append(r)
    rows = []
    for serial in sorted(by_serial, reverse=True)[:APPLIES_SHOWN]:
        items = sorted(by_serial[serial], key=lambda r: (r.kind, r.name))
        source = next((r.source for r in items if r.source), None)
        rows.append({"serial": serial, "resources": items, "source": source, "at": max(r.updated_at for r in items)})
    return rows


async def plans_page(ui: Ui, request: Request, who: Viewer) -> Response:
    from buildsys.ui.history import from_store, recorded
    from buildsys.ui.stepgraph import render_svg, step_states

    store = ui.services.store
    resources = await ui.sync(store.list_resources, None)
    context: dict[str, Any] = {"applies": applies(resources), "root": ui.project_root, "plans": [],
                               "problems": [], "steps": [], "svg": None, "graph_error": None, "from_store": False}
    root = ui.project_root
    if root is not None:
        context["plans"], context["problems"] = await ui.sync(recorded, root)
    if not context["plans"] and isinstance(store, ApplyHistory):
        kept = await ui.sync(store.list_applies, PLANS_SHOWN)
        context["plans"], context["from_store"] = [from_store(a) for a in kept], True
    if root is not None:
        if (root / "prefect.yaml").is_file():
            try:
                steps = await ui.sync(step_states, root)
                context["steps"], context["svg"] = steps, render_svg(steps)
            except BuildsysError as exc:
                context["graph_error"] = exc.render()
        else:
            context["graph_error"] = f"no prefect.yaml in {root}"
    return ui.render(request, who, "plans.html", **context)


ROUTES = (("/plans", "GET", "read", plans_page),)
