"""What every page of the UI shares: the store threads, the sign-in check, the templates and the
filters they format values with. The pages themselves are one module per kind (pools, runs, …)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from buildsys.errors import BuildsysError, ConflictError, NotFoundError
from buildsys.printable import printable
from buildsys.server.auth import Authenticator
from buildsys.server.endpoints import Services
from buildsys.store.base import FlowRun
from buildsys.ui.session import (
    CSRF_COOKIE,
    CSRF_FIELD,
    Refused,
    Viewer,
    check_post,
    posted,
    set_cookie,
    viewer,
)

HTMX = "htmx-2.0.11.min.js"  # vendored from the npm package htmx.org@2.0.11 (licence beside it)

Page = Callable[["Ui", Request, Viewer], Awaitable[Response]]

# what a run's log view may be narrowed to (?logs=…), by the name the page offers it under
LOG_FILTERS = {"": "every line", "problems": "warnings and errors (stderr, level warning and above)"}


@dataclass
class Ui:
    services: Services
    authenticator: Authenticator | None
    project_root: Path | None = None  # the project `buildsys ui` serves (plans and the step graph)

    def __post_init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("buildsys.ui", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=_printable,  # every `{{ value }}`: control and bidi characters as escapes
        )
        self.env.filters["when"] = when
        self.env.filters["ago"] = ago
        self.env.filters["duration"] = duration
        self.env.filters["q"] = lambda s: quote(str(s), safe="/")
        self.env.globals["htmx"] = HTMX
        self.env.globals["state_key"] = state_key
        self.env.globals["log_filters"] = LOG_FILTERS

    async def sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self.services.run(fn, *args, **kwargs)

    def render(self, request: Request, who: Viewer, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(request=request, who=who, csrf_field=CSRF_FIELD, **context)
        response = HTMLResponse(html, status_code=status)
        if who.new_csrf:
            set_cookie(response, request, CSRF_COOKIE, who.csrf)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
        )
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def message(self, request: Request, who: Viewer, status: int, title: str, text: str) -> HTMLResponse:
        return self.render(request, who, "message.html", status=status, title=title, text=text)

    def page(self, needed: str, handler: Page, *, post: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """A route handler: sign-in and scope check, CSRF check for posts, store errors as pages."""

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            response = await answer(request)
            response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
            return response

        async def answer(request: Request) -> Response:
            try:
                who = await self.sync(viewer, request, self.authenticator, needed)
            except Refused as exc:
                return await self._refused(request, exc)
            try:
                if post:
                    form = await posted(request)
                    check_post(request, form.get(CSRF_FIELD, ""))
                return await handler(self, request, who)
            except Refused as exc:
                return self.message(request, who, exc.status, "Not allowed", exc.message)
            except NotFoundError as exc:
                return self.message(request, who, 404, "Not found", exc.render())
            except ConflictError as exc:
                return self.message(request, who, 409, "Conflict", exc.render())
            except BuildsysError as exc:
                return self.message(request, who, 422, "Refused", exc.render())

        endpoint.__name__ = handler.__name__
        return endpoint

    async def _refused(self, request: Request, exc: Refused) -> Response:
        if exc.status == 401:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.headers.get("hx-request"):
                return Response(status_code=401, headers={"HX-Redirect": "/login"})
            return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
        anonymous = Viewer("read", True, "", False, auth=True)
        return self.message(request, anonymous, exc.status, "Not allowed", exc.message)


# --- formatting ----------------------------------------------------------------------------------


def when(ts: float | None) -> str:
    if not ts:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(ts: float | None) -> str:
    if not ts:
        return "never"
    delta = time.time() - ts
    future = delta < 0
    delta = abs(delta)
    if delta < 60:
        text = f"{delta:.0f} s"
    elif delta < 3600:
        text = f"{delta / 60:.0f} min"
    elif delta < 86400:
        text = f"{delta / 3600:.1f} h"
    else:
        text = f"{delta / 86400:.1f} d"
    return f"in {text}" if future else f"{text} ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _printable(value: Any) -> Any:
    """What a page shows of a value: text with control and bidi characters as escapes (a name
    holding U+202E cannot reorder the line it is shown in); markup keeps its kind."""
    if isinstance(value, Markup):
        return Markup(printable(str(value)))
    return printable(value) if isinstance(value, str) else value


def state_key(run: FlowRun) -> str:
    """What a page following a run knows of its state (a retry changes the attempt, not the name)."""
    return f"{run.state_name}/{run.attempt}"
