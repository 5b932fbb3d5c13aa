"""Asking an OCI registry directly (Distribution API v2) whether it holds an image, for results
that come from a shared cache: another machine built the image, so this engine does not have it.

Credentials: the step's ``credentials`` input, else the Docker client's configuration
(``docker login``, ``DOCKER_CONFIG``). Basic and bearer-token challenges are answered as the
Docker client does; a loopback registry is spoken to over plain HTTP, as dockerd allows.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

from buildsys.errors import StepError
from buildsys.step import Context

MANIFEST_TYPES = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
))
MAX_CHILDREN = 16
_CHALLENGE = r'(\w+)="([^"]*)"'  # a token challenge's parameters (compiled when one comes: re's cache)
_LOOPBACK = ("127.", "localhost", "[::1]")


def holds_image(ctx: Context, image: str, image_id: str, credentials: object) -> bool:
    """Whether the registry of ``image`` (``name:tag``) has that tag, and it is the image
    ``image_id`` (its config digest, or its manifest digest for a containerd-store engine)."""
    session, repository, tag = _session(ctx, image, credentials)
    manifest = _manifest(ctx, session, tag)
    if manifest is None:
        return False
    found = {manifest.digest}
    if isinstance(manifest.body.get("manifests"), list):  # an index: the platform images in it
        for child in manifest.body["manifests"][:MAX_CHILDREN]:
            digest = child.get("digest") if isinstance(child, Mapping) else None
            sub = session.get(f"/v2/{repository}/manifests/{digest}") if isinstance(digest, str) else None
            if sub is not None:
                found.add(str((_json(sub).get("config") or {}).get("digest", "")))
    else:
        found.add(str((manifest.body.get("config") or {}).get("digest", "")))
    return image_id in found


def names_registry(image: str) -> bool:
    """Whether ``image`` names its registry (``host[:port]/repository``), not Docker Hub's by default."""
    return _parts(image)[0] != "docker.io"


def manifest_digest(ctx: Context, image: str, credentials: object) -> str | None:
    """The digest of the manifest ``image`` (``name:tag``) names in its registry; None when absent."""
    session, _, tag = _session(ctx, image, credentials)
    manifest = _manifest(ctx, session, tag)
    return None if manifest is None or not manifest.digest else manifest.digest


def pushed(ctx: Context, image: str, credentials: object) -> None:
    """This build pushed ``image``: what its checks learnt of that tag no longer holds."""
    session, _, tag = _session(ctx, image, credentials)
    ctx.build.forget(_manifest_key(session, tag))


class Manifest:
    __slots__ = ("body", "digest")

    def __init__(self, digest: str, body: dict[str, Any]) -> None:
        self.digest = digest  # Docker-Content-Digest
        self.body = body  # the manifest (or index) itself


def _manifest(ctx: Context, session: _Session, tag: str) -> Manifest | None:
    """The manifest the tag names, asked once per build: an image build's check and its push's
    check ask for the same tag, one after the other (the build's GET answers both)."""

    def ask() -> Manifest | None:
        reply = session.get(f"/v2/{session.repository}/manifests/{tag}")
        return None if reply is None else Manifest(reply.headers.get("Docker-Content-Digest", ""), _json(reply))

    return ctx.build.once(_manifest_key(session, tag), ask)


def _manifest_key(session: _Session, tag: str) -> tuple[object, ...]:
    return ("docker registry manifest", session.base, session.repository, session.login, tag)


# Requests go through buildsys.sharedcache.http (kept-alive connections on http.client: urllib3 or
# httpx would cost more to import than a restored build's checks take). One client per registry for
# the life of the process (its token service's origin pooled in it too), and one session per
# registry, repository and login: the auth challenge is answered once (a Basic login is sent to the
# other repositories of that registry without waiting for their challenge), then a check is one request.
_CLIENTS: dict[str, Any] = {}
_SESSIONS: dict[tuple[str, str, tuple[str, str] | None], _Session] = {}
_BASIC: set[tuple[str, tuple[str, str]]] = set()  # registries that asked this login for Basic auth
_PROBES: dict[tuple[str, tuple[str, str] | None], threading.Event] = {}  # set once a login's first request is answered
# the token service (realm, and its parameters but the scope) a registry named in a Bearer challenge, by login
_BEARER: dict[tuple[str, tuple[str, str] | None], tuple[str, dict[str, str]]] = {}
_LOCK = threading.Lock()
READ_S = 15.0


