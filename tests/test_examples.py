"""Every example in examples/ validates, builds and plans (docker ones build a real image from the
local base); the local-process demo runs end to end; the CI pipelines' shell runs for real, from
installing the built wheel with the pipelines' own install step to the apply."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from buildsys.cli import main
from buildsys.server.auth import Authenticator, TokenStore, database_for
from buildsys.store import open_store
from tests.server.running import threaded_server
from tests.services.wheel import WheelInstall

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BUILDSYS = str(Path(sys.executable).parent / "buildsys")
DOCKER_EXAMPLES = {"docker-git", "kubernetes", "monorepo"}
# What `plan` creates for each example, in order, and how many build steps run.
EXPECTED: dict[str, tuple[list[tuple[str, str]], int]] = {
    "local-process": ([("pool", "local-demo"), ("deployment", "hello/hello")], 1),
    "docker-git": ([("pool", "docker-git"), ("deployment", "load-orders/nightly-etl")], 1),
    "kubernetes": ([("pool", "k8s"), ("deployment", "weekly-report/report")], 1),
    "monorepo": ([("pool", "monorepo"), ("deployment", "cleanup/cleanup"), ("deployment", "daily-report/daily-report"),
                  ("deployment", "extract/extract"), ("deployment", "transform/transform")], 1),
}


def project_examples() -> list[str]:
    return sorted(p.parent.name for p in EXAMPLES.glob("*/prefect.yaml"))


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def copy_example(name: str, dest: Path, base_image: str | None = None) -> Path:
    """A clean copy (no caches); docker examples start FROM the local base (there is no Docker Hub)."""
    target = dest / name
    shutil.copytree(EXAMPLES / name, target, ignore=shutil.ignore_patterns(".buildsys", "__pycache__", "build"))
    if base_image is not None:
        dockerfile = target / "Dockerfile"
        text, count = re.subn(r"^FROM python:3\.12-slim$", f"FROM {base_image}", dockerfile.read_text(), flags=re.M)
        assert count == 1, "the example's Dockerfile should start FROM python:3.12-slim"
        dockerfile.write_text(text)
    return target


def test_every_example_has_a_readme() -> None:
    assert set(EXPECTED) <= set(project_examples())
    for name in [*EXPECTED, "ci"]:
        assert (EXAMPLES / name / "README.md").is_file(), f"{name} has no README.md"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_validates_builds_and_plans(
    name: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = None
    if name in DOCKER_EXAMPLES:
        client = request.getfixturevalue("docker_client")
        base = request.getfixturevalue("base_image")
    project = copy_example(name, tmp_path, base)
    monkeypatch.chdir(project)
    code, out, err = cli(capsys, "validate", "--strict")
    assert (code, err) == (0, ""), out

    code, out, err = cli(capsys, "build", "--json")
    assert (code, err) == (0, ""), out
    summary = json.loads(out.splitlines()[-1])
    creates, steps = EXPECTED[name]
    assert (summary["ran"], summary["cached"], summary["failed"]) == (steps, 0, 0)
    code, out, _ = cli(capsys, "build", "--json")
    assert (code, json.loads(out.splitlines()[-1])["cached"]) == (0, steps)

    code, out, err = cli(capsys, "plan", "--json")
    assert (code, err) == (0, "")
    changes = json.loads(out)["changes"]
    assert sorted((c["kind"], c["name"]) for c in changes) == sorted(creates)
    assert {c["action"] for c in changes} == {"create"}
    deployments = [c["after"] for c in changes if c["kind"] == "deployment"]
    if name in DOCKER_EXAMPLES:
        images = {d["job_variables"]["image"] for d in deployments}
        assert len(images) == 1  # monorepo: four deployments, one image
        image = images.pop()
        request.addfinalizer(lambda: _remove_image(client, image))
        assert client.images.get(image).labels["buildsys.test"] == "1"
    if name == "kubernetes":
        code, out, err = cli(capsys, "pool", "preview", "report")
        assert (code, err) == (0, ""), out
        job = yaml.safe_load(out)
        container = job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
        assert (container["image"], container["imagePullPolicy"], container["env"]) == (
            image, "IfNotPresent", {"REPORT_BUCKET": "reports-prod"})
        assert (job["namespace"], job["job_manifest"]["spec"]["ttlSecondsAfterFinished"]) == ("flows", 600)
    if name == "local-process":
        assert deployments[0]["version"] == "1.0.0"


def _remove_image(client: Any, reference: str) -> None:
    import docker.errors

    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(reference, force=True)


def test_monorepo_builds_the_shared_image_once(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_example("monorepo", tmp_path)
    monkeypatch.chdir(project)
    code, out, _ = cli(capsys, "graph", "--format", "json")
    assert code == 0
    graph = json.loads(out)
    nodes = graph["nodes"] if isinstance(graph, dict) else graph
    build_nodes = [n for n in nodes if n.get("section") == "build"]
    assert len(build_nodes) == 1
    assert sorted(build_nodes[0]["deployments"]) == ["cleanup", "daily-report", "extract", "transform"]


def test_local_process_demo_runs_end_to_end(tmp_path: Path) -> None:
    if not (Path(BUILDSYS).parent / "buildsys").exists():
        pytest.skip("the buildsys console script is not installed")
    from buildsys.cli import COMMANDS

    if "run" not in COMMANDS or not _importable("buildsys.cli.run"):
        pytest.skip("`buildsys run` does not exist yet")
    project = copy_example("local-process", tmp_path)
    env = {**os.environ, "BUILDSYS": BUILDSYS, "NO_COLOR": "1"}
    first = subprocess.run(["bash", str(project / "demo.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    for line in [
        "$ buildsys validate",
        "prefect.yaml: valid — 1 deployment(s), 1 step(s)",
        "$ buildsys build --explain",
        "$ buildsys plan",
        "Plan: 2 to add, 0 to change, 0 to destroy.",
        "$ buildsys apply --auto-approve",
        "$ buildsys worker start --pool local-demo &",
        "$ buildsys run hello --wait --logs",
        "Hello, buildsys! This line was printed by a flow run.",
    ]:
        assert line in out.splitlines() or any(o.endswith("| " + line) for o in out.splitlines()), (line, out)
    assert re.search(r"^Run \S+ \(\w+\) → COMPLETED$", out, re.M), out
    assert "build ok: 1 ran, 0 cached, 0 failed, 0 not run" in first.stderr

    second = subprocess.run(["bash", str(project / "demo.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "build ok: 0 ran, 1 cached, 0 failed, 0 not run" in second.stderr
    assert "Plan: 2 to add" not in second.stdout


def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


INSTALL = re.compile(r'^python -m pip install "\$\{BUILDSYS_PIP:\?set the (repository|CI/CD) variable BUILDSYS_PIP to a '
                     r'buildsys wheel URL or git\+https://HOST/buildsys\.git@TAG\}"$')


class Pipeline:
    """Runs a CI file's jobs for real, the way runners do: each job in a fresh clone of `origin` at the
    same path with a fresh HOME, the CI cache (`.buildsys/cache.db` only) restored before the steps
    and saved after them when the job saves it, and its shell steps in order. buildsys comes from the
    job's own install step: in a fresh environment (`bin_dir`: python and pip, no buildsys) it
    installs the wheel named by BUILDSYS_PIP, and every later step runs the `buildsys` it installed.
    The install steps all read the same BUILDSYS_PIP, so the first runs (a real pip install,
    dependencies resolved from the wheel's metadata and found installed, nothing downloaded) and the
    later ones, on a runner that already has it, are not re-run."""

    def __init__(self, tmp_path: Path, origin: Path, bin_dir: Path, wheel: Path) -> None:
        self.origin = origin
        self.project = tmp_path / "runner" / "work" / "project"  # one path, as on a CI runner
        self.home = tmp_path / "runner" / "home"
        self.cache = tmp_path / "ci-cache"
        self.cache.mkdir()
        self.bin_dir = bin_dir
        dev = str(Path(sys.executable).parent)  # the repository's editable buildsys is not on PATH
        path = os.pathsep.join([str(bin_dir), *(p for p in os.environ["PATH"].split(os.pathsep) if p != dev)])
        self.env = {**os.environ, "PATH": path, "NO_COLOR": "1", "HOME": str(self.home), "BUILDSYS_PIP": str(wheel),
                    "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        self.env.pop("PYTHONPATH", None)
        self.installed = False

    def job(self, ref: str, scripts: list[str], *, saves_cache: bool, **env: str) -> str:
        """Check out `ref`, restore the cache, run `scripts`, save the cache; what the steps printed."""
        for folder in (self.project, self.home):
            shutil.rmtree(folder, ignore_errors=True)
        self.home.mkdir(parents=True)
        subprocess.run(["git", "clone", "-q", "--branch", ref, str(self.origin), str(self.project)], check=True,
                       capture_output=True, timeout=60)
        cached = self.cache / "cache.db"
        if cached.exists():
            (self.project / ".buildsys").mkdir()
            shutil.copy2(cached, self.project / ".buildsys" / "cache.db")
        printed = self.run(scripts, **env)
        if saves_cache and (self.project / ".buildsys" / "cache.db").exists():
            shutil.copy2(self.project / ".buildsys" / "cache.db", cached)
        return printed

    def run(self, scripts: list[str], **env: str) -> str:
        printed = []
        for script in scripts:
            if INSTALL.match(script) and self.installed:
                continue
            done = subprocess.run(["bash", "-e", "-c", script], cwd=self.project, capture_output=True, text=True,
                                  env={**self.env, **env}, timeout=120)
            assert done.returncode == 0, (script, done.stdout, done.stderr)
            printed.append(done.stdout + done.stderr)
            if INSTALL.match(script):
                assert "Successfully installed buildsys-" in done.stdout, done.stdout
                self.installed = True
                self.check_installed()
        return "".join(printed)

    def check_installed(self) -> None:
        """`buildsys` is the installed wheel's console script, running the installed package."""
        probe = "command -v buildsys; python -c 'import buildsys; print(buildsys.__file__)'"
        done = subprocess.run(["bash", "-e", "-c", probe], cwd=self.project, capture_output=True, text=True,
                              env=self.env, timeout=60)
        script, module = done.stdout.split()
        venv_root = self.bin_dir.parent
        assert Path(script) == self.bin_dir / "buildsys", done.stdout
        assert Path(module).is_relative_to(venv_root) and "site-packages" in Path(module).parts, done.stdout


def _github() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "ci" / ".github" / "workflows" / "buildsys.yml").read_text())


