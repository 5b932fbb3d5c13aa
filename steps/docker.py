"""``build_docker_image`` and ``push_docker_image``, through the Docker SDK against a real engine.

Builds are cached on the content of the build context (``.dockerignore`` honoured, exactly as the
SDK filters what it sends) and trusted from cache only while the image is still in the engine. A
build without a ``tag`` gets one derived from that content (Prefect uses a timestamp, which would
make every build new). Pushes are skipped when the registry already holds the image's digest.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from buildsys.errors import StepError
from buildsys.step import Context, step

from ._docker_engine import (
    auth_config,
    base_image_id,
    client_for,
    docker_errors,
    image_id,
    images_changed,
    login,
    push_tags,
    qualified,
    registry_digest,
)
from ._files import as_globs

BUILD_ALIASES = (
    "prefect_docker.deployments.steps.build_docker_image",
    "prefect_docker.projects.steps.build_docker_image",
)
PUSH_ALIASES = (
    "prefect_docker.deployments.steps.push_docker_image",
    "prefect_docker.projects.steps.push_docker_image",
)
DEFAULT_BASE_IMAGE = "python:3.11-slim"
BASE_IMAGE_ENV = "BUILDSYS_DOCKER_BASE_IMAGE"

BUILD_EXAMPLE = """\
build:
  - prefect_docker.deployments.steps.build_docker_image:
      id: build_image
      image_name: registry.example.com/team/flows
      tag: "{{ get-sha.stdout }}"
      dockerfile: auto
"""

PUSH_EXAMPLE = """\
push:
  - prefect_docker.deployments.steps.push_docker_image:
      image_name: "{{ build_image.image_name }}"
      tag: "{{ build_image.tag }}"
      credentials:
        username: ci
        password: "{{ $REGISTRY_PASSWORD }}"
        registry_url: registry.example.com
