"""Sign in with an API token (kept in an HttpOnly cookie), sign out, and the overview page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from buildsys.store.base import ACTIVE, SCHEDULED
from buildsys.ui.page import Ui
from buildsys.ui.session import CSRF_COOKIE, TOKEN_COOKIE, Viewer, posted, safe_next, set_cookie

SESSION_SECONDS = 12 * 3600


async def login_form(ui: Ui, request: Request, who: Viewer) -> Response:
    return ui.render(request, who, "login.html", next=safe_next(request.query_params.get("next")), error=None)


async def login(ui: Ui, request: Request, who: Viewer) -> Response:
    form = await posted(request)  # the page wrapper has checked origin and CSRF
    target = safe_next(form.get("next", "/"))
    text = form.get("token", "").strip()
    if ui.authenticator is None:
        return RedirectResponse(target, status_code=303)
    token = await ui.sync(ui.authenticator.check, f"Bearer {text}") if text else None
    if token is None:
        return ui.render(
            request, who, "login.html", status=401, next=target, error="That token is not valid (unknown, revoked or mistyped)."
        )
    response = RedirectResponse(target, status_code=303)
    set_cookie(response, request, TOKEN_COOKIE, text, max_age=SESSION_SECONDS)
    return response


async def logout(ui: Ui, request: Request, who: Viewer) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(TOKEN_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


async def overview(ui: Ui, request: Request, who: Viewer) -> Response:
    store = ui.services.store

    def read() -> dict[str, object]:
        return {
            "pools": store.list_resources("pool"),
            "deployments": store.list_resources("deployment"),
            "active": store.list_runs(states=sorted(ACTIVE), limit=20),
            "waiting": store.list_runs(states=[SCHEDULED], limit=20),
            "recent": store.list_runs(limit=10),
        }

    return ui.render(request, who, "overview.html", **(await ui.sync(read)))


ROUTES = (
    ("/", "GET", "read", overview),
    ("/login", "GET", "none", login_form),
    ("/login", "POST", "none", login),
    ("/logout", "POST", "none", logout),
)
