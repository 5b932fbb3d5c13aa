"""Who is looking, and whether a form post is really theirs.

A signed-in browser holds its API token in an HttpOnly, SameSite=Strict cookie: every page checks it
with the API's own authenticator and scopes. Without an authenticator (a loopback server without
tokens, or `buildsys ui`) every page is open, exactly as the API is. Every POST must come from this
origin (the Origin header, or the Referer when a browser sends no Origin) and carry the per-session
CSRF value that is also held in an HttpOnly, SameSite=Strict cookie (double submit).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from buildsys.server.auth import Authenticator

TOKEN_COOKIE = "buildsys_token"
CSRF_COOKIE = "buildsys_csrf"
CSRF_FIELD = "csrf"
MAX_FORM_BYTES = 2 * 1024 * 1024
PUBLIC = "none"  # the scope of pages anyone may see (the sign-in form)


class Refused(Exception):
    """The request may not see or do this; `status` 401 sends the browser to the login page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Viewer:
    scope: str  # the token's scope; "admin" when the UI runs without tokens
    signed_in: bool  # a token cookie was accepted (so a "sign out" makes sense)
    csrf: str  # the value forms carry
    new_csrf: bool  # the CSRF cookie must be set on the response
    auth: bool  # tokens are required on this server

    def allows(self, needed: str) -> bool:
        return self.scope == "admin" or needed in (self.scope, "read")


def viewer(request: Request, authenticator: Authenticator | None, needed: str) -> Viewer:
    """The viewer of a request, or Refused (401 without a valid token, 403 without the scope).
    Called on a store thread: the token check may read the database."""
    csrf = request.cookies.get(CSRF_COOKIE, "")
    new_csrf = len(csrf) < 32
    if new_csrf:
        csrf = secrets.token_urlsafe(32)
    if authenticator is None:
        return Viewer("admin", False, csrf, new_csrf, auth=False)
    text = request.cookies.get(TOKEN_COOKIE)
    token = authenticator.check(f"Bearer {text}") if text else None
    if needed == PUBLIC:
        return Viewer(token.scope if token else "", token is not None, csrf, new_csrf, auth=True)
    if token is None:
        raise Refused(401, "sign in with an API token to see this page")
    if not token.allows(needed):
        raise Refused(403, f"your token has scope {token.scope!r}; this needs {needed!r}")
    return Viewer(token.scope, True, csrf, new_csrf, auth=True)


def check_post(request: Request, form_csrf: str) -> None:
    """Refused(403) unless the post comes from this origin and carries the session's CSRF value."""
    if not same_origin(request):
        raise Refused(403, "this form was posted from another site (Origin/Referer does not match)")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not form_csrf or not hmac.compare_digest(cookie, form_csrf):
        raise Refused(403, "the form's session check failed: reload the page and try again")


def same_origin(request: Request) -> bool:
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        parts = urlsplit(origin)
        return parts.netloc == host and parts.scheme == request.url.scheme
    referer = request.headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        return parts.netloc == host and parts.scheme == request.url.scheme
    return False


def set_cookie(response: Response, request: Request, name: str, value: str, *, max_age: int | None = None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def safe_next(target: str | None) -> str:
    """Where to go after signing in: only a path on this server, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def posted(request: Request) -> dict[str, str]:
    """A urlencoded form (the only kind the pages send; read once, kept on the request). A field
    given twice keeps its last value."""
    cached = getattr(request.state, "form", None)
    if cached is not None:
        return dict(cached)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Refused(415, "the pages post forms as application/x-www-form-urlencoded only")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Refused(413, f"the form is larger than {MAX_FORM_BYTES // 1024} KiB")
    try:
        form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "the form could not be read (not UTF-8 urlencoded text)") from None
    request.state.form = form
    return dict(form)
