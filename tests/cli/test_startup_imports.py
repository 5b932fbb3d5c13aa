"""What each everyday command imports, read from the real process (`python -X importtime -m
buildsys …`): the modules a command does not use stay out of its start-up, so a gain there cannot
silently come back. One process per command (~1 s each)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FLOW = 'from prefect import flow\n\n\n@flow(name="etl")\ndef etl(day: str = "today"):\n    """Load."""\n'
PROJECT = """\
name: shop
work_pools:
  - {name: local, type: process, queues: [{name: q1, priority: 1}]}
  - {name: boxes, type: docker}
build:
  - run_shell_script: {id: stamp, script: "echo built", inputs: ["src/*.txt"]}
deployments:
  - name: nightly
    entrypoint: flows/etl.py:etl
    parameters: {day: today}
    work_pool: {name: local, job_variables: {env: {LOG_LEVEL: INFO}}}
    pull: [{set_working_directory: {directory: /opt/app}}]
  - name: hourly
    entrypoint: flows/etl.py:etl
    work_pool: {name: boxes, job_variables: {image: "python:3.11"}}
"""

# Never on an everyday command's path: the optional and server-side libraries.
NEVER = {"jsonschema", "rich", "pygments", "httpx", "docker", "requests", "git", "networkx", "sqlalchemy",
         "boto3", "botocore", "uvicorn", "starlette", "prefect"}
# Costs of start-up that these commands do not need (entry points are read from buildsys's own
# entry_points.txt; shipped schemas from the package folder; completion only when completing).
UNNEEDED = {"importlib.metadata", "importlib.resources", "click.shell_completion", "difflib", "email",
            "calendar", "zipfile"}


def imported(*args: str, cwd: Path, env: dict[str, str] | None = None) -> set[str]:
    """Every module the command `buildsys ARGS` imported (it must succeed)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "buildsys", *args], cwd=cwd,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return {m.group(1) for m in re.finditer(r"^import time:.*\| +(\S+)$", result.stderr, re.M)}


def families(modules: set[str], names: set[str]) -> set[str]:
    """The `names` (packages or modules) that `modules` holds, themselves or a submodule of them."""
    return {n for n in names if any(m == n or m.startswith(n + ".") for m in modules)}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("startup")
    (root / "flows").mkdir()
    (root / "flows" / "etl.py").write_text(FLOW)
    (root / "src").mkdir()
    (root / "src" / "a.txt").write_text("a\n")
    (root / "prefect.yaml").write_text(PROJECT)
    (root / "deployments.yaml").write_text(PROJECT.replace(PROJECT[PROJECT.index("build:"):PROJECT.index("deployments:")], ""))
    return root


def test_a_plan_imports_no_entry_point_scan_nor_the_build(project: Path) -> None:
    modules = imported("--state", "state.db", "plan", cwd=project)  # its build step's outputs: the engine's
    assert {"buildsys.desired", "buildsys.engine"} <= modules
    assert families(modules, NEVER | UNNEEDED) == set()
    assert families(modules, {"click"}) == set()  # a plain plan: buildsys.cli.direct
    # the pool types' default templates load buildsys.infra.docker and .process (through
    # importlib.import_module, which -X importtime does not list; what they import it does): not
    # what only a run uses
    assert families(modules, {"tempfile"}) == set()
    # without build steps a plan loads the project only: no compiled build, no graph, no engine,
    modules = imported("--file", "deployments.yaml", "--state", "state.db", "plan", cwd=project)
    assert "buildsys.desired" in modules
    assert families(modules, NEVER | UNNEEDED) == set()
    assert families(modules, {"buildsys.graph", "buildsys.compiled", "buildsys.engine", "buildsys.cache"}) == set()
    # … nor the step registry: no step output to look up (its one pull step is the first)
    assert families(modules, {"buildsys.registry", "buildsys.step"}) == set()


def test_an_affected_plan_imports_no_entry_point_scan(project: Path, tmp_path: Path) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=project, check=True)
    subprocess.run([*git, "add", "prefect.yaml", "flows", "src"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], cwd=project, check=True)
    (project / "flows" / "etl.py").write_text(FLOW.replace('"today"', '"yesterday"'))
    modules = imported("--state", str(tmp_path / "state.db"), "plan", "--affected=main", cwd=project)
    assert "buildsys.affected" in modules
    assert families(modules, NEVER | UNNEEDED | {"click"}) == set()


def test_a_build_and_a_rebuild_import_no_entry_point_scan_nor_the_store(project: Path) -> None:
    first = imported("build", cwd=project)  # compiles the project: resolves its steps by name
    (project / "src" / "a.txt").write_text("changed\n")
    again = imported("build", cwd=project)  # the compiled build reused; the step reruns
    for modules in (first, again):
        assert "buildsys.engine" in modules
        assert families(modules, NEVER | UNNEEDED) == set()
        assert families(modules, {"buildsys.store", "buildsys.desired", "buildsys.plan"}) == set()
    assert families(again, {"yaml", "buildsys.project"}) == set()  # no YAML parse when nothing in it changed


def test_a_push_with_a_shared_cache_imports_no_entry_point_scan_of_its_own(project: Path) -> None:
    """The shared cache's client is the standard library's http.client: no urllib3, no Docker SDK,
    no entry-point scan."""
    env = {"BUILDSYS_CACHE_KEY": ""}  # no key: the cache is named, said unused, never contacted
    modules = imported("push", "--cache-from", "http://127.0.0.1:9", cwd=project, env=env)
    assert "buildsys.sharedcache" in modules
    assert families(modules, NEVER | {"click.shell_completion", "difflib", "urllib3"}) == set()


def test_the_version_is_the_installed_one_without_reading_metadata(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "buildsys", "--version"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"buildsys, version {version('buildsys')}\n"
    assert " importlib.metadata\n" not in result.stderr and " click.core\n" in result.stderr
