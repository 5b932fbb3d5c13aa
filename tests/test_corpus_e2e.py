"""End to end over the corpus: every valid real-world prefect.yaml is built, pushed and pulled by the
real CLI, with its network-dependent inputs pointed at servers on 127.0.0.1.

Per corpus file (tag ``invalid`` skipped: test_corpus.py covers those) the test makes a project
directory holding the file as ``prefect.yaml``, the flow files its deployments name and a git
commit, then runs ``buildsys build``, ``buildsys push`` and ``buildsys pull -d NAME`` for each
deployment as subprocesses. What the files reach over the network is redirected:

- every git repository they name gets a local bare repository (served by ``git daemon``) holding
  the entrypoints, requirements files and sub-directories the file uses, on every branch it
  names; git is pointed at it with ``url.<local>.insteadOf=<original>`` passed through
  ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n``;
- ``{{ $VAR }}`` gets a harmless value, ``{{ prefect.blocks.T.N }}`` a ``BUILDSYS_BLOCK_T_N`` of the
  block type's shape (S3 credentials of the local S3 server, ...);
- S3 goes to the moto server (``AWS_ENDPOINT_URL``), GCS to an in-process GCS emulator
  (``STORAGE_EMULATOR_HOST``), ``dockerfile: auto`` builds FROM the locally made base image
  (``BUILDSYS_DOCKER_BASE_IMAGE``); images named for remote registries are not redirected, so their
  push has to fail with a clear message;
- commands run with a PATH holding only basic tools (git, sh, coreutils): a script that wants
  ``uv``, ``pip``, ``curl`` or ``aws`` fails as on a machine without them, and nothing is installed;
  ``pip_install_requirements`` runs with ``PIP_NO_INDEX``.

Each command must exit 0, or exit 1 with no traceback and a message naming the failing step
(``✗ <step>  failed: ...``, ``pull step pull[i: <step>] failed: ...``) or a located
``FILE:LINE:COL: error:`` line. A git_clone pull step must succeed against the local repositories
(except where `CLONE_CANNOT_WORK` says why it cannot). The outcome of every file is printed as a
table at the end.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from buildsys.model import Deployment
from buildsys.project import load_project
from tests.conftest import CORPUS, REPO
from tests.services.git import GitDaemon, GitRepos
from tests.services.net import free_port, port_open
from tests.services.require import unavailable
from tests.services.waiting import wait_for

pytestmark = pytest.mark.slow

DATA = REPO / "tests" / "data" / "corpus_e2e"
BUILD_TIMEOUT_S = 180.0
PULL_TIMEOUT_S = 60.0
# Tools a project script may find on PATH here; everything else is "not installed".
TOOLS = ("git", "sh", "bash", "env", "echo", "cat", "ls", "ln", "rm", "mkdir", "cp", "mv", "true", "false",
         "test", "pwd", "sleep", "grep", "sed", "head", "tail", "touch", "dirname", "basename", "uname")
NOTHING_TO_INSTALL = "# corpus e2e: every requirement is already satisfied\n"

# git_clone pull steps that cannot succeed whatever the redirection, and the message they must fail with.
CLONE_CANNOT_WORK = {
    # The commit is pinned by hash; a local repository cannot hold a commit with that hash.
    "061-zzstoatzz-plyr.fm.yaml": "ad236d10",
    # The branch comes from a build step that asks api.github.com (curl) for the latest release.
    "014-CLDC-OU-ExampleMessagerFlow.yaml": "get-latest-tag",
}

STEP_FAILED = re.compile(r"^✗ (?P<step>\S.*?)  failed: (?P<why>.*)$", re.M)
LOCATED = re.compile(r"^(?P<where>\S[^:\n]*:\d+:\d+): error: (?P<why>.*)$", re.M)
PULL_FAILED = re.compile(r"^error: pull step pull\[(?P<index>\d+): (?P<step>[^\]]+)\] failed: (?P<why>.*)$", re.M)
PULL_DIRECTORY = re.compile(r"^pull steps of .+ done; directory: (.+)$", re.M)
ENV_REF = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")
BLOCK_REF = re.compile(r"\{\{\s*prefect\.blocks\.([\w-]+)\.([\w-]+)")
SCRIPT_GIT_URL = re.compile(r"https://[\w.-]+/[\w.-]+/[\w.-]+\.git")
SUBDIR_OF_OUTPUT = re.compile(r"\{\{\s*[\w-]+\.directory\s*\}\}/([\w./-]+)")


def corpus_rows() -> list[str]:
    index = CORPUS / "INDEX.tsv"
    if not index.is_file():
        return []
    with index.open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [r["file"] for r in rows if "invalid" not in r["features"].split(",")]


FILES = corpus_rows()
TABLE: dict[str, tuple[str, str]] = {}


# --- what a corpus file needs ----------------------------------------------------------------------


def step_items(doc: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every step (name, inputs) anywhere in the document: sections, deployments, definitions."""
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            if key in ("build", "push", "pull") and isinstance(value, list):
                for step in value:
                    if isinstance(step, Mapping) and len(step) == 1:
                        name, inputs = next(iter(step.items()))
                        yield str(name), inputs if isinstance(inputs, Mapping) else {}
            yield from step_items(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from step_items(item)


def short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


@dataclass
class Needs:
    """What one corpus file reaches outside its project directory."""

    repos: dict[str, set[str]] = field(default_factory=dict)  # original URL -> branches
    files: dict[str, str] = field(default_factory=dict)  # path in each repo -> text
    flows: dict[str, str] = field(default_factory=dict)  # flow files of the project -> text
    env: set[str] = field(default_factory=set)
    blocks: set[tuple[str, str]] = field(default_factory=set)
    s3_buckets: set[str] = field(default_factory=set)
    gcs_buckets: set[str] = field(default_factory=set)
    docker: bool = False
    images: set[str] = field(default_factory=set)  # literal image names built or pushed


def flow_file(entrypoint: str) -> tuple[str, str] | None:
    """(relative path, source) of a ``path/file.py:func`` entrypoint; None for module paths."""
    path, sep, func = entrypoint.rpartition(":")
    if not sep or not path.endswith(".py") or path.startswith("/"):
        return None
    path = path.removeprefix("./")
    return path, f"def {func}(*args, **kwargs):\n    return {func!r}\n"


def needs_of(text: str, deployments: list[Deployment]) -> Needs:
    doc = yaml.safe_load(text)
    needs = Needs()
    needs.env = set(ENV_REF.findall(text))
    needs.blocks = set(BLOCK_REF.findall(text))
    flows = dict(f for d in deployments if d.entrypoint and (f := flow_file(d.entrypoint)))
    needs.files.update(flows)
    needs.flows.update(flows)
    needs.files["requirements.txt"] = NOTHING_TO_INSTALL
    for name, inputs in step_items(doc):
        kind = short(name)
        if kind in ("git_clone", "git_clone_project") and isinstance(inputs.get("repository"), str):
            branch = inputs.get("branch")
            branches = needs.repos.setdefault(inputs["repository"], set())
            if isinstance(branch, str) and "{{" not in branch:
                branches.add(branch)
        elif kind == "pip_install_requirements":
            req = inputs.get("requirements_file")
            if isinstance(req, str) and "{{" not in req:
                needs.files[req.removeprefix("./")] = NOTHING_TO_INSTALL
        elif kind in ("push_to_s3", "pull_from_s3", "push_project_to_s3", "pull_project_from_s3"):
            needs.s3_buckets.add(str(inputs.get("bucket")))
        elif kind in ("push_to_gcs", "pull_from_gcs", "push_project_to_gcs", "pull_project_from_gcs"):
            needs.gcs_buckets.add(str(inputs.get("bucket")))
        elif kind in ("build_docker_image", "push_docker_image"):
            needs.docker = True
            image = inputs.get("image_name")
            if isinstance(image, str) and "{{" not in image:
                needs.images.add(image)
        for value in inputs.values():
            if isinstance(value, str):
                for url in SCRIPT_GIT_URL.findall(value):
                    needs.repos.setdefault(url, {"main"})
                for sub in SUBDIR_OF_OUTPUT.findall(value):
                    needs.files.setdefault(f"{sub.rstrip('/')}/.keep", "")
    # A clone lands in <repo-name>[-<branch>]; entrypoints are often written from the parent.
    for url, branches in needs.repos.items():
        repo_dir = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
        for dest in {repo_dir, *(f"{repo_dir}-{b.replace('/', '-')}" for b in branches)}:
            for path, source in flows.items():
                if path.startswith(dest + "/"):
                    needs.files.setdefault(path[len(dest) + 1 :], source)
                    needs.flows.pop(path, None)  # that one comes with the clone, not the project
    return needs


# --- the local stand-ins ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GcsEmulator:
    endpoint: str

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="corpus-e2e", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                              client_options={"api_endpoint": self.endpoint})


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """The ``gcp-storage-emulator`` GCS JSON API on 127.0.0.1, in memory."""
    try:
        import google.cloud.storage  # noqa: F401
        from gcp_storage_emulator.server import create_server  # type: ignore[import-untyped]
    except ImportError as exc:
        unavailable(f"the GCS corpus files need google-cloud-storage and gcp-storage-emulator ({exc})")
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 15, "the GCS emulator to listen")
        yield GcsEmulator(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


def tools_dir(root: Path) -> Path:
    """A PATH directory with only the basic tools (links to the machine's)."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return bin_dir


def local_repos(needs: Needs, repos: GitRepos, daemon: GitDaemon) -> dict[str, str]:
    """A bare repository per repository URL, on every branch named; returns original -> local URL."""
    redirects: dict[str, str] = {}
    for number, (url, branches) in enumerate(sorted(needs.repos.items())):
        name = f"r{number}-" + re.sub(r"[^\w.-]", "-", url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))
        ordered = sorted(branches or {"main"})
        repos.create(name, needs.files, branch=ordered[0])
        for branch in ordered[1:]:
            repos.commit(name, {}, branch=branch, message=f"branch {branch}")
        redirects[url] = daemon.url(name)
    return redirects


def block_value(block_type: str, name: str, s3_credentials: Mapping[str, str] | None) -> Any:
    """A block document of the type's shape; secrets are recognisable strings (checked for leaks)."""
    secret = f"corpus-e2e-secret-{uuid.uuid4().hex[:10]}"
    if block_type == "aws-credentials":
        return dict(s3_credentials or {"aws_access_key_id": "corpus-e2e", "aws_secret_access_key": secret})
    if block_type == "gcp-credentials":
        return {"project": "corpus-e2e"}
    if block_type == "docker-registry-credentials":
        return {"username": "corpus-e2e", "password": secret, "registry_url": "index.docker.io"}
    if block_type == "github-credentials":
        return {"token": secret}
    return {"value": secret}


def secrets_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith("corpus-e2e-secret-") else []
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in secrets_in(v)]
    return []


