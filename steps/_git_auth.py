"""How git_clone hands credentials to git: an HTTP Basic header in environment-only configuration.

Nothing here writes a file: the header reaches git through ``GIT_CONFIG_COUNT`` /
``GIT_CONFIG_KEY_n`` / ``GIT_CONFIG_VALUE_n`` and is scoped to the repository's origin, and every
derived form of the token is added to ``ctx.secrets`` so that logs and errors mask it.
Standard library only.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from buildsys.errors import StepError
from buildsys.sensitive import mask_url_text
from buildsys.step import Context


@dataclass(frozen=True)
class GitAuth:
    """Extra environment for git processes, and the strings that must never be shown."""

    env: Mapping[str, str]
    secrets: frozenset[str]


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """Take a password out of an http(s) URL so it never reaches ``.git/config``."""
    if not url.lower().startswith(("http://", "https://")):
        return url, None, None
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url, None, None
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return clean, user, password


def token_and_username(
    access_token: object, credentials: object, url_user: str | None, url_password: str | None
) -> tuple[str | None, str | None]:
    """(token, username): from access_token, else credentials, else the URL's own userinfo."""
    if access_token is not None:
        if not isinstance(access_token, str):
            raise StepError("`access_token` must be a string")
        return (access_token or None), url_user if url_password is None else None
    if credentials is not None:
        if not isinstance(credentials, Mapping):
            raise StepError(
                "`credentials` must be a mapping with username/password/token/access_token",
                hint='e.g. credentials: "{{ prefect.blocks.github-credentials.my-creds }}"',
            )
        token = next(
            (str(credentials[k]) for k in ("access_token", "token", "password") if credentials.get(k)),
            None,
        )
        username = credentials.get("username") or None
        if username and not token:
            raise StepError("`credentials` has a username but no password or token")
        return token, (str(username) if username else None)
    if url_password is not None:
        return url_password, url_user
    return None, None


def git_auth(ctx: Context, url: str, scheme: str, token: str | None, username: str | None) -> GitAuth:
    if not token:
        return GitAuth({}, frozenset())
    if scheme not in ("http", "https"):
        ctx.log(f"note: the access token is not used for {scheme} URLs (git uses the machine's own setup)")
        return GitAuth({}, frozenset({token}))
    userinfo = basic_userinfo(urlsplit(url).hostname or "", token, username)
    encoded = base64.b64encode(userinfo.encode()).decode()
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}/"
    base = int(ctx.env.get("GIT_CONFIG_COUNT", "0") or "0")
    # git adds the header to every request of the process, to wherever a redirect points: with
    # credentials set, a redirect is refused instead of followed.
    env = {
        "GIT_CONFIG_COUNT": str(base + 2),
        f"GIT_CONFIG_KEY_{base}": f"http.{origin}.extraHeader",
        f"GIT_CONFIG_VALUE_{base}": f"Authorization: Basic {encoded}",
        f"GIT_CONFIG_KEY_{base + 1}": "http.followRedirects",
        f"GIT_CONFIG_VALUE_{base + 1}": "false",
    }
    secrets = {token, userinfo, encoded}
    ctx.secrets.update(secrets)
    return GitAuth(env, frozenset(secrets))


def basic_userinfo(host: str, token: str, username: str | None) -> str:
    """HTTP Basic credentials the way Prefect formats them for the common git hosts."""
    host = host.lower()
    if username:
        return f"{username}:{token}"
    if "bitbucketserver" in host:
        if ":" not in token:
            raise StepError("a Bitbucket Server token must be given as `username:token`")
        return token
    if "bitbucket" in host:
        return token if ":" in token else f"x-token-auth:{token}"
    if "gitlab" in host:
        return token if ":" in token else f"oauth2:{token}"
    return token if ":" in token else f"{token}:"


def scrub(ctx: Context, text: str) -> str:
    """Mask known secrets and any userinfo in URLs."""
    return mask_url_text(ctx.mask(text))