def _gitlab() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "ci" / ".gitlab-ci.yml").read_text())


def _gitlab_job(doc: dict[str, Any], name: str) -> dict[str, Any]:
    job = dict(doc[name])
    base = doc[job.pop("extends")] if "extends" in job else {}
    return {**base, **job}


def test_ci_pipelines_plan_on_pull_requests_and_apply_on_main(tmp_path: Path, buildsys_wheel: WheelInstall) -> None:
    """The GitHub and the GitLab pipeline, shape and then every shell step for real, as one history
    on one project and one buildsys server (to run each buildsys command once), with buildsys
    installed from the built wheel by the pipeline's own install step: GitHub plans a pull request
    (changes) with a read-only token, GitLab applies the default branch (logging in to the registry)
    with an apply token, GitLab plans a merge request (no changes), GitHub applies main (nothing to do)."""
    workflow = _github()
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert triggers == {"pull_request": None, "push": {"branches": ["main"]}}
    jobs = workflow["jobs"]
    assert jobs["plan"]["if"] == "github.event_name == 'pull_request'"
    assert jobs["apply"]["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    uses = {job: [s.get("uses", "").split("@")[0] for s in jobs[job]["steps"]] for job in jobs}
    assert "actions/github-script" in uses["plan"] and "docker/login-action" in uses["apply"]
    assert "actions/cache/restore" in uses["plan"] and "actions/cache" in uses["apply"]
    for job in jobs.values():  # installed and the build cache restored before the first buildsys command
        names = [s.get("name", s.get("uses", "")) for s in job["steps"]]
        caches = [i for i, s in enumerate(job["steps"]) if s.get("uses", "").startswith("actions/cache")]
        assert names.index("Install buildsys") < names.index("Validate") and max(caches) < names.index("Validate")
        assert all(job["steps"][i]["with"]["path"] == ".buildsys/cache.db" for i in caches)
    gitlab = _gitlab()
    assert gitlab["stages"] == ["plan", "apply"]
    plan, apply = _gitlab_job(gitlab, "plan"), _gitlab_job(gitlab, "apply")
    assert plan["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert apply["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
    assert apply["resource_group"] == "buildsys-apply"
    assert plan["cache"]["paths"] == [".buildsys/cache.db"] and plan["cache"] == apply["cache"]

    assert jobs["plan"]["steps"][0]["with"] == {"fetch-depth": 0} and plan["variables"] == {"GIT_DEPTH": "0"}
    pushes = [s["run"] for s in jobs["apply"]["steps"] if "push" in s.get("run", "")] + [
        line for line in apply["script"] if "push" in line]
    assert pushes == ["buildsys push --explain ${BUILDSYS_CACHE:+--cache-write}"] * 2  # main writes the shared cache

    # A repository with an origin holding main, and a pull request branch that changes one deployment.
    bin_dir = buildsys_wheel.new_venv(tmp_path / "python")
    pipeline = Pipeline(tmp_path, tmp_path / "origin.git", bin_dir, buildsys_wheel.wheel)
    server_db = tmp_path / "server.db"
    tokens = TokenStore(database_for(str(server_db)))
    read_token, apply_token = tokens.create("read")[1], tokens.create("apply")[1]
    with (contextlib.closing(open_store(str(server_db))) as store,
          threaded_server(store, authenticator=Authenticator(tokens)) as url):
        pipeline.env["BUILDSYS_STATE"] = url
        _run_the_history(tmp_path, pipeline, jobs, plan, apply, read_token, apply_token)


def _run_the_history(tmp_path: Path, pipeline: Pipeline, jobs: dict[str, Any], plan: dict[str, Any],
                     apply: dict[str, Any], read_token: str, apply_token: str) -> None:
    checkout = copy_example("local-process", tmp_path)  # the developer's

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=checkout, check=True, capture_output=True, timeout=60)

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "base")
    git("init", "-q", "--bare", str(pipeline.origin))
    git("remote", "add", "origin", str(pipeline.origin))
    git("push", "-q", "origin", "main")
    git("checkout", "-q", "-b", "feature")
    text = (checkout / "prefect.yaml").read_text()
    (checkout / "prefect.yaml").write_text(text.replace("description: Prints a greeting.", "description: Says hello."))
    git("commit", "-q", "-am", "a new description")
    git("push", "-q", "origin", "feature")

    def github(job: str, ref: str, token: str) -> tuple[dict[str, str], str]:
        outputs = tmp_path / f"{job}.out"
        outputs.write_text("")
        steps = jobs[job]["steps"]
        saves = any(s.get("uses", "").split("@")[0] == "actions/cache" for s in steps)  # not cache/restore
        printed = pipeline.job(ref, [s["run"] for s in steps if "run" in s], saves_cache=saves,
                               GITHUB_OUTPUT=str(outputs), GITHUB_BASE_REF="main", BUILDSYS_TOKEN=token)
        return dict(line.split("=", 1) for line in outputs.read_text().splitlines()), printed

    def gitlab_job(job: dict[str, Any], token: str) -> str:
        return pipeline.job("main", [*job["before_script"], *job["script"]], saves_cache=job["cache"]["when"] == "always",
                            BUILDSYS_TOKEN=token, CI_REGISTRY="registry.example.com:5050",
                            CI_REGISTRY_USER="gitlab-ci-token", CI_REGISTRY_PASSWORD="s3cret",
                            CI_MERGE_REQUEST_TARGET_BRANCH_NAME="main")

    project = pipeline.project
    said, printed = github("plan", "feature", read_token)  # the clone has origin/main: fetch-depth 0
    assert said == {"changes": "true"}
    said_plan = (project / "plan.txt").read_text()
    assert 'description: "Says hello."' in said_plan and "Plan: 2 to add, 0 to change, 0 to destroy." in said_plan
    assert "Affected since origin/main" in (project / "plan.err").read_text()
    assert json.loads((project / "plan.json").read_text())["summary"] == {"add": 2, "change": 0, "destroy": 0}
    git("checkout", "-q", "main")  # merged
    git("merge", "-q", "--ff-only", "feature")
    git("push", "-q", "origin", "main")
    unreachable = {"BUILDSYS_CACHE": "http://127.0.0.1:9", "BUILDSYS_CACHE_KEY": "k" * 32}
    pipeline.env.update(unreachable)  # main writes to the shared cache (down here: a warning, not a failure)
    printed = gitlab_job(apply, apply_token)
    for name in unreachable:
        del pipeline.env[name]
    assert re.search(r"^▶ version\b.*no previous run", printed, re.M), printed  # nothing cached yet
    auths = json.loads((pipeline.home / ".docker" / "config.json").read_text())["auths"]
    assert auths == {"registry.example.com:5050": {"auth": "Z2l0bGFiLWNpLXRva2VuOnMzY3JldA=="}}  # user:password
    gitlab_job(plan, read_token)
    assert (project / "plan.env").read_text() == "CHANGES=false\n"
    assert "No changes." in (project / "plan.txt").read_text()
    said, printed = github("apply", "main", apply_token)
    assert said == {}
    # a fresh clone, a fresh HOME and only .buildsys/cache.db from the CI cache: the step is not run again
    assert re.search(r"^= version\s+cached", printed, re.M), printed


@pytest.mark.parametrize("where", ["github", "gitlab"])
def test_ci_install_step_installs_from_buildsys_pip_and_says_when_it_is_unset(tmp_path: Path, where: str) -> None:
    """Not `pip install buildsys` (no package index has it) nor an editable checkout: the wheel or
    repository URL in BUILDSYS_PIP; unset, the step fails naming the variable (installing a wheel with it
    is run in test_ci_pipelines_plan_on_pull_requests_and_apply_on_main)."""
    if where == "github":
        scripts = [s["run"] for job in _github()["jobs"].values() for s in job["steps"] if s.get("name") == "Install buildsys"]
    else:
        scripts = [_gitlab_job(_gitlab(), job)["before_script"][0] for job in ("plan", "apply")]
    assert len(scripts) == 2 and all(INSTALL.match(s) for s in scripts), scripts
    env = {k: v for k, v in os.environ.items() if k != "BUILDSYS_PIP"}
    done = subprocess.run(["bash", "-e", "-c", scripts[0]], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0
    assert "BUILDSYS_PIP: set the" in done.stderr and "variable BUILDSYS_PIP to a buildsys wheel URL" in done.stderr