# --- running the CLI -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    command: str
    code: int
    output: str

    def show(self) -> str:
        return f"$ {self.command}\n(exit {self.code})\n{self.output}"


def run_cli(args: list[str], cwd: Path, env: Mapping[str, str], timeout: float) -> Ran:
    """``python -m buildsys ARGS`` in its own process group, killed (group and all) on timeout."""
    command = "buildsys " + " ".join(args)
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildsys", *args], cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{command} did not finish within {timeout:.0f} s:\n{out}", pytrace=False)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers (git, shells) of a finished command
    return Ran(command, proc.returncode, out)


def clean_failure(ran: Ran) -> str | None:
    """The reason of a clean exit-1 failure (the failing step or a located error); None otherwise."""
    if ran.code != 1 or "Traceback" in ran.output:
        return None
    for pattern in (PULL_FAILED, STEP_FAILED, LOCATED):
        found = pattern.search(ran.output)
        if found:
            label = found.groupdict().get("step") or found.group("where")
            return f"{label}: {found.group('why')}"
    return None


def outcome(ran: Ran) -> str:
    """'ok', or 'failed cleanly: <reason>'; an unclear or crashing run fails the test."""
    if ran.code == 0 and "Traceback" not in ran.output:
        return "ok"
    reason = clean_failure(ran)
    assert reason is not None, (
        "expected exit 0, or exit 1 with a message naming the failing step or a FILE:LINE:COL: error line "
        "and no traceback; got:\n" + ran.show()
    )
    unreachable = re.search(r"no such host|Could not resolve host|Name or service not known", ran.output)
    assert not (unreachable and "refused" in reason), (
        f"a host that cannot be reached did not refuse anything (say it was unreachable): {reason}\n"
        + ran.show()
    )
    return f"failed cleanly: {reason}"


