"""examples/custom-step-plugin, installed for real and used in a build through the CLI.

The plugin is pip-installed (a real wheel build: metadata, entry points) from a copy of its source
into a private target directory, once per module, and made visible to the `buildsys` subprocesses
with PYTHONPATH. Nothing is installed into the project's own virtualenv, so the suite leaves no
trace and a stale editable install can never hide a packaging mistake.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "examples" / "custom-step-plugin"

PROJECT = """\
name: plugin-demo
build:
  - render_template:
      id: settings
      template: templates/settings.toml.tmpl
      output: build/settings.toml
      values:
        region: eu-west-1
deployments:
  - name: demo
    entrypoint: flows/demo.py:demo
    parameters:
      settings_digest: "{{ settings.sha256 }}"
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the plugin installed in it (``pip install --target``)."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "source"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = work / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, f"pip could not install the example plugin:\n{done.stdout}\n{done.stderr}"
    return site


def run(args: list[str], cwd: Path, site: Path | None, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **extra_env}
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=300, check=False)


def bs(*args: str, cwd: Path, site: Path | None) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "buildsys", *args], cwd, site)


@pytest.fixture
def project(isolated: Path) -> Path:
    (isolated / "prefect.yaml").write_text(PROJECT)
    (isolated / "templates").mkdir()
    (isolated / "templates" / "settings.toml.tmpl").write_text('region = "$region"\n')
    (isolated / "flows").mkdir()
    (isolated / "flows" / "demo.py").write_text("def demo(settings_digest=''):\n    return settings_digest\n")
    return isolated


def test_the_plugins_own_tests_pass_against_the_installed_plugin(plugin_site: Path) -> None:
    source = plugin_site.parent / "source"  # the copy it was installed from
    # Only pytest itself: the big plugins of this virtualenv (hypothesis, schemathesis) are not needed.
    # Its temp dirs go under this test's own (removed with it), not into the shared pytest-of-USER.
    basetemp = plugin_site.parent / "plugin-pytest"
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", "tests"],
               source, plugin_site, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(r"4 passed in [0-9.]+s", done.stdout.strip().splitlines()[-1])


def test_steps_ls_names_the_plugin_package(plugin_site: Path, isolated: Path) -> None:
    done = bs("--json", "steps", "ls", cwd=isolated, site=plugin_site)
    assert done.returncode == 0, done.stderr
    entries = {e["name"]: e for e in json.loads(done.stdout)}
    assert entries["render_template"] == {
        "name": "render_template",
        "aliases": ["buildsys_render_template.render_template"],
        "package": "buildsys-render-template",
        "value": "buildsys_render_template:render_template",
    }


def test_a_build_runs_the_plugin_step_and_caches_it(plugin_site: Path, project: Path) -> None:
    first = bs("build", cwd=project, site=plugin_site)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (project / "build" / "settings.toml").read_text() == 'region = "eu-west-1"\n'
    assert summary(first) == "build ok: 1 ran, 0 cached, 0 failed, 0 not run"

    assert summary(bs("build", cwd=project, site=plugin_site)) == "build ok: 0 ran, 1 cached, 0 failed, 0 not run"

    # the files hook put the template into the cache key
    (project / "templates" / "settings.toml.tmpl").write_text('region = "$region"\nzone = "a"\n')
    assert summary(bs("build", cwd=project, site=plugin_site)) == "build ok: 1 ran, 0 cached, 0 failed, 0 not run"
    assert (project / "build" / "settings.toml").read_text() == 'region = "eu-west-1"\nzone = "a"\n'

    # the check hook refuses a cached result whose file was edited
    (project / "build" / "settings.toml").write_text("tampered\n")
    assert summary(bs("build", cwd=project, site=plugin_site)) == "build ok: 1 ran, 0 cached, 0 failed, 0 not run"
    assert (project / "build" / "settings.toml").read_text() == 'region = "eu-west-1"\nzone = "a"\n'


def test_without_the_plugin_the_step_is_unknown(project: Path) -> None:
    done = bs("build", cwd=project, site=None)
    assert done.returncode == 1
    assert "unknown step 'render_template'" in done.stderr


def summary(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[-1] if lines else ""
