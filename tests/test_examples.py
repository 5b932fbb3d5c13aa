"""Every example in examples/ validates, builds and plans (docker ones build a real image from the
local base); the local-process demo runs end to end; the CI pipeline's shell runs for real."""

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


def _run_steps(job: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s.get("name", s["run"]), s["run"]) for s in job["steps"]
            if "run" in s and "pip install" not in s["run"]]


def test_ci_pipeline_plans_on_pull_requests_and_applies_on_main(tmp_path: Path) -> None:
    workflow = yaml.safe_load((EXAMPLES / "ci" / ".github" / "workflows" / "buildsys.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert triggers == {"pull_request": None, "push": {"branches": ["main"]}}
    assert workflow["jobs"]["plan"]["if"] == "github.event_name == 'pull_request'"
    assert workflow["jobs"]["apply"]["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    posts = [s for s in workflow["jobs"]["plan"]["steps"] if s.get("uses", "").startswith("actions/github-script")]
    assert len(posts) == 1 and "createComment" in posts[0]["with"]["script"]

    project = copy_example("local-process", tmp_path)
    env = {**os.environ, "PATH": f"{Path(BUILDSYS).parent}:{os.environ['PATH']}", "NO_COLOR": "1",
           "BUILDSYS_STATE": str(tmp_path / "state.db"), "BUILDSYS_TOKEN": ""}

    def run_job(job: str) -> dict[str, str]:
        outputs = tmp_path / f"{job}.out"
        outputs.write_text("")
        for name, script in _run_steps(workflow["jobs"][job]):
            done = subprocess.run(["bash", "-e", "-c", script], cwd=project, capture_output=True, text=True,
                                  env={**env, "GITHUB_OUTPUT": str(outputs)}, timeout=120)
            assert done.returncode == 0, (job, name, done.stdout, done.stderr)
        return dict(line.split("=", 1) for line in outputs.read_text().splitlines())

    assert run_job("plan") == {"changes": "true"}
    assert "Plan: 2 to add, 0 to change, 0 to destroy." in (project / "plan.txt").read_text()
    assert json.loads((project / "plan.json").read_text())["summary"] == {"add": 2, "change": 0, "destroy": 0}
    assert run_job("apply") == {}
    assert run_job("plan") == {"changes": "false"}