# --- the test --------------------------------------------------------------------------------------


@dataclass
class Setup:
    project: Path
    env: dict[str, str]
    redirects: dict[str, str]
    secrets: list[str]
    deployments: list[Deployment]
    stored: dict[str, Callable[[], set[str]]]  # "s3://bucket" -> the keys it holds now


@pytest.fixture
def make_setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    cleanups: list[Any] = []

    def make(name: str) -> Setup:
        text = (CORPUS / name).read_text()
        project = tmp_path / "project"
        project.mkdir()
        (project / "prefect.yaml").write_text(text)
        deployments = list(load_project(project / "prefect.yaml").deployments)
        needs = needs_of(text, deployments)
        for path, source in needs.flows.items():
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            (project / path).write_text(source)
        secrets: list[str] = []
        if (DATA / Path(name).stem).is_dir():
            shutil.copytree(DATA / Path(name).stem, project, dirs_exist_ok=True)
            for extra in (DATA / Path(name).stem).rglob("*.py"):
                secrets += re.findall(r"corpus-e2e-secret-[\w-]+", extra.read_text())
        for args in (["init", "--quiet", "--initial-branch", "main"], ["add", "--all"],
                     ["commit", "--quiet", "-m", "project"]):
            subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)

        env = dict(os.environ)
        env["PATH"] = str(tools_dir(tmp_path))
        env["PWD"] = str(project)
        env["PIP_NO_INDEX"] = "1"
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        for var in needs.env:
            env.setdefault(var, f"corpus-e2e-{var.lower()}")
        redirects: dict[str, str] = {}
        if needs.repos:
            repos: GitRepos = request.getfixturevalue("git_repos")
            redirects = local_repos(needs, repos, request.getfixturevalue("git_daemon"))
        env["GIT_CONFIG_COUNT"] = str(len(redirects))
        for n, (original, local) in enumerate(sorted(redirects.items())):
            env[f"GIT_CONFIG_KEY_{n}"] = f"url.{local}.insteadOf"
            env[f"GIT_CONFIG_VALUE_{n}"] = original

        s3_credentials = None
        stored: dict[str, Callable[[], set[str]]] = {}
        if needs.s3_buckets:
            s3 = request.getfixturevalue("s3_server")
            s3_credentials = s3.credentials
            env["AWS_ENDPOINT_URL"] = s3.endpoint_url
            env["AWS_ACCESS_KEY_ID"] = s3.access_key
            env["AWS_SECRET_ACCESS_KEY"] = s3.secret_key
            env["AWS_DEFAULT_REGION"] = s3.region
            client = s3.client()
            for bucket in needs.s3_buckets:
                client.create_bucket(Bucket=bucket)
                stored[f"s3://{bucket}"] = functools.partial(_s3_keys, s3, bucket)
                cleanups.append(lambda b=bucket, s=s3: _drop_s3_bucket(s, b))
        if needs.gcs_buckets:
            gcs = request.getfixturevalue("gcs_emulator")
            env["STORAGE_EMULATOR_HOST"] = gcs.endpoint
            for bucket in needs.gcs_buckets:
                gcs.client().create_bucket(bucket)
                stored[f"gs://{bucket}"] = functools.partial(_gcs_keys, gcs, bucket)
        if needs.docker:
            env["BUILDSYS_DOCKER_BASE_IMAGE"] = request.getfixturevalue("base_image")
            client = request.getfixturevalue("docker_client")
            cleanups.append(lambda c=client, images=needs.images: _drop_images(c, images))

        for block_type, block_name in needs.blocks:
            value = block_value(block_type, block_name, s3_credentials)
            secrets.extend(secrets_in(value))
            key = "BUILDSYS_BLOCK_" + re.sub(r"[^A-Za-z0-9]", "_", f"{block_type}_{block_name}").upper()
            env[key] = json.dumps(value)
        return Setup(project, env, redirects, secrets, deployments, stored)

    try:
        yield make
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


