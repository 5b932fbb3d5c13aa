"""`buildsys init` and `buildsys recipes` as a user runs them (in-process, and on a real pseudo-terminal)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildsys.cli import main
from buildsys.recipes.manifest import builtin_recipe
from tests.services.git import GitRepos
from tests.test_recipes import RECIPE_REPO, Daemon, daemon  # noqa: F401  (fixture)

BUILDSYS = str(Path(sys.executable).parent / "buildsys")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return Result(code, out, err)


def test_init_renders_a_builtin_recipe(capsys: pytest.CaptureFixture[str], isolated: Path) -> None:
    result = run(capsys, "init", "--recipe", "local")
    assert result == Result(0, (
        f"Rendered recipe 'local' (built-in) into {isolated.resolve()}:\n"
        "  + .gitignore\n"
        "  + README.md\n"
        "  + prefect.yaml\n"
        "  + flows/hello.py\n"
        "Next: buildsys validate && buildsys build && buildsys plan  (see README.md)\n"
    ), "")
    # nothing of this machine in the file: the default pull step takes the directory at plan time
    assert str(isolated.resolve()) not in (isolated / "prefect.yaml").read_text()


def test_init_into_a_directory_with_json_output(capsys: pytest.CaptureFixture[str], isolated: Path) -> None:
    result = run(capsys, "init", "--json", "--recipe", "docker", "--field", "image_name=127.0.0.1:5000/app",
                 "--field", "tag=v1", "proj")
    assert (result.code, result.err) == (0, "")
    assert json.loads(result.out) == {
        "recipe": "docker",
        "source": "builtin",
        "directory": str((isolated / "proj").resolve()),
        "written": [".dockerignore", ".gitignore", "Dockerfile", "README.md", "prefect.yaml", "flows/hello.py"],
        "overwritten": [],
        "unchanged": [],
    }
    assert "  - build_docker_image:\n      id: build_image\n      image_name: '127.0.0.1:5000/app'\n      tag: 'v1'\n" \
        in (isolated / "proj" / "prefect.yaml").read_text()


def test_without_a_recipe_it_is_inferred(capsys: pytest.CaptureFixture[str], isolated: Path) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main"], check=True)
    subprocess.run(["git", "remote", "add", "origin", "https://example.com/team/app.git"], check=True)
    result = run(capsys, "init")
    assert result.code == 0
    assert result.err == "No --recipe given: using 'git' (inferred from the directory).\n"
    assert result.out.startswith("Rendered recipe 'git' (built-in) into ")
    text = (isolated / "prefect.yaml").read_text()
    assert "      repository: 'https://example.com/team/app.git'\n      branch: 'main'\n" in text


def test_missing_fields_are_listed_without_a_terminal(capsys: pytest.CaptureFixture[str], isolated: Path) -> None:
    result = run(capsys, "init", "--recipe", "docker-git")
    assert result == Result(1, "", (
        "error: recipe 'docker-git' needs values for 2 field(s):\n"
        "  image_name: Image to build and push, with its registry (e.g. registry.example.com/team/app or "
        "127.0.0.1:5000/app).\n"
        "  repository: URL the worker clones the code from (https://, ssh://, git:// or file://).\n"
        "  hint: pass --field image_name=… --field repository=…\n"
    ))
    assert list(isolated.iterdir()) == []


def test_conflicts_are_listed_and_force_overwrites(capsys: pytest.CaptureFixture[str], isolated: Path) -> None:
    (isolated / "README.md").write_text("mine\n")
    result = run(capsys, "init", "--recipe", "local", "--field", "colour=blue")
    assert result == Result(1, "", (
        "warning: recipe 'local' has no field 'colour'; ignored\n"
        "error: 1 file(s) already exist and would be overwritten:\n"
        "  README.md\n"
        "  hint: nothing was written; move them away or pass --force to overwrite\n"
    ))
    assert [p.name for p in isolated.iterdir()] == ["README.md"]
    result = run(capsys, "init", "--recipe", "local", "--force")
    assert result.code == 0
    assert result.out.splitlines()[1:6] == [
        "  + .gitignore", "  + prefect.yaml", "  + flows/hello.py", "  ~ README.md (overwritten)",
        "Next: buildsys validate && buildsys build && buildsys plan  (see README.md)",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--field", "novalue"], "error: invalid --field 'novalue'\n  hint: write --field KEY=VALUE, e.g. --field image_name=app\n"),
        (["--recipe", "nope"], "error: unknown recipe 'nope'\n  hint: built-in recipes: docker, docker-git, git, "
         "kubernetes, local, s3; or a git source: git+https://host/repo.git[@REV][#SUBDIR]\n"),
        (["--recipe", "local", "--field", "pool=bad pool"],
         "error: invalid field value(s) for recipe 'local':\n  pool='bad pool': must match [A-Za-z0-9][A-Za-z0-9_.-]*\n"),
    ],
)
def test_bad_input_gets_one_clear_error(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert run(capsys, "init", *args) == Result(1, "", message)


def test_prompts_for_missing_fields_on_a_terminal(isolated: Path) -> None:
    """A real pseudo-terminal: the prompt re-asks after an invalid value."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "dumb"}
    proc = subprocess.Popen([BUILDSYS, "init", "--recipe", "docker"], stdin=slave, stdout=slave, stderr=slave,
                            cwd=isolated, env=env, close_fds=True)
    os.close(slave)
    transcript = b""

    def read_until(text: bytes, count: int = 1, timeout: float = 20) -> None:
        nonlocal transcript
        deadline = time.monotonic() + timeout
        while transcript.count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in {transcript!r}")
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            transcript += chunk

    try:
        prompt = b"127.0.0.1:5000/app).): "
        read_until(prompt)  # the whole prompt is out before we type, as a person would
        os.write(master, b"Bad Name\n")
        read_until(prompt, count=2)
        os.write(master, b"127.0.0.1:5000/prompted\n")
        read_until(b"Next: ")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = transcript.decode().replace("\r\n", "\n")
    assert "must match" in text, text
    pattern = builtin_recipe("docker").field("image_name").pattern  # type: ignore[union-attr]
    assert text.startswith(
        "image_name (Image to build and push, with its registry (e.g. registry.example.com/team/app or "
        "127.0.0.1:5000/app).): Bad Name\n"
        f"  image_name must match {pattern}\n"
        "image_name (Image to build and push, with its registry (e.g. registry.example.com/team/app or "
        "127.0.0.1:5000/app).): 127.0.0.1:5000/prompted\n"
        f"Rendered recipe 'docker' (built-in) into {isolated.resolve()}:\n"
    )
    assert "image_name: '127.0.0.1:5000/prompted'" in (isolated / "prefect.yaml").read_text()


