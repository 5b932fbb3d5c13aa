"""The Docker engine and registry side of the docker steps: client, errors, names, login, push.

Kept apart from the steps themselves (``docker.py``) so each module stays about one thing; the
``docker`` SDK is imported inside the functions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from buildsys.errors import StepError
from buildsys.step import Context

NAMESPACE_ENV = "PREFECT_DEFAULT_DOCKER_BUILD_NAMESPACE"


def auth_config(ctx: Context, name: str, credentials: object) -> dict[str, str] | None:
    if credentials is None:
        return None
    if not isinstance(credentials, Mapping):
        raise StepError("`credentials` must be a mapping with username, password and registry_url")
    missing = [k for k in ("username", "password") if not credentials.get(k)]
    if missing:
        raise StepError(f"`credentials` lacks {' and '.join(missing)}")
    ctx.secrets.add(str(credentials["password"]))
    registry = str(credentials.get("registry_url") or _registry_of(name))
    return {"username": str(credentials["username"]), "password": str(credentials["password"]),
            "serveraddress": registry}


def login(ctx: Context, client: Any, name: str, credentials: object) -> dict[str, str] | None:
    auth = auth_config(ctx, name, credentials)
    if auth is None or not isinstance(credentials, Mapping):
        return None
    import docker.errors

    try:
        client.login(username=auth["username"], password=auth["password"], registry=auth["serveraddress"],
                     reauth=bool(credentials.get("reauth", True)))
    except docker.errors.APIError as exc:
        detail = ctx.mask(str(exc.explanation or exc))
        if _unreachable(detail):
            raise StepError(
                f"registry {auth['serveraddress']} could not be reached to log in",
                hint=detail,
            ) from None
        raise StepError(
            f"registry {auth['serveraddress']} refused the login of {auth['username']!r}",
            hint=detail,
        ) from None
    return auth


_UNREACHABLE = ("no such host", "connection refused", "i/o timeout", "network is unreachable",
                "dial tcp", "tls handshake timeout", "server misbehaving", "no route to host")


def _unreachable(detail: str) -> bool:
    """The engine's wording when the registry never answered (as opposed to refusing)."""
    text = detail.lower()
    return any(marker in text for marker in _UNREACHABLE) and "unauthorized" not in text


def push_tags(ctx: Context, client: Any, name: str, tags: Sequence[str], auth: dict[str, str] | None) -> dict[str, str]:
    import docker.errors

    digests: dict[str, str] = {}
    for tag in tags:
        reference = f"{name}:{tag}"
        try:
            local = client.images.get(reference)
        except docker.errors.ImageNotFound:
            local = None
        remote = registry_digest(client, reference, auth)
        if local is None:
            # a build restored from a shared cache: another runner's image, confirmed in this registry
            if remote is None:
                raise StepError(f"image {reference} is not in the local Docker engine",
                                hint="build it first (build_docker_image) or check image_name and tag")
            ctx.log(f"{reference}: not in this engine, and the registry already has {remote}; not pushing")
            digests[tag] = remote
            continue
        have = {d.split("@", 1)[1] for d in local.attrs.get("RepoDigests") or [] if d.startswith(name + "@")}
        if remote is not None and remote in have:
            ctx.log(f"{reference}: the registry already has {remote}; not pushing")
            digests[tag] = remote
            continue
        digests[tag] = _push_one(ctx, client, name, tag, auth)
        from ._docker_registry import pushed

        pushed(ctx, reference, auth)  # a check of this tag earlier in the build saw what was there before
    return digests


def _push_one(ctx: Context, client: Any, name: str, tag: str, auth: dict[str, str] | None) -> str:
    reference = f"{name}:{tag}"
    digest = None
    with docker_errors(ctx, f"pushing {reference}"):
        for chunk in client.api.push(name, tag=tag, stream=True, decode=True, auth_config=auth):
            if "error" in chunk:
                raise StepError(f"pushing {reference} failed: {ctx.mask(str(chunk['error']).strip())}",
                                hint=_push_hint(str(chunk["error"])))
            status = chunk.get("status")
            if status and not chunk.get("progressDetail"):
                ctx.log(f"{chunk.get('id', reference)}: {status}" if chunk.get("id") else str(status))
            aux = chunk.get("aux")
            if isinstance(aux, Mapping) and aux.get("Digest"):
                digest = str(aux["Digest"])
    if digest is None:
        raise StepError(f"pushing {reference} finished without a digest from the registry")
    ctx.log(f"pushed {reference} ({digest})")
    return digest


