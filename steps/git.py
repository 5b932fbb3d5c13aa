"""The ``git_clone`` step: clone a repository into the step's working directory, or update a clone.

A token reaches git only through configuration passed in the environment of the git process (an
``http.<origin>.extraHeader`` scoped to the repository's host, via ``GIT_CONFIG_COUNT``): never in a
URL, ``.git/config``, a log line or an error message. Standard library only, because this step
also runs inside flow-run containers.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from buildsys.errors import StepError
from buildsys.step import Context, step

from ._git_auth import GitAuth, git_auth, scrub, split_userinfo, token_and_username

ALIASES = (
    "prefect.deployments.steps.git_clone",
    "prefect.deployments.steps.pull.git_clone",
    "prefect.projects.steps.git_clone",
    "prefect.projects.steps.git_clone_project",
)

EXAMPLE = """\
pull:
  - prefect.deployments.steps.git_clone:
      id: clone
      repository: https://git.example.com/acme/flows.git
      branch: main
      access_token: "{{ prefect.blocks.secret.git-token }}"
"""

ATTEMPTS = 3  # as Prefect: a failed clone is retried with exponential backoff
RETRY_DELAY_S = 0.5

_SHA = re.compile(r"[0-9a-fA-F]{4,64}")
_SCP_LIKE = re.compile(r"^(?:[\w.+-]+@)?[\w.-]+:(?!//)")


@dataclass(frozen=True)
class CloneSpec:
    """What to clone, where, and how: the validated inputs of one ``git_clone`` call."""

    url: str  # with any userinfo password removed (it travels as a header instead)
    scheme: str  # "http", "https", "ssh", "git", "file"
    branch: str | None
    commit_sha: str | None
    include_submodules: bool
    directories: tuple[str, ...]
    dest_name: str
    authenticated: bool = False  # a token is sent (http/https only)


@step(
    "git_clone",
    aliases=ALIASES,
    version="1",
    outputs=("directory",),
    example=EXAMPLE,
)
def git_clone(
    ctx: Context,
    repository: str,
    branch: str | None = None,
    commit_sha: str | None = None,
    include_submodules: bool = False,
    access_token: str | None = None,
    credentials: Mapping[str, Any] | None = None,
    directories: Sequence[str] | None = None,
    clone_directory_name: str | None = None,
) -> dict[str, str]:
    """Clone a git repository (or update an existing clone) and return its directory."""
    spec, auth = _prepare(ctx, repository, branch, commit_sha, include_submodules, access_token,
                          credentials, directories, clone_directory_name)
    dest = ctx.path(spec.dest_name)
    env = {**_git_env(ctx), **auth.env}
    with _locked(dest):
        for attempt in range(1, ATTEMPTS + 1):
            try:
                if (dest / ".git").exists():
                    _update_or_reclone(ctx, spec, dest, env)
                else:
                    _clone(ctx, spec, dest, env)
                break
            except StepError as exc:
                if attempt == ATTEMPTS or not _transient(exc):
                    raise
                delay = RETRY_DELAY_S * 2 ** (attempt - 1)
                ctx.log(f"attempt {attempt} of {ATTEMPTS} failed ({_last_line(exc)}); retrying in {delay:g} s")
                _discard_partial(dest)
                time.sleep(delay)
    return {"directory": spec.dest_name}


@git_clone.fingerprint
def _remote_commit(inputs: Mapping[str, Any], ctx: Context) -> str:
    """The commit the clone would get: a pinned sha as is, else what the branch points to now."""
    sha = inputs.get("commit_sha")
    if sha:
        return f"commit:{sha}"
    spec, auth = _prepare(ctx, inputs.get("repository"), inputs.get("branch"), None,
                          bool(inputs.get("include_submodules")), inputs.get("access_token"),
                          inputs.get("credentials"), inputs.get("directories"),
                          inputs.get("clone_directory_name"))
    # Full ref names: a bare pattern would also match e.g. refs/heads/feature/<branch>.
    refs = [f"refs/heads/{spec.branch}", f"refs/tags/{spec.branch}"] if spec.branch else ["HEAD"]
    env = {**_git_env(ctx), **auth.env}
    done = ctx.run(["git", "ls-remote", "--", spec.url, *refs], env=env, stream=False, check=False)
    if done.returncode != 0:
        raise _failure(ctx, f"could not read the remote commit of {spec.branch or 'HEAD'}", spec, done.stderr)
    lines = sorted(line for line in done.stdout.splitlines() if line.strip())
    if not lines:
        raise StepError(
            f"branch {spec.branch!r} not found in {scrub(ctx, spec.url)}",
            hint="check the branch name (a tag name also works as `branch`)",
        )
    return "\n".join(lines)


@git_clone.check
def _clone_still_there(outputs: Mapping[str, Any], inputs: Mapping[str, Any], ctx: Context) -> bool:
    directory = outputs.get("directory")
    return isinstance(directory, str) and (ctx.path(directory) / ".git").exists()


# --- inputs ------------------------------------------------------------------------------------


def _prepare(
    ctx: Context,
    repository: object,
    branch: object,
    commit_sha: object,
    include_submodules: bool,
    access_token: object,
    credentials: object,
    directories: object,
    clone_directory_name: object,
) -> tuple[CloneSpec, GitAuth]:
    if not isinstance(repository, str) or not repository.strip():
        raise StepError("git_clone needs a `repository` URL", hint="e.g. https://host/org/repo.git")
    if branch is not None and commit_sha is not None:
        raise StepError("give either `branch` or `commit_sha` to git_clone, not both")
    if branch is not None and (not isinstance(branch, str) or not branch or branch.startswith("-")):
        raise StepError(f"invalid branch name {branch!r}", hint="a branch or tag name, not starting with '-'")
    if commit_sha is not None and (not isinstance(commit_sha, str) or not _SHA.fullmatch(commit_sha)):
        raise StepError(
            f"invalid commit_sha {commit_sha!r}: expected 4 to 64 hexadecimal characters",
            hint="to check out a tag, use `branch: <tag>`",
        )
    if access_token is not None and credentials is not None:
        raise StepError("give either `access_token` or `credentials` to git_clone, not both")
    url, url_user, url_password = split_userinfo(repository.strip())
    scheme = _scheme(url)
    dirs = _directories(directories)
    dest_name = _dest_name(url, branch, clone_directory_name)
    token, username = token_and_username(access_token, credentials, url_user, url_password)
    auth = git_auth(ctx, url, scheme, token, username)
    spec = CloneSpec(url, scheme, branch, commit_sha, bool(include_submodules), dirs, dest_name,
                     authenticated=bool(auth.env))
    return spec, auth


def _scheme(url: str) -> str:
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        return "ssh" if scheme in ("ssh", "git+ssh", "ssh+git") else scheme
    return "ssh" if _SCP_LIKE.match(url) and not os.path.exists(url) else "file"


def _repo_name(url: str) -> str:
    path = urlsplit(url).path if "://" in url else url.split(":", 1)[-1] if _SCP_LIKE.match(url) else url
    name = path.rstrip("/").rsplit("/", 1)[-1]
    name = name[: -len(".git")] if name.endswith(".git") else name
    if not name or name in (".", ".."):
        raise StepError(f"cannot name a clone directory after {url!r}", hint="set clone_directory_name")
    return name


def _dest_name(url: str, branch: object, clone_directory_name: object) -> str:
    if clone_directory_name is not None:
        if not isinstance(clone_directory_name, str) or not clone_directory_name.strip():
            raise StepError("clone_directory_name must be a non-empty string")
        parts = Path(clone_directory_name).parts
        if Path(clone_directory_name).is_absolute() or ".." in parts:
            raise StepError(
                f"clone_directory_name {clone_directory_name!r} must stay inside the working directory"
            )
        return clone_directory_name
    name = _repo_name(url)
    return f"{name}-{branch.replace('/', '-')}" if isinstance(branch, str) else name


def _directories(directories: object) -> tuple[str, ...]:
    if directories is None:
        return ()
    if isinstance(directories, str) or not isinstance(directories, Sequence):
        raise StepError("`directories` must be a list of paths for a sparse checkout")
    dirs = tuple(str(d) for d in directories)
    bad = [d for d in dirs if not d or d.startswith("-")]
    if bad:
        raise StepError(f"invalid sparse-checkout directory {bad[0]!r}")
    return dirs


# --- git ---------------------------------------------------------------------------------------


def _git_env(ctx: Context) -> dict[str, str]:
    env = dict(ctx.env)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.pop("GIT_CURL_VERBOSE", None)  # would print request headers
    return env


def _git(ctx: Context, args: Sequence[str], env: Mapping[str, str], spec: CloneSpec, doing: str,
         cwd: Path | None = None) -> str:
    done = ctx.run(["git", *args], cwd=cwd, env=env, check=False)
    if done.returncode != 0:
        raise _failure(ctx, doing, spec, done.stderr or done.stdout)
    return done.stdout.strip()


def _clone(ctx: Context, spec: CloneSpec, dest: Path, env: Mapping[str, str]) -> None:
    args = ["clone"]
    if spec.include_submodules:
        args.append("--recurse-submodules")
    if spec.directories:
        args.append("--sparse")
    if spec.commit_sha:
        args += ["--filter=blob:none", "--no-checkout"]
    else:
        args += [*(["--branch", spec.branch] if spec.branch else []), "--depth", "1"]
    if spec.include_submodules and not spec.commit_sha:
        args.append("--shallow-submodules")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _git(ctx, [*args, "--", spec.url, str(dest)], env, spec, f"could not clone {scrub(ctx, spec.url)}")
    if spec.directories:
        _git(ctx, ["sparse-checkout", "set", *spec.directories], env, spec,
             "could not set the sparse checkout", cwd=dest)
    if spec.commit_sha:
        _checkout_commit(ctx, spec, dest, env)


def _checkout_commit(ctx: Context, spec: CloneSpec, dest: Path, env: Mapping[str, str]) -> None:
    sha = spec.commit_sha or ""
    have = ctx.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=dest, env=env, stream=False,
                   check=False)
    if have.returncode != 0:
        _git(ctx, ["fetch", "origin", sha], env, spec, f"could not fetch commit {sha}", cwd=dest)
    _git(ctx, ["checkout", "--detach", sha], env, spec, f"could not check out commit {sha}", cwd=dest)
    if spec.include_submodules:
        _git(ctx, ["submodule", "update", "--init", "--recursive"], env, spec,
             "could not update the submodules", cwd=dest)


def _update_or_reclone(ctx: Context, spec: CloneSpec, dest: Path, env: Mapping[str, str]) -> None:
    # The URL as written in the clone's config: `remote get-url` would apply `url.*.insteadOf`
    # rewrites and never match the configured repository.
    origin = ctx.run(["git", "config", "--get", "remote.origin.url"], cwd=dest, env=env, stream=False, check=False)
    current = split_userinfo(origin.stdout.strip())[0]
    if origin.returncode != 0 or current != spec.url:
        shown = scrub(ctx, current) if origin.returncode == 0 else "no origin remote"
        raise StepError(
            f"{spec.dest_name} already exists and is a clone of {shown}, not {scrub(ctx, spec.url)}",
            hint="set clone_directory_name to clone elsewhere, or delete the directory",
        )
    try:
        _update(ctx, spec, dest, env)
    except StepError as exc:
        ctx.log(f"updating the existing clone failed ({exc.message.splitlines()[0]}); cloning afresh")
        shutil.rmtree(dest)
        _clone(ctx, spec, dest, env)


def _update(ctx: Context, spec: CloneSpec, dest: Path, env: Mapping[str, str]) -> None:
    if spec.commit_sha:
        head = ctx.run(["git", "rev-parse", "HEAD"], cwd=dest, env=env, stream=False, check=False)
        if head.returncode == 0 and head.stdout.strip().lower().startswith(spec.commit_sha.lower()):
            ctx.log(f"{spec.dest_name} is already at {spec.commit_sha}")
            return
        _checkout_commit(ctx, spec, dest, env)
        return
    ref = spec.branch or "HEAD"
    _git(ctx, ["fetch", "--depth", "1", "origin", ref], env, spec, f"could not fetch {ref}", cwd=dest)
    _git(ctx, ["reset", "--hard", "FETCH_HEAD"], env, spec, "could not update the checkout", cwd=dest)
    if spec.include_submodules:
        _git(ctx, ["submodule", "update", "--init", "--recursive", "--depth", "1"], env, spec,
             "could not update the submodules", cwd=dest)


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Serialise clones into one destination on this machine. The lock file lives in a per-user
    folder of the temp dir, keyed on the destination's absolute path, so that nothing is left
    beside the clone (a `<dest>.lock` in a project would show up in git status)."""
    folder = Path(tempfile.gettempdir()) / f"buildsys-git-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    lock_path = folder / (hashlib.sha256(str(dest.resolve()).encode()).hexdigest()[:32] + ".lock")
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- errors ------------------------------------------------------------------------------------