def test_recipes_ls_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "recipes", "ls") == Result(0, (
        "docker      Code baked into a Docker image that is built and pushed; runs in containers (docker pool).\n"
        "docker-git  A Docker image for the runtime, code cloned from git at run time (docker pool).\n"
        "git         Code lives in a git repository; each run clones it at run time (process pool).\n"
        "kubernetes  Code baked into an image that runs as Kubernetes Jobs (kubernetes pool).\n"
        "local       Flows run as processes on this machine; the code stays where it is (process pool).\n"
        "s3          Code uploaded to an S3 bucket by push; each run downloads it first (process pool).\n"
    ), "")
    assert run(capsys, "recipes", "show", "s3") == Result(0, (
        "s3: Code uploaded to an S3 bucket by push; each run downloads it first (process pool).\n"
        "\n"
        "Fields:\n"
        "  name  (required, default '{{ name }}', matches [A-Za-z0-9][A-Za-z0-9_.-]*)\n"
        "      Project name; the code goes under this folder in the bucket.\n"
        "  bucket  (required, no default, matches [a-z0-9][a-z0-9.-]{1,61}[a-z0-9])\n"
        "      S3 bucket the code is uploaded to (credentials and endpoint come from the usual AWS settings, "
        "e.g. AWS_PROFILE, AWS_ENDPOINT_URL).\n"
        "  pool  (required, default 'local', matches [A-Za-z0-9][A-Za-z0-9_.-]*)\n"
        "      Name of the process work pool this project declares.\n"
        "  deployment  (required, default 'hello', matches [A-Za-z0-9][A-Za-z0-9_.-]*)\n"
        "      Name of the sample deployment.\n"
        "\n"
        "Files:\n"
        "  .gitignore\n"
        "  .prefectignore\n"
        "  README.md\n"
        "  flows/hello.py\n"
        "  prefect.yaml\n"
        "\n"
        "Use it: buildsys init --recipe s3 --field bucket=…\n"
    ), "")