def _s3_keys(s3: Any, bucket: str) -> set[str]:
    return set(s3.objects(bucket))


def _gcs_keys(gcs: GcsEmulator, bucket: str) -> set[str]:
    return {blob.name for blob in gcs.client().list_blobs(bucket)}


def _drop_s3_bucket(s3: Any, bucket: str) -> None:
    client = s3.client()
    for key in s3.objects(bucket):
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket=bucket)


def _drop_images(client: Any, names: set[str]) -> None:
    import docker.errors

    for name in names:
        for image in client.images.list(name=name):
            for tag in image.tags:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(tag, noprune=False)


def pull_all(setup: Setup, deployments: list[Deployment]) -> dict[str, Ran]:
    """``pull -d`` for each deployment. Pulls that change the project directory (clones, scripts,
    downloads) run one after another in file order, as on one machine (a later one finds the earlier
    one's clone and updates it); the rest run two at a time."""

    def pull(dep: Deployment) -> Ran:
        return run_cli(["pull", "-d", dep.name], setup.project, setup.env, PULL_TIMEOUT_S)

    def inert(dep: Deployment) -> bool:
        return all(short(s.name) == "set_working_directory" for s in dep.pull)

    done = {dep.name: pull(dep) for dep in deployments if not inert(dep)}
    with ThreadPoolExecutor(max_workers=2) as pool:
        rest = [dep for dep in deployments if inert(dep)]
        done.update(zip((d.name for d in rest), pool.map(pull, rest), strict=True))
    return done