def _session(ctx: Context, image: str, credentials: object) -> tuple[_Session, str, str]:
    registry, repository, tag = _parts(image)
    login = _login(ctx, registry, credentials)
    scheme = "http" if registry.startswith(_LOOPBACK) else "https"
    host = "registry-1.docker.io" if registry == "docker.io" else registry
    base = f"{scheme}://{host}"
    key = (base, repository, login)
    with _LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            client = _CLIENTS.get(base)
            if client is None:
                client = _CLIENTS[base] = _client(ctx.env)
            session = _SESSIONS[key] = _Session(client, base, repository, login)
    return session, repository, tag


def _client(env: Mapping[str, str]) -> Any:
    """A thread-safe client (redirects followed), through the proxy the environment names for each origin."""
    from buildsys.sharedcache.http import Client

    return Client(timeout=READ_S, proxy_for=lambda origin: _proxy(origin, env))


def _proxy(base: str, env: Mapping[str, str]) -> str | None:
    scheme, _, host = base.partition("://")
    lowered = {k.lower(): v for k, v in env.items()}
    proxy = lowered.get(f"{scheme}_proxy") or lowered.get("all_proxy")
    if not proxy or host.startswith(_LOOPBACK):
        return None
    name = host.rsplit(":", 1)[0].lower()
    for entry in (e.strip().lower().lstrip(".") for e in lowered.get("no_proxy", "").split(",")):
        if entry == "*" or (entry and (name == entry or name.endswith("." + entry))):
            return None
    return proxy


class _Session:
    def __init__(self, client: Any, base: str, repository: str, login: tuple[str, str] | None) -> None:
        self.client, self.base, self.repository, self.login = client, base, repository, login
        self.headers: dict[str, str] = {"Accept": MANIFEST_TYPES}
        if login is not None and (base, login) in _BASIC:
            self.headers["Authorization"] = _basic(login)

    def get(self, path: str, *, method: str = "GET") -> Any:
        """The reply to GET (or HEAD) `path`, answering an auth challenge when one comes (a token
        that expired is asked for again); None for 404."""
        from buildsys.sharedcache.http import RequestError

        probe = None
        try:
            probe = self._first_of_login()
            reply = self._request(method, path)
            challenged = reply.status == 401
            if challenged:
                self._authenticate(reply.headers.get("WWW-Authenticate", ""))
            if probe is not None:  # the registry's way with this login is known: the others go on
                probe.set()
            if challenged:
                reply = self._request(method, path)
        except RequestError as exc:
            raise StepError(f"registry {self.base} could not be reached: {exc}") from None
        finally:
            if probe is not None:
                probe.set()
        if reply.status == 404:
            return None
        if reply.status >= 400:
            raise StepError(f"registry {self.base} answered {reply.status} for {path}",
                            hint="check the registry credentials (`docker login` or the step's credentials)")
        return reply

    def _first_of_login(self) -> threading.Event | None:
        """Until this registry has answered one request with this login (or none), a session's
        first request waits for that answer (an Event to set once it came, when this session is
        the first), then answers ahead what it asked: a Basic login is sent at once, a token for
        this repository is asked of the token service it named, where the parallel checks of a
        restored build would each be answered 401 first."""
        if "Authorization" in self.headers:
            return None
        with _LOCK:
            first = _PROBES.get((self.base, self.login))
            if first is None:
                first = _PROBES[(self.base, self.login)] = threading.Event()
                return first
        first.wait(READ_S)
        with _LOCK:
            basic = self.login is not None and (self.base, self.login) in _BASIC
            service = _BEARER.get((self.base, self.login))
        if basic and self.login is not None:
            self.headers["Authorization"] = _basic(self.login)
        elif service is not None:  # a token that does not do is answered as a challenge later
            realm, params = service
            self._token(realm, {**params, "scope": f"repository:{self.repository}:pull"})
        return None

    def _request(self, method: str, path: str) -> Any:
        return self.client.request(method, self.base + path, headers=dict(self.headers))

    def _authenticate(self, challenge: str) -> None:
        kind = challenge.split(" ", 1)[0].lower()
        if kind == "basic" and self.login is not None:
            self.headers["Authorization"] = _basic(self.login)
            with _LOCK:
                _BASIC.add((self.base, self.login))
        elif kind == "bearer":
            params = dict(re.findall(_CHALLENGE, challenge))
            realm = params.pop("realm", "")
            scope = params.pop("scope", f"repository:{self.repository}:pull")
            with _LOCK:  # the next sessions with this login ask this service for their token at once
                _BEARER[(self.base, self.login)] = (realm, params)
            self._token(realm, {**params, "scope": scope})

    def _token(self, realm: str, params: Mapping[str, str]) -> None:
        headers = {"Authorization": _basic(self.login)} if self.login is not None else {}
        query = urllib.parse.urlencode(params)
        reply = self.client.request("GET", f"{realm}{'&' if '?' in realm else '?'}{query}", headers=headers)
        if reply.status == 200:
            data = _json(reply)
            token = data.get("token") or data.get("access_token")
            if isinstance(token, str) and token:
                self.headers["Authorization"] = f"Bearer {token}"


