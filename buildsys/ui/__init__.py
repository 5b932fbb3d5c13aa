"""The web UI: pages rendered on the server (Jinja2 through Starlette) over the state-store
protocol, with htmx (vendored, in `static/`) for live logs. `buildsys server` serves it at `/`;
`buildsys ui` serves it over the embedded file store for one user."""

from buildsys.ui.app import ui_routes

__all__ = ["ui_routes"]
