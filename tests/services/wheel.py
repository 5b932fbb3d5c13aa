"""buildsys as users install it: the wheel built from this checkout, and fresh environments to install it in.

``buildsys_wheel`` (session scope) builds the wheel once per test run, also across pytest-xdist
workers (the first worker builds it under a file lock in the run's shared temp root; the others take
that file). ``WheelInstall.new_venv`` makes a fresh virtual environment whose only other packages are
buildsys's declared runtime dependencies and pip, linked from this interpreter's site-packages: a
``python -m pip install WHEEL`` in it resolves every dependency of the wheel's metadata for real and
finds them installed (so nothing is downloaded: run it with ``PIP_NO_INDEX=1`` and a dependency the
wheel does not declare is missing at run time, as on a CI runner), and installs buildsys itself from
the wheel, console script included. Not the repository's editable install: its files are not linked.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock
from packaging.requirements import Requirement

from tests.services.require import unavailable

__all__ = ["WheelInstall", "build_wheel", "buildsys_wheel"]

REPO = Path(__file__).resolve().parent.parent.parent
# What the wheel is built from: the fixed top-level layout (README.md only when it exists).
SOURCES = ("pyproject.toml", "README.md", "buildsys", "steps", "schemas", "recipes")
NETWORK_FAILURES = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution")


def _copy_sources(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".mypy_cache", ".ruff_cache")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)


def _can_build_offline() -> bool:
    """setuptools >= 68 and wheel in this interpreter: build without an isolated environment."""
    try:
        setuptools = importlib.metadata.version("setuptools")
        importlib.metadata.version("wheel")
    except importlib.metadata.PackageNotFoundError:
        return False
    return int(setuptools.split(".")[0]) >= 68


def build_wheel(out: Path) -> Path:
    """`python -m build --wheel` of a clean copy of the sources (no build leftovers in the checkout)."""
    if importlib.util.find_spec("build") is None:
        unavailable("the `build` package (in the [test] extra) is not installed")
    src = out / "src"
    src.mkdir(parents=True)
    _copy_sources(src)
    cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out / "dist")]
    if _can_build_offline():
        cmd.append("--no-isolation")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        text = proc.stdout + proc.stderr
        if any(marker in text for marker in NETWORK_FAILURES):
            unavailable("building the wheel needs setuptools>=68 and wheel from PyPI, which is unreachable")
        pytest.fail(f"python -m build failed ({proc.returncode}):\n{text}")
    shutil.rmtree(src)
    wheels = sorted((out / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _runtime(requires: list[str]) -> list[str]:
    """The names of the requirements that apply here without extras."""
    names = []
    for line in requires:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def _dependency_closure(wheel: Path) -> list[importlib.metadata.Distribution]:
    """The installed distributions the wheel needs at run time, as its own metadata declares them."""
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.parser.Parser().parsestr(zf.read(metadata).decode())
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = _runtime(message.get_all("Requires-Dist") or [])
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if key not in seen:
            seen[key] = dist
            todo.extend(_runtime(dist.requires or []))
    return list(seen.values())


def _link_distributions(dists: list[importlib.metadata.Distribution], dest: Path) -> None:
    """A site directory holding (as symlinks) the top-level files and folders of `dists`."""
    dest.mkdir(parents=True)
    site = Path(sysconfig.get_paths()["purelib"])
    for dist in dists:
        for file in dist.files or []:
            top = file.parts[0]
            if top == ".." or not (site / top).exists() or (dest / top).exists():
                continue  # a console script under bin/, or already linked
            (dest / top).symlink_to(site / top)


@dataclass(frozen=True)
class WheelInstall:
    """The built wheel and a directory holding its runtime dependencies (and pip), ready to be linked."""

    wheel: Path
    dependencies: Path

    def new_venv(self, path: Path) -> Path:
        """A fresh virtual environment at `path` without buildsys; returns its bin directory."""
        venv.EnvBuilder(with_pip=False).create(path)
        purelib = sysconfig.get_paths(vars={"base": str(path), "platbase": str(path)})["purelib"]
        Path(purelib, "buildsys-test-dependencies.pth").write_text(f"{self.dependencies}\n")
        return path / ("Scripts" if os.name == "nt" else "bin")


@pytest.fixture(scope="session")
def buildsys_wheel(tmp_path_factory: pytest.TempPathFactory) -> WheelInstall:
    """The wheel of this checkout, built once per run (shared by the xdist workers), and its dependencies."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, shared by its workers
    base = root / "buildsys-wheel"
    with FileLock(str(root / "buildsys-wheel.lock"), timeout=600):
        wheels = sorted((base / "dist").glob("*.whl"))
        if not wheels:
            shutil.rmtree(base, ignore_errors=True)
            wheels = [build_wheel(base)]
        dependencies = base / "site"
        if not dependencies.is_dir():
            pip = importlib.metadata.distribution("pip")
            _link_distributions([*_dependency_closure(wheels[0]), pip], dependencies)
    return WheelInstall(wheels[0], dependencies)
