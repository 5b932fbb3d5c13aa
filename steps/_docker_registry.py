"""Asking an OCI registry directly (Distribution API v2) whether it holds an image, for results
that come from a shared cache: another machine built the image, so this engine does not have it.

Credentials: the step's ``credentials`` input, else the Docker client's configuration
(``docker login``, ``DOCKER_CONFIG``). Basic and bearer-token challenges are answered as the
Docker client does; a loopback registry is spoken to over plain HTTP, as dockerd allows.
"""

from __future__ import annotations

import base64
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

import httpx

from buildsys.errors import StepError
from buildsys.step import Context

MANIFEST_TYPES = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
))
MAX_CHILDREN = 16
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_LOOPBACK = ("127.", "localhost", "[::1]")


def holds_image(ctx: Context, image: str, image_id: str, credentials: object) -> bool:
    """Whether the registry of ``image`` (``name:tag``) has that tag, and it is the image
    ``image_id`` (its config digest, or its manifest digest for a containerd-store engine)."""
    session, repository, tag = _session(ctx, image, credentials)
    reply = session.get(f"/v2/{repository}/manifests/{tag}")
    if reply is None:
        return False
    found = {reply.headers.get("Docker-Content-Digest", "")}
    manifest = reply.json()
    if isinstance(manifest.get("manifests"), list):  # an index: the platform images in it
        for child in manifest["manifests"][:MAX_CHILDREN]:
            sub = session.get(f"/v2/{repository}/manifests/{child.get('digest')}")
            if sub is not None:
                found.add(str((sub.json().get("config") or {}).get("digest", "")))
    else:
        found.add(str((manifest.get("config") or {}).get("digest", "")))
    return image_id in found


def manifest_digest(ctx: Context, image: str, credentials: object) -> str | None:
    """The digest of the manifest ``image`` (``name:tag``) names in its registry; None when absent."""
    session, repository, tag = _session(ctx, image, credentials)
    reply = session.get(f"/v2/{repository}/manifests/{tag}", method="HEAD")
    return None if reply is None else reply.headers.get("Docker-Content-Digest")


# One session per registry, repository and login for the life of the process: the auth challenge
# is answered once, then every check of a build is one request.
_SESSIONS: dict[tuple[str, str, tuple[str, str] | None], _Session] = {}
_LOCK = threading.Lock()


def _session(ctx: Context, image: str, credentials: object) -> tuple[_Session, str, str]:
    registry, repository, tag = _parts(image)
    login = _login(ctx, registry, credentials)
    scheme = "http" if registry.startswith(_LOOPBACK) else "https"
    host = "registry-1.docker.io" if registry == "docker.io" else registry
    key = (f"{scheme}://{host}", repository, login)
    with _LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            client = httpx.Client(base_url=key[0], timeout=httpx.Timeout(15.0, connect=5.0))
            session = _SESSIONS[key] = _Session(client, repository, login)
    return session, repository, tag


class _Session:
    def __init__(self, client: httpx.Client, repository: str, login: tuple[str, str] | None) -> None:
        self.client, self.repository, self.login = client, repository, login
        self.headers: dict[str, str] = {"Accept": MANIFEST_TYPES}

    def get(self, path: str, *, method: str = "GET") -> httpx.Response | None:
        """The reply to GET (or HEAD) `path`, answering an auth challenge when one comes (a token
        that expired is asked for again); None for 404."""
        try:
            reply = self.client.request(method, path, headers=dict(self.headers))
            if reply.status_code == 401:
                self._authenticate(reply.headers.get("WWW-Authenticate", ""))
                reply = self.client.request(method, path, headers=dict(self.headers))
        except httpx.HTTPError as exc:
            raise StepError(f"registry {self.client.base_url} could not be reached: {exc}") from None
        if reply.status_code == 404:
            return None
        if reply.status_code >= 400:
            raise StepError(f"registry {self.client.base_url} answered {reply.status_code} for {path}",
                            hint="check the registry credentials (`docker login` or the step's credentials)")
        return reply

    def _authenticate(self, challenge: str) -> None:
        kind = challenge.split(" ", 1)[0].lower()
        if kind == "basic" and self.login is not None:
            user, password = self.login
            self.headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        elif kind == "bearer":
            params = dict(_CHALLENGE.findall(challenge))
            realm = params.pop("realm", "")
            params.setdefault("scope", f"repository:{self.repository}:pull")
            auth = httpx.BasicAuth(*self.login) if self.login is not None else None
            reply = self.client.get(realm, params=params, auth=auth)
            if reply.status_code == 200:
                data = reply.json()
                token = data.get("token") or data.get("access_token")
                if token:
                    self.headers["Authorization"] = f"Bearer {token}"


def _parts(image: str) -> tuple[str, str, str]:
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        name, tag = image, "latest"
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag
    return "docker.io", name if rest else f"library/{name}", tag


def _login(ctx: Context, registry: str, credentials: object) -> tuple[str, str] | None:
    if isinstance(credentials, Mapping) and credentials.get("username") and credentials.get("password"):
        ctx.secrets.add(str(credentials["password"]))
        return str(credentials["username"]), str(credentials["password"])
    try:
        import docker.auth

        folder = ctx.env.get("DOCKER_CONFIG")
        path = os.path.join(folder, "config.json") if folder else None
        found: Any = docker.auth.load_config(config_path=path, credstore_env=ctx.env).resolve_authconfig(registry)
    except Exception:  # no usable client configuration: ask anonymously
        return None
    if isinstance(found, Mapping) and found.get("username") and found.get("password"):
        return str(found["username"]), str(found["password"])
    return None