def _push_hint(error: str) -> str | None:
    lowered = error.lower()
    if "auth" in lowered or "denied" in lowered or "unauthorized" in lowered:
        return "the registry wants credentials: set credentials (username, password, registry_url)"
    if "connection refused" in lowered or "no such host" in lowered:
        return "check that the registry in image_name is reachable from the Docker engine"
    return None


def registry_digest(client: Any, reference: str, auth: dict[str, str] | None) -> str | None:
    import docker.errors

    try:
        return str(client.images.get_registry_data(reference, auth_config=auth).id)
    except docker.errors.APIError:
        return None  # not there (or not readable): push it


def _registry_of(name: str) -> str:
    first = name.split("/", 1)[0]
    return first if "/" in name and ("." in first or ":" in first or first == "localhost") else "docker.io"


def qualified(ctx: Context, image_name: str) -> str:
    if not image_name or any(c.isspace() for c in image_name):
        raise StepError(f"invalid image_name {image_name!r}", hint="e.g. registry.example.com/team/app")
    namespace = ctx.env.get(NAMESPACE_ENV)
    return f"{namespace.rstrip('/')}/{image_name}" if namespace and "/" not in image_name else image_name


# One client per engine and client configuration for the life of the process: each new one asks
# the engine for its API version and opens its own connection pool (about 50 ms under load), and a
# build asks for one per key (the FROM images' ids), per cache check and per step. The client is
# thread-safe (requests over a urllib3 pool) and reconnects by itself. A client that logs in (a
# step's `credentials`) is never shared: the login would stay in it for the steps after.
DOCKER_ENV = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONFIG")
_CLIENTS: dict[tuple[str, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(ctx: Context, *, private: bool = False) -> Any:
    """The Docker client for the engine ``ctx.env`` names; `private`: a new one, kept by no one."""
    import os

    # the SDK reads the client configuration's folder from the process environment
    key = (*(ctx.env.get(name, "") for name in DOCKER_ENV), os.environ.get("DOCKER_CONFIG", ""),
           os.environ.get("HOME", ""))
    if private:
        return _new_client(ctx)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = _new_client(ctx)
    return client


def _new_client(ctx: Context) -> Any:
    import docker

    try:
        return docker.from_env(environment=ctx.env, timeout=3600)
    except docker.errors.DockerException as exc:
        raise StepError(f"cannot reach the Docker engine: {exc}",
                        hint="start dockerd or set DOCKER_HOST") from None


def image_id(ctx: Context, reference: str) -> str | None:
    """The id of the image `reference` names in the engine of ``ctx.env`` (None: it has none),
    asked over the engine's socket (the SDK only for engines behind TLS or ssh). Identical
    lookups at the same moment share one request (``_docker_api.Lookups``)."""
    from ._docker_api import LOOKUPS, engine_for

    engine = engine_for(ctx.env)
    if engine is None:
        where = tuple(ctx.env.get(name, "") for name in DOCKER_ENV)
        return LOOKUPS.get((where, reference), lambda: local_image_id(client_for(ctx), reference))
    return LOOKUPS.get((engine.address, reference), lambda: engine.image_id(reference))


def base_image_id(ctx: Context, reference: str) -> str | None:
    """`image_id` of a build's ``FROM`` image, asked once per build until this process changes an
    image: the builds of a group-per-image project all key on one base image, some after the
    others' answer came, and every key of one build then holds the same id for it."""
    from ._docker_api import LOOKUPS

    where = (*(ctx.env.get(name, "") for name in DOCKER_ENV), reference)
    generation = LOOKUPS.generation  # read first: an answer asked before a change is not kept for after it
    return ctx.build.once(("docker base image id", where, generation), lambda: image_id(ctx, reference))


def images_changed() -> None:
    """This process built or tagged an image: lookups from now on ask the engine afresh."""
    from ._docker_api import LOOKUPS

    LOOKUPS.changed()


def local_image_id(client: Any, reference: str) -> str | None:
    import docker.errors

    try:
        return str(client.images.get(reference).id)
    except docker.errors.ImageNotFound:
        return None


@contextmanager
def docker_errors(ctx: Context, doing: str) -> Iterator[None]:
    import docker.errors

    try:
        yield
    except docker.errors.APIError as exc:
        raise StepError(f"Docker engine error while {doing}: {ctx.mask(str(exc.explanation or exc))}") from None
    except docker.errors.DockerException as exc:
        raise StepError(f"Docker error while {doing}: {ctx.mask(str(exc))}") from None
