"""The built wheel is a complete installation: built-in steps under `buildsys.steps`, their entry
points, the JSON schemas, and a built-in step that runs from it (not from the repository)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.services.wheel import WheelInstall

# Runs in `python -S` with PYTHONPATH at the installed wheel only: no site-packages, no repository.
PROBE = r"""
import importlib.util, json, os, sys
from importlib.metadata import distribution, entry_points
from importlib.resources import files
from pathlib import Path

import buildsys.steps.shell
from buildsys import registry
from buildsys.step import Context

eps = entry_points(group="buildsys.steps")
schemas = files("buildsys.schemas")
step = registry.resolve("run_shell_script")
here = Path.cwd()
outputs = step(Context(root=here, cwd=here, env=dict(os.environ)), script="echo from-the-wheel\necho second line")
print(json.dumps({
    "shell_module": buildsys.steps.shell.__file__,
    "registry_module": registry.__file__,
    "dist_files": str(distribution("buildsys").locate_file("")),
    "entry_points": {ep.name: ep.value for ep in eps},
    "entry_point_dists": sorted({ep.dist.name for ep in eps}),
    "step_schemas": sorted(p.name for p in schemas.joinpath("steps").iterdir()),
    "project_schema_title": json.loads(schemas.joinpath("project.schema.json").read_text()).get("$id"),
    "step_name": step.name,
    "step_source": step.source,
    "step_schema_properties": sorted(step.schema.get("properties", {})),
    "outputs": outputs,
    "top_level_steps": importlib.util.find_spec("steps") is not None,
    "top_level_schemas": importlib.util.find_spec("schemas") is not None,
}))
"""


@pytest.fixture(scope="module")
def installed_wheel(buildsys_wheel: WheelInstall, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel file, directory it is installed into with `pip install --target`)."""
    wheel = buildsys_wheel.wheel
    target = tmp_path_factory.mktemp("wheel") / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return wheel, target


def _pyproject() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def _source_packages() -> dict[str, Path]:
    """Every package of the source tree (a directory holding __init__.py) by its installed name."""
    package_dir: dict[str, str] = _pyproject()["tool"]["setuptools"]["package-dir"]
    found: dict[str, Path] = {}
    for name, folder in package_dir.items():
        for init in sorted((REPO / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(REPO / folder)
            if "__pycache__" in rel.parts:
                continue
            found[".".join((name, *rel.parts))] = init.parent
    return found


@pytest.mark.unit
def test_every_source_package_is_listed_for_the_wheel() -> None:
    """pyproject lists packages by name: a new package missing there is missing from the wheel
    (an installed buildsys once failed with No module named buildsys.sharedcache)."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    missing = sorted(set(_source_packages()) - listed)
    assert missing == [], f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


@pytest.mark.slow
def test_wheel_layout_has_only_the_buildsys_package(installed_wheel: tuple[Path, Path]) -> None:
    wheel, _ = installed_wheel
    project = _pyproject()["project"]
    dist_info = f"buildsys-{project['version']}.dist-info"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert sorted({n.split("/", 1)[0] for n in names}) == ["buildsys", dist_info]
    # steps/, schemas/ and recipes/ of the repository install under the buildsys namespace
    for module in ("shell", "workdir", "python", "git", "docker", "s3", "gcs"):
        assert f"buildsys/steps/{module}.py" in names
    for schema in sorted((REPO / "schemas" / "steps").glob("*.json")):
        assert f"buildsys/schemas/steps/{schema.name}" in names
    assert "buildsys/schemas/project.schema.json" in names
    assert "[buildsys.steps]" in entry_points
    assert "[buildsys.pool_types]" in entry_points  # pool types register like steps
    for module in ("manifest", "render", "cache"):
        assert f"buildsys/recipes/{module}.py" in names
    assert "[console_scripts]\nbuildsys = buildsys.launcher:main" in entry_points
    # every module of every package is in the wheel, where the installed name puts it
    expected = {
        "/".join((*package.split("."), module.name))
        for package, folder in _source_packages().items()
        for module in folder.glob("*.py")
    }
    assert sorted(expected - set(names)) == []


@pytest.mark.slow
def test_builtin_step_runs_from_the_installed_wheel(installed_wheel: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = installed_wheel
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(target)
    proc = subprocess.run(
        [sys.executable, "-S", "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    declared = _pyproject()["project"]["entry-points"]["buildsys.steps"]
    assert found == {
        "shell_module": str(target / "buildsys" / "steps" / "shell.py"),
        "registry_module": str(target / "buildsys" / "registry.py"),
        "dist_files": str(target),
        "entry_points": declared,
        "entry_point_dists": ["buildsys"],
        "step_schemas": sorted(p.name for p in (REPO / "schemas" / "steps").glob("*.json")),
        "project_schema_title": json.loads((REPO / "schemas" / "project.schema.json").read_text()).get("$id"),
        "step_name": "run_shell_script",
        "step_source": "buildsys.steps.shell",
        "step_schema_properties": sorted(
            json.loads((REPO / "schemas" / "steps" / "run_shell_script.json").read_text())["properties"]
        ),
        "outputs": {"stdout": "from-the-wheel\nsecond line", "stderr": ""},
        "top_level_steps": False,
        "top_level_schemas": False,
    }