def pull_verdict(setup: Setup, name: str, dep: Deployment, ran: Ran) -> str:
    """The outcome of ``pull -d``; a git_clone step must not be what failed (unless it cannot work)."""
    result = outcome(ran)
    steps = [s.name for s in dep.pull]
    failed = PULL_FAILED.search(ran.output)
    failed_at = int(failed.group("index")) if failed and ran.code == 1 else len(steps)
    for index, step in enumerate(steps[: failed_at + 1]):
        if short(step) not in ("git_clone", "git_clone_project"):
            continue
        if index < failed_at:
            continue
        why = failed.group("why") if failed else "?"
        expected = CLONE_CANNOT_WORK.get(name)
        assert expected is not None and expected in ran.output, (
            f"the git_clone pull step of {dep.name} must succeed against the local repository, but: {why}\n"
            f"(redirected: {', '.join(f'{o} -> {lo}' for o, lo in setup.redirects.items())})\n" + ran.show()
        )
        # A reference to a build step's output whose build failed: say so, not that no step has an id.
        assert "no step here has an id" not in why, (
            f"{dep.name}: the pull step refers to build step {expected!r} by its id, yet the message says "
            f"that no step has an id: {why}\n" + ran.show()
        )
    clones = [s for s in steps[:failed_at] if short(s) in ("git_clone", "git_clone_project")]
    if clones:
        result += f" [{len(clones)} clone(s) ok]"
    final = PULL_DIRECTORY.search(ran.output) if ran.code == 0 else None
    flow = flow_file(dep.entrypoint) if dep.entrypoint else None
    if final and flow:
        # Where a worker imports the flow from: the final directory (here: relative to the project).
        assert (setup.project / final.group(1) / flow[0]).is_file(), (
            f"{dep.name}: after the pull, {flow[0]} is not in {final.group(1)}:\n" + ran.show()
        )
        result += " [flow found]"
    return result


@pytest.mark.parametrize("name", FILES)
def test_corpus_file_builds_pushes_and_pulls(name: str, make_setup: Any) -> None:
    runs: list[Ran] = []
    verdicts: list[str] = []
    try:
        setup: Setup = make_setup(name)
        for command in (["build", "-j", "2"], ["push", "-j", "2"]):
            ran = run_cli(command, setup.project, setup.env, BUILD_TIMEOUT_S)
            runs.append(ran)
            verdicts.append(f"{command[0]}: {outcome(ran)}")
        if verdicts[-1] == "push: ok":
            for bucket, keys in setup.stored.items():
                found = keys()
                assert any(k.endswith("/prefect.yaml") for k in found), (
                    f"push succeeded but {bucket} does not hold the project's prefect.yaml: {sorted(found)}"
                )
                verdicts.append(f"{bucket}: {len(found)} objects")
        named = [d for d in setup.deployments if d.name]
        pulled = pull_all(setup, named)
        runs.extend(pulled.values())
        pulls = [pull_verdict(setup, name, dep, pulled[dep.name]) for dep in named]
        if len(named) < len(setup.deployments):
            pulls.append("unnamed deployment: cannot be chosen with -d")
        counts: dict[str, int] = {}
        for verdict in pulls:
            counts[verdict] = counts.get(verdict, 0) + 1
        verdicts += [f"pull ×{n}: {v}" if n > 1 else f"pull: {v}" for v, n in counts.items()]
        for secret in setup.secrets:
            leaked = [r.command for r in runs if secret in r.output]
            assert not leaked, f"a block secret was printed by: {', '.join(leaked)}"
    except pytest.skip.Exception as exc:
        TABLE[name] = ("skipped", str(exc))
        raise
    except BaseException as exc:
        first = str(exc).strip().splitlines()[:1]
        TABLE[name] = ("BROKEN", "; ".join([*verdicts, *first]))
        raise
    built = verdicts[0] == "build: ok" and verdicts[1] == "push: ok"
    TABLE[name] = ("built" if built else "failed cleanly", "; ".join(verdicts))


def test_corpus_e2e_table(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this module: prints the outcome of every file (visible with -s or in the log)."""
    if not FILES:
        unavailable(f"corpus not found at {CORPUS}")  # CI fails here: the corpus tests never skip there
    if len(TABLE) != len(FILES):
        pytest.skip("only part of the corpus ran (a -k selection): no table")
    width = max(len(n) for n in TABLE)
    lines = [f"{n:<{width}}  {kind:<14}  {detail}" for n, (kind, detail) in sorted(TABLE.items())]
    with capsys.disabled():
        print(f"\ncorpus end-to-end table ({len(TABLE)} files)\n" + "\n".join(lines))
    broken = sorted(n for n, (kind, _) in TABLE.items() if kind == "BROKEN")
    assert not broken, f"files whose build/push/pull crashed or failed unclearly: {', '.join(broken)}"