"""

_STEP_LINE = r"^Step \d+/\d+ : "  # build output's patterns: compiled when a build runs (re's cache)
_ANSI = r"\x1b\[[0-9;]*m"
_BUILDER_NOISE = (" ---> ", "Removing intermediate container ")
_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", re.IGNORECASE | re.MULTILINE)


class BuildPlan:
    """Everything a build needs, decided from the inputs before the engine is asked anything. (A
    plain class: a dataclass would cost every process that imports this step its generated methods.)"""

    __slots__ = ("context", "dockerfile", "files", "generated", "image_name")

    def __init__(self, image_name: str, context: Path, dockerfile: str, generated: str | None,
                 files: tuple[str, ...]) -> None:
        self.image_name = image_name
        self.context = context
        self.dockerfile = dockerfile  # relative to the context, or an absolute path (generated / outside)
        self.generated = generated  # the Dockerfile text for ``dockerfile: auto``
        self.files = files  # the context's files, relative to the context (empty when not asked for)


# --- build -------------------------------------------------------------------------------------


@step(
    "build_docker_image",
    aliases=BUILD_ALIASES,
    version="1",
    outputs=("image_name", "tag", "image", "image_id", "additional_tags"),
    example=BUILD_EXAMPLE,
)
def build_docker_image(
    ctx: Context,
    image_name: str,
    dockerfile: str = "Dockerfile",
    tag: str | None = None,
    additional_tags: Sequence[str] | None = None,
    ignore_cache: bool = False,
    persist_dockerfile: bool = False,
    dockerfile_output_path: str = "Dockerfile.generated",
    build_backend: str = "docker-py",
    base_image: str | None = None,
    path: str | None = None,
    buildargs: Mapping[str, str] | None = None,
    platform: str | None = None,
    labels: Mapping[str, str] | None = None,
    target: str | None = None,
    pull: bool = False,
    nocache: bool = False,
    push: bool = False,
    credentials: Mapping[str, Any] | None = None,
    **build_kwargs: Any,
) -> dict[str, Any]:
    """Build a Docker image from the project (``dockerfile: auto`` writes a Dockerfile for it)."""
    if build_backend != "docker-py":
        raise StepError(f"build_backend {build_backend!r} is not supported", hint="use docker-py (the default)")
    plan = _plan(ctx, image_name, dockerfile, base_image, path)
    options = {"buildargs": dict(buildargs or {}), "labels": dict(labels or {}), "platform": platform,
               "target": target, **_engine_options(build_kwargs)}
    client = client_for(ctx, private=push and credentials is not None)  # a login stays in its client
    tag = tag or _content_tag(plan, options, _from_images(ctx, plan, options["buildargs"]))
    extra = [str(t) for t in additional_tags or []]
    if persist_dockerfile and plan.generated is not None:
        ctx.path(dockerfile_output_path).write_text(plan.generated)
    try:
        built = _run_build(ctx, client, plan, tag, options, pull=pull, nocache=nocache)
        with docker_errors(ctx, f"tagging {plan.image_name}"):
            for extra_tag in extra:
                client.api.tag(built, plan.image_name, tag=extra_tag)
    finally:
        images_changed()  # a later step's FROM may be this image
    ctx.log(f"built {plan.image_name}:{tag} ({built})")
    if push:  # prefect-docker's old `push: true` (with its optional `credentials`)
        push_tags(ctx, client, plan.image_name, [tag, *extra], login(ctx, client, plan.image_name, credentials))
    return {"image_name": plan.image_name, "tag": tag, "image": f"{plan.image_name}:{tag}",
            "image_id": built, "additional_tags": extra}


@build_docker_image.files
def _context_files(inputs: Mapping[str, Any], ctx: Context) -> list[str]:
    """The build context as the SDK sends it (``.dockerignore`` honoured), relative to the cwd."""
    plan = _plan(ctx, str(inputs.get("image_name", "")), str(inputs.get("dockerfile", "Dockerfile")),
                 inputs.get("base_image"), inputs.get("path"))
    prefix = _relative_to_cwd(ctx, plan.context)
    found = [f"{prefix}{rel}" for rel in plan.files]
    if plan.generated is None and Path(plan.dockerfile).is_absolute():
        found.append(plan.dockerfile)  # a Dockerfile outside the context is still read
    return as_globs(found)


@build_docker_image.fingerprint
def _base_images(inputs: Mapping[str, Any], ctx: Context) -> str:
    """The ids of the FROM images in this engine, so that a rebuilt base image rebuilds this one."""
    plan = _plan(ctx, str(inputs.get("image_name", "")), str(inputs.get("dockerfile", "Dockerfile")),
                 inputs.get("base_image"), inputs.get("path"), with_files=False)  # the Dockerfile is enough
    return _from_images(ctx, plan, inputs.get("buildargs") or {})


_ARG = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?", re.IGNORECASE | re.MULTILINE)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _from_images(ctx: Context, plan: BuildPlan, buildargs: Mapping[str, Any] | None = None) -> str:
    """`FROM` references with build args substituted (`ARG BASE=…` / `FROM ${BASE}`); a reference
    that stays unresolved (or names an earlier stage) is left out rather than looked up."""
    text = plan.generated if plan.generated is not None else _read_dockerfile(plan)
    args = {m.group(1): (m.group(2) or "").strip("\"'") for m in _ARG.finditer(text)}
    args.update({str(k): str(v) for k, v in (buildargs or {}).items()})

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        return args.get(name) or match.group(2) or ""

    refs = set()
    for ref in _FROM.findall(text):
        resolved = _VAR.sub(substitute, ref)
        if resolved and "$" not in resolved:
            refs.add(resolved)
    stages = {m.lower() for m in re.findall(r"^\s*FROM\s+\S+\s+AS\s+(\S+)", text, re.IGNORECASE | re.MULTILINE)}
    return "\n".join(
        f"{ref}={base_image_id(ctx, ref) or 'absent'}" for ref in sorted(refs) if ref.lower() not in stages
    )


@build_docker_image.check
def _image_still_there(outputs: Mapping[str, Any], inputs: Mapping[str, Any], ctx: Context) -> bool:
    image, built = outputs.get("image"), outputs.get("image_id")
    if not isinstance(image, str) or not isinstance(built, str):
        return False
    return image_id(ctx, image) == built


@build_docker_image.shared
def _image_where_others_get_it(outputs: Mapping[str, Any], inputs: Mapping[str, Any], ctx: Context) -> bool:
    """A build from the shared cache stands when its registry holds that very image under its tag
    (another runner pushed it; it is not pulled here), or when this engine has the image. An image
    that names its registry is looked for there first: a fresh runner finds it there, not in its
    engine, and the image's push check reads that same answer next (one request per build,
    `_docker_registry`); an image named without one (Docker Hub's) is looked for here first."""
    image, built = outputs.get("image"), outputs.get("image_id")
    if not isinstance(image, str) or not isinstance(built, str):
        return False
    from ._docker_registry import holds_image, names_registry

    if not names_registry(image):
        return image_id(ctx, image) == built or holds_image(ctx, image, built, inputs.get("credentials"))
    try:
        if holds_image(ctx, image, built, inputs.get("credentials")):
            return True
    except StepError:
        if image_id(ctx, image) == built:  # the registry did not answer, but the image is here
            return True
        raise
    return image_id(ctx, image) == built


# Further keyword arguments of the SDK's build that Prefect passes through (**build_kwargs).
_ENGINE_OPTIONS = ("cache_from", "container_limits", "extra_hosts", "forcerm", "isolation", "network_mode",
                   "quiet", "rm", "shmsize", "squash", "timeout", "use_config_proxy")
_BUILDX_ONLY = ("builder", "cache_to", "load", "secrets", "ssh")


def _engine_options(build_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    buildx = sorted(k for k in build_kwargs if k in _BUILDX_ONLY)
    if buildx:
        raise StepError(f"{buildx[0]!r} needs the buildx backend, which buildsys does not support",
                        hint="remove it; builds go through the engine API (docker-py)")
    unknown = sorted(k for k in build_kwargs if k not in _ENGINE_OPTIONS)
    if unknown:
        raise StepError(f"unknown build_docker_image input {unknown[0]!r}",
                        hint="engine build options: " + ", ".join(_ENGINE_OPTIONS))
    return {k: v for k, v in build_kwargs.items() if v is not None}


def _plan(ctx: Context, image_name: str, dockerfile: str, base_image: object, path: object, *,
          with_files: bool = True) -> BuildPlan:
    """The build decided from its inputs; `with_files`: list the context's files too (a walk of it)."""
    name = qualified(ctx, image_name)
    context = ctx.path(str(path)) if path else ctx.cwd
    if not context.is_dir():
        raise StepError(f"build context {path!r} is not a directory (resolved to {context})")
    generated = None
    if dockerfile == "auto":
        if (context / "Dockerfile").exists():
            raise StepError(
                "dockerfile: auto would generate a Dockerfile, but the build context already has one",
                hint="use `dockerfile: Dockerfile` to build with it",
            )
        base = str(base_image or ctx.env.get(BASE_IMAGE_ENV) or DEFAULT_BASE_IMAGE)
        generated = auto_dockerfile(base, ctx.cwd.name, has_requirements=(context / "requirements.txt").is_file())
        dockerfile = "Dockerfile"
    elif not (context / dockerfile).is_file():
        raise StepError(f"Dockerfile {dockerfile!r} not found in the build context {context}",
                        hint="set `dockerfile` (relative to the context) or use `dockerfile: auto`")
    files = tuple(_context(context, dockerfile)) if with_files else ()
    return BuildPlan(name, context, dockerfile, generated, files)


def auto_dockerfile(base_image: str, dirname: str, *, has_requirements: bool) -> str:
    """The Dockerfile ``dockerfile: auto`` builds with: the project under /opt/prefect/<dirname>."""
    target = f"/opt/prefect/{dirname}"
    lines = [f"FROM {base_image}"]
    if has_requirements:
        lines += [
            f"COPY requirements.txt {target}/requirements.txt",
            f"RUN python -m pip install --no-cache-dir -r {target}/requirements.txt",
        ]
    lines += [f"COPY . {target}/", f"WORKDIR {target}/"]
    return "\n".join(lines) + "\n"


def _context(context: Path, dockerfile: str) -> list[str]:
    return sorted(p for p in _sent(context, ignore_patterns(context), dockerfile) if (context / p).is_file())


def _sent(context: Path, patterns: list[str], dockerfile: str) -> set[str]:
    """The paths a build of `context` sends (files and directories), by Docker's ``.dockerignore`` rules."""
    from ._dockerignore import BadPattern, sent_paths

    try:
        return sent_paths(context, patterns, dockerfile=dockerfile)
    except BadPattern as exc:
        raise StepError(f"{context / '.dockerignore'}: {exc}", hint="Docker refuses this pattern too") from None


def ignore_patterns(context: Path) -> list[str]:
    """The context's ``.dockerignore`` patterns, plus buildsys's own state directory, which must
    neither reach the image nor make every build look new."""
    from ._dockerignore import read_patterns

    ignore = context / ".dockerignore"
    patterns = read_patterns(ignore.read_text(errors="replace")) if ignore.is_file() else []
    return [*patterns, ".buildsys"]


def _relative_to_cwd(ctx: Context, context: Path) -> str:
    try:
        rel = context.resolve().relative_to(ctx.cwd.resolve()).as_posix()
    except ValueError:
        return f"{context}/"
    return "" if rel == "." else f"{rel}/"


def _read_dockerfile(plan: BuildPlan) -> str:
    return (plan.context / plan.dockerfile).read_text(errors="replace")


def _content_tag(plan: BuildPlan, options: Mapping[str, Any], base_images: str) -> str:
    """A tag that changes exactly when what goes into the build changes (base images included)."""
    digest = hashlib.sha256()
    for rel in plan.files:
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256((plan.context / rel).read_bytes()).digest())
    digest.update((plan.generated or "").encode() + b"\0" + plan.dockerfile.encode())
    digest.update(json.dumps(options, sort_keys=True).encode() + base_images.encode())
    return f"sha-{digest.hexdigest()[:16]}"


def _run_build(ctx: Context, client: Any, plan: BuildPlan, tag: str, options: Mapping[str, Any], *,
               pull: bool, nocache: bool) -> str:
    reference = f"{plan.image_name}:{tag}"
    step_line = ""
    step_output: list[str] = []
    found_id: str | None = None
    with docker_errors(ctx, f"building {reference}"), ExitStack() as stack:
        settings = {"rm": True, "forcerm": True, **{k: v for k, v in options.items() if v is not None}}
        name, archive = _context_archive(plan)
        stack.callback(archive.close)
        chunks = client.api.build(
            fileobj=archive, custom_context=True, dockerfile=name, tag=reference, decode=True, pull=pull,
            nocache=nocache, **{k: v for k, v in settings.items() if v not in ({}, "")},
        )
        for chunk in chunks:
            for line in re.sub(_ANSI, "", str(chunk.get("stream", ""))).splitlines():
                ctx.log(line)
                if re.match(_STEP_LINE, line):
                    step_line, step_output = line, []
                elif line.strip():
                    step_output.append(line)
            if "error" in chunk:
                raise _build_failure(ctx, reference, step_line, step_output, str(chunk["error"]))
            aux = chunk.get("aux")
            if isinstance(aux, Mapping) and aux.get("ID"):
                found_id = str(aux["ID"])
        return found_id or str(client.images.get(reference).id)


def _context_archive(plan: BuildPlan) -> tuple[str, Any]:
    """The build context as a tar, filtered exactly like the ``files`` hook. A generated Dockerfile,
    or one from outside the context, is added under a fixed name that the archive's own
    ``.dockerignore`` keeps out of ``COPY .`` (a fixed name keeps rebuilds identical)."""
    from docker.api.build import process_dockerfile
    from docker.utils.build import create_archive

    if plan.generated is not None:
        name, content = "Dockerfile", plan.generated
    else:
        name, content = process_dockerfile(plan.dockerfile, str(plan.context))
        if content is not None:
            name = ".buildsys.Dockerfile"
    patterns = ignore_patterns(plan.context)
    if not (plan.context / ".dockerignore").exists():
        patterns.append(".dockerignore")  # one is added to the archive below; keep it out of the image
    files = sorted(_sent(plan.context, list(patterns), str(name)))
    extra = []
    if content is not None:  # as the SDK's `tar`: the added Dockerfile, and a .dockerignore naming it
        extra = [(".dockerignore", "\n".join([*patterns, str(name)])), (str(name), content)]
    archive = create_archive(str(plan.context), files=files, extra_files=extra)
    return str(name), archive


def _build_failure(ctx: Context, reference: str, step_line: str, output: list[str], error: str) -> StepError:
    where = f" at {step_line}" if step_line else ""
    shown = [line for line in output if not line.startswith(_BUILDER_NOISE)][-20:]
    detail = "\n".join(["", *shown]) if shown else ""
    return StepError(ctx.mask(f"docker build of {reference} failed{where}{detail}\n{error.strip()}"),
                     hint="the output above is the failing Dockerfile instruction's")


# --- push --------------------------------------------------------------------------------------


@step(
    "push_docker_image",
    aliases=PUSH_ALIASES,
    version="1",
    outputs=("image_name", "tag", "image", "digest", "additional_tags"),
    example=PUSH_EXAMPLE,
)
def push_docker_image(
    ctx: Context,
    image_name: str,
    tag: str | None = None,
    credentials: Mapping[str, Any] | None = None,
    additional_tags: Sequence[str] | None = None,
    ignore_cache: bool = False,
    build_backend: str = "docker-py",
) -> dict[str, Any]:
    """Push an image (and its additional tags) to its registry, unless the registry has it already."""
    if build_backend != "docker-py":
        raise StepError(f"build_backend {build_backend!r} is not supported", hint="use docker-py (the default)")
    name, tag = _split_tag(qualified(ctx, image_name), tag)
    extra = [str(t) for t in additional_tags or []]
    client = client_for(ctx, private=credentials is not None)  # a login stays in its client
    auth = login(ctx, client, name, credentials)
    digests = push_tags(ctx, client, name, [tag, *extra], auth)
    return {"image_name": name, "tag": tag, "image": f"{name}:{tag}", "digest": digests[tag],
            "additional_tags": extra}


@push_docker_image.check
def _registry_still_has_it(outputs: Mapping[str, Any], inputs: Mapping[str, Any], ctx: Context) -> bool:
    image, digest = outputs.get("image"), outputs.get("digest")
    if not isinstance(image, str) or not isinstance(digest, str):
        return False
    client = client_for(ctx)
    name = str(outputs.get("image_name", ""))
    auth = auth_config(ctx, name, inputs.get("credentials"))
    return registry_digest(client, image, auth) == digest


@push_docker_image.shared
def _registry_has_it_for_others(outputs: Mapping[str, Any], inputs: Mapping[str, Any], ctx: Context) -> bool:
    """The registry still has the tag at the pushed digest (asked directly: one request once the
    registry's auth challenge is answered, where the engine would log in for every check)."""
    image, digest = outputs.get("image"), outputs.get("digest")
    if not isinstance(image, str) or not isinstance(digest, str):
        return False
    from ._docker_registry import manifest_digest

    return manifest_digest(ctx, image, inputs.get("credentials")) == digest


def _split_tag(name: str, tag: str | None) -> tuple[str, str]:
    """``name:tag`` given as image_name works too; no tag at all means ``latest``."""
    if ":" not in name.rsplit("/", 1)[-1]:
        return name, tag or "latest"
    repo, _, found = name.rpartition(":")
    if tag is not None and tag != found:
        raise StepError(f"image_name {name!r} already has the tag {found!r}, but tag is {tag!r}",
                        hint="give the tag in one place only")
    return repo, found