def test_recipes_from_a_git_server(capsys: pytest.CaptureFixture[str], git_repos: GitRepos,
                                   daemon: Daemon, isolated: Path) -> None:  # noqa: F811
    commit = git_repos.create("recipes", RECIPE_REPO)
    source = f"git+{daemon.url('recipes')}@{commit}"
    assert run(capsys, "recipes", "ls", source) == Result(0, (
        "api (#team/api)      Team API service\n"
        "batch (#team/batch)  Team batch jobs\n"
    ), "")
    result = run(capsys, "init", "--recipe", f"{source}#team/api", "--field", "service=billing", "svc")
    assert result == Result(0, (
        f"Rendered recipe 'api' from git+{daemon.url('recipes')} at {commit[:12]} into {(isolated / 'svc').resolve()}:\n"
        "  + prefect.yaml\n"
        "  + flows/billing.py\n"
        "Next: buildsys validate && buildsys build && buildsys plan  (see README.md)\n"
    ), "")
    daemon.stop()  # served from the cache from now on
    result = run(capsys, "init", "--recipe", f"{source}#team/api", "--field", "service=billing", "svc2")
    assert result.code == 0, result.err
    assert (isolated / "svc2" / "prefect.yaml").read_text() == (isolated / "svc" / "prefect.yaml").read_text()
    result = run(capsys, "init", "--recipe", f"git+{daemon.url('recipes')}@main#team/api", "svc3")
    assert result.code == 1
    assert result.err.startswith(f"error: could not fetch recipe git+{daemon.url('recipes')}@main#team/api: ")


def test_again_renders_the_recorded_recipe(capsys: pytest.CaptureFixture[str], git_repos: GitRepos,
                                           daemon: Daemon, isolated: Path) -> None:  # noqa: F811
    commit = git_repos.create("recipes", RECIPE_REPO)
    git_repos.commit("recipes", {"team/api/flows/{{ service }}.py": "def main() -> None:\n    print('v2')\n"})
    assert run(capsys, "init", "--recipe", f"git+{daemon.url('recipes')}@{commit}#team/api",
               "--field", "service=billing").code == 0
    flow = isolated / "flows" / "billing.py"
    flow.write_text("# edited\n")
    result = run(capsys, "init", "--again")
    assert result == Result(1, "", (
        "error: 1 file(s) already exist and would be overwritten:\n"
        "  flows/billing.py\n"
        "  hint: nothing was written; move them away or pass --force to overwrite\n"
    ))
    result = run(capsys, "init", "--again", "--force")
    assert result.out.splitlines()[1:3] == ["  ~ flows/billing.py (overwritten)", "  = prefect.yaml (unchanged)"]
    assert flow.read_text() == "def main() -> None:\n    print('billing ran')\n"  # the recorded commit, not v2
    assert run(capsys, "init", "--again", "elsewhere") == Result(1, "", (
        "error: elsewhere/prefect.yaml records no recipe (no `buildsys: {recipe: …}`)\n"
        "  hint: pass --recipe NAME to render one\n"
    ))


def test_the_recipe_picker_on_a_terminal_defaults_to_the_inferred_recipe(isolated: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen([BUILDSYS, "init"], stdin=slave, stdout=slave, stderr=slave, cwd=isolated,
                            env={**os.environ, "TERM": "dumb"}, close_fds=True)
    os.close(slave)
    transcript = b""
    try:
        deadline = time.monotonic() + 20
        while b"Recipe (" not in transcript or not transcript.rstrip().endswith(b":"):
            assert time.monotonic() < deadline, transcript
            transcript += os.read(master, 4096)
        os.write(master, b"\n")  # accept the default
        while proc.poll() is None:
            try:
                transcript += os.read(master, 4096)
            except OSError:
                break
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    lines = transcript.decode().replace("\r\n", "\n").splitlines()
    assert lines[:8] == [
        "Recipes:",
        "  docker      Code baked into a Docker image that is built and pushed; runs in containers (docker pool).",
        "  docker-git  A Docker image for the runtime, code cloned from git at run time (docker pool).",
        "  git         Code lives in a git repository; each run clones it at run time (process pool).",
        "  kubernetes  Code baked into an image that runs as Kubernetes Jobs (kubernetes pool).",
        "  local       Flows run as processes on this machine; the code stays where it is (process pool).",
        "  s3          Code uploaded to an S3 bucket by push; each run downloads it first (process pool).",
        "Recipe (docker, docker-git, git, kubernetes, local, s3) [local]: ",
    ]
    assert lines[8] == f"Rendered recipe 'local' (built-in) into {isolated.resolve()}:"
