"""The UI's routes: what `buildsys server` (and `buildsys ui`) serve at `/`, from the page modules."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from buildsys.server.auth import Authenticator
from buildsys.server.endpoints import Services
from buildsys.ui import deployments, login, plans, pools, runs
from buildsys.ui.page import Ui


def ui_routes(services: Services, authenticator: Authenticator | None, project_root: Path | None = None) -> list[BaseRoute]:
    """The pages at /, the static files, the sign-in and sign-out forms."""
    ui = Ui(services, authenticator, project_root)
    static = StaticFiles(packages=[("buildsys.ui", "static")])
    routes: list[BaseRoute] = [Mount("/static", app=static, name="static")]
    for module in (login, pools, deployments, runs, plans):
        for path, method, needed, handler in module.ROUTES:
            routes.append(Route(path, ui.page(needed, handler, post=method == "POST"), methods=[method]))
    return routes