def _basic(login: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()


def _json(reply: Any) -> dict[str, Any]:
    """A reply's JSON object; {} for anything else (a registry's reply is data, never trusted)."""
    try:
        data = json.loads(reply.data)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


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
    # read once per build (every image's check and its push's ask the same registry's login)
    where = (ctx.env.get("DOCKER_CONFIG"), os.environ.get("DOCKER_CONFIG"), os.path.expanduser("~"))
    return ctx.build.once(("docker login", registry, where), lambda: configured_login(ctx.env, registry))


def configured_login(env: Mapping[str, str], registry: str) -> tuple[str, str] | None:
    """The login ``docker login`` stored for `registry` in the client configuration
    (``DOCKER_CONFIG``/config.json, else ``~/.docker/config.json``), read as the Docker SDK reads it.
    A configuration that keeps its logins in a credential store or helper (or the legacy
    ``~/.dockercfg``) is read through the SDK, which runs the helper."""
    config = _config_file(env)
    if config is None:
        return None
    try:
        with open(config, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError):
        data = None
    if not isinstance(data, dict) or data.get("credsStore") or data.get("credHelpers") or not data.get("auths"):
        return _sdk_login(env, config, registry)
    auths = data["auths"]
    if not isinstance(auths, dict):
        return None
    wanted = _index_name(registry)
    entry = auths.get(wanted)
    if entry is None:
        entry = next((e for key, e in auths.items() if _index_name(str(key)) == wanted), None)
    if not isinstance(entry, dict) or "identitytoken" in entry or not isinstance(entry.get("auth"), str):
        return None
    try:
        user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if user and password else None


def _config_file(env: Mapping[str, str]) -> str | None:
    """The client configuration the SDK reads: the step environment's DOCKER_CONFIG, the process's,
    ~/.docker/config.json, ~/.dockercfg; the first that exists."""
    home = os.path.expanduser("~")
    candidates = [os.path.join(folder, "config.json") for folder in (env.get("DOCKER_CONFIG"), os.environ.get("DOCKER_CONFIG")) if folder]
    candidates += [os.path.join(home, ".docker", "config.json"), os.path.join(home, ".dockercfg")]
    return next((path for path in candidates if os.path.exists(path)), None)


def _index_name(registry: str) -> str:
    """A registry's name as the Docker client's configuration keys it (Docker Hub: docker.io)."""
    host = registry.replace("http://", "").replace("https://", "").split("/", 1)[0]
    return "docker.io" if host == "index.docker.io" else host


def _sdk_login(env: Mapping[str, str], config: str, registry: str) -> tuple[str, str] | None:
    try:
        import docker.auth

        found: Any = docker.auth.load_config(config_path=config, credstore_env=env).resolve_authconfig(registry)
    except Exception:  # no usable client configuration: ask anonymously
        return None
    if isinstance(found, Mapping) and found.get("username") and found.get("password"):
        return str(found["username"]), str(found["password"])
    return None