# Status codes as git words them: a bare "403" also matched a port (127.0.0.1:40301), so a 503 from
# such a server was taken for a refusal and not retried.
_AUTH_MARKERS = ("authentication failed", "could not read username", "could not read password",
                 "returned error: 401", "returned error: 403")
_HINTS = (
    (("not found in upstream", "remote branch"),
     "check the branch name (a tag name also works as `branch`)"),
    (("repository not found", "does not appear to be a git repository", "not found",
      "no such file or directory"),
     "check the repository URL (and that the token may read it)"),
    (("could not resolve host", "connection refused", "timed out", "unable to connect"),
     "check that the git server is reachable from here"),
    (("host key verification failed", "permission denied (publickey)"),
     "ssh URLs use this machine's ssh keys and known_hosts"),
    (("not our ref", "unadvertised object", "reference is not a tree", "did not match any"),
     "check that commit_sha exists in the repository"),
)


_TRANSIENT = ("returned error: 5", "connection reset", "timed out", "early eof", "hung up unexpectedly",
              "rpc failed", "temporary failure")


def _transient(exc: StepError) -> bool:
    """Failures worth another attempt: server errors and dropped connections, not refusals."""
    text = exc.message.lower()
    return any(marker in text for marker in _TRANSIENT) and not any(k in text for k in _AUTH_MARKERS)


def _last_line(exc: StepError) -> str:
    return exc.message.strip().splitlines()[-1]


def _discard_partial(dest: Path) -> None:
    """A clone that failed half-way leaves a directory without a usable checkout: remove it."""
    if dest.exists() and not (dest / ".git" / "HEAD").exists():
        shutil.rmtree(dest)


def _failure(ctx: Context, doing: str, spec: CloneSpec, output: str) -> StepError:
    detail = scrub(ctx, output.strip())
    lowered = detail.lower()
    hint: str | None
    if spec.authenticated and re.search(r"returned error: 30[1278]", lowered):
        hint = (
            "the server redirected elsewhere; with credentials set, git_clone does not follow "
            "redirects (the token would go to the other host): use the repository's final URL"
        )
    elif any(k in lowered for k in _AUTH_MARKERS):
        hint = (
            "the server refused the token: check access_token / credentials and that the token may "
            "read this repository"
            if spec.authenticated
            else "the repository needs credentials: set access_token or credentials"
        )
    else:
        hint = next((h for keys, h in _HINTS if any(k in lowered for k in keys)), None)
    return StepError(f"git_clone: {doing}" + (f"\n{detail}" if detail else ""), hint=hint)
