"""`buildsys steps ls` / `buildsys steps show NAME`: whole lines, exit codes, plugins found through
entry points (fake distributions on PYTHONPATH), conflicts and broken plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services.distributions import installed_distribution


def bs(*args: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


def fake_distribution(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Install `dist` with these steps into `site` (for a subprocess's PYTHONPATH); returns `site`."""
    lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
    installed_distribution(site, dist, f"[buildsys.steps]\n{lines}\n", modules)
    return site


PLUGIN = '''\
from buildsys.step import step


@step("shout", aliases=("acme.steps.shout",), outputs=("text",), example="- shout:\\n    word: hi\\n")
def shout(ctx, word: str, times: int = 2) -> dict:
    """Repeat a word loudly."""
    return {"text": " ".join([word.upper()] * times)}
'''


def test_ls_lists_builtins_with_their_aliases(isolated: Path) -> None:
    r = bs("steps", "ls", cwd=isolated)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PACKAGE", "ALIASES"]
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:]}
    assert rows["git_clone"] == ["buildsys", ", ".join(sorted(
        ["prefect.deployments.steps.git_clone", "prefect.deployments.steps.pull.git_clone",
         "prefect.projects.steps.git_clone", "prefect.projects.steps.git_clone_project"],
        key=lambda n: (n.count("."), len(n), n)))]
    assert rows["push_to_s3"] == [
        "buildsys", "prefect_aws.deployments.steps.push_to_s3, prefect_aws.projects.steps.push_project_to_s3",
    ]


def test_ls_json_and_a_plugin_from_another_package(isolated: Path, tmp_path: Path) -> None:
    site = fake_distribution(tmp_path / "site", "acme-steps",
                             {"shout": "acme_steps:shout", "acme.steps.shout": "acme_steps:shout"},
                             {"acme_steps": PLUGIN})
    r = bs("--json", "steps", "ls", cwd=isolated, pythonpath=site)
    assert r.returncode == 0, r.stderr
    entries = {e["name"]: e for e in json.loads(r.stdout)}
    assert entries["shout"] == {"name": "shout", "aliases": ["acme.steps.shout"], "package": "acme-steps",
                                "value": "acme_steps:shout"}
    assert entries["build_docker_image"]["package"] == "buildsys"
    assert entries["build_docker_image"]["value"] == "buildsys.steps.docker:build_docker_image"


def test_show_prints_inputs_outputs_and_example(isolated: Path, tmp_path: Path) -> None:
    site = fake_distribution(tmp_path / "site", "acme-steps", {"shout": "acme_steps:shout"},
                             {"acme_steps": PLUGIN})
    r = bs("steps", "show", "shout", cwd=isolated, pythonpath=site)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "shout  (acme-steps: acme_steps, version 1)",
        "Repeat a word loudly.",
        "",
        "aliases:",
        "  acme.steps.shout",
        "",
        "inputs:",
        "  word   string            required",
        "  times  integer | string  default 2",
        "  reserved on every step: id, requires, needs, inputs",
        "",
        "outputs:",
        "  text  any",
        "",
        "example:",
        "  - shout:",
        "      word: hi",
    ]


def test_show_by_prefect_alias_and_as_json(isolated: Path) -> None:
    by_alias = bs("--json", "steps", "show", "prefect_docker.deployments.steps.push_docker_image", cwd=isolated)
    by_name = bs("--json", "steps", "show", "push_docker_image", cwd=isolated)
    assert by_alias.returncode == 0, by_alias.stderr
    assert by_alias.stdout == by_name.stdout
    shown = json.loads(by_alias.stdout)
    assert shown["name"] == "push_docker_image"
    assert shown["package"] == "buildsys"
    assert [o["name"] for o in shown["outputs"]] == ["image_name", "tag", "image", "digest", "additional_tags"]
    inputs = {i["name"]: i for i in shown["inputs"]}
    assert inputs["image_name"]["required"] is True
    assert list(inputs) == ["image_name", "tag", "credentials", "additional_tags", "ignore_cache", "build_backend"]


def test_show_a_project_local_step_file(isolated: Path) -> None:
    (isolated / "my_steps.py").write_text("def stamp(version: str, path: str = 'VERSION'):\n    return {}\n")
    r = bs("--json", "steps", "show", "my_steps.py:stamp", cwd=isolated)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["package"] == "project (import path)"
    assert [(i["name"], i["required"], i["default"]) for i in shown["inputs"]] == [
        ("version", True, None), ("path", False, "VERSION"),
    ]


def test_unknown_step_is_one_clear_error(isolated: Path) -> None:
    r = bs("steps", "show", "no_such_step", cwd=isolated)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (
        "error: unknown step 'no_such_step'\n"
        "  hint: not a built-in step, not provided by an installed plugin and not importable; "
        "`buildsys steps ls` lists the available steps\n"
    )


def test_conflicting_and_broken_plugins(isolated: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "acme-steps", {"shout": "acme_steps:shout"}, {"acme_steps": PLUGIN})
    fake_distribution(site, "other-steps", {"shout": "other_steps:shout", "broken": "broken_steps:nothing"},
                      {"other_steps": PLUGIN, "broken_steps": "raise RuntimeError('boom at import')\n"})

    ls = bs("steps", "ls", cwd=isolated, pythonpath=site)
    assert ls.returncode == 0
    assert ls.stderr == (
        "warning: step name 'shout' is claimed by more than one plugin: "
        "acme-steps (acme_steps:shout) and other-steps (other_steps:shout)\n"
    )

    show = bs("steps", "show", "shout", cwd=isolated, pythonpath=site)
    assert show.returncode == 1
    assert show.stderr.splitlines()[0] == (
        "error: step name 'shout' is claimed by more than one plugin: "
        "acme-steps (acme_steps:shout) and other-steps (other_steps:shout)"
    )

    broken = bs("steps", "show", "broken", cwd=isolated, pythonpath=site)
    assert broken.returncode == 1
    assert broken.stderr.splitlines() == [
        "error: plugin other-steps failed to import step 'broken' (broken_steps:nothing): "
        "RuntimeError: boom at import",
        "  hint: fix or reinstall other-steps; other steps are unaffected",
    ]
    # the broken plugin disables only itself
    assert bs("steps", "show", "git_clone", cwd=isolated, pythonpath=site).returncode == 0


@pytest.mark.parametrize("name", ["git_clone", "build_docker_image", "push_to_gcs", "pull_from_s3"])
def test_every_builtin_of_this_area_shows_an_example(isolated: Path, name: str) -> None:
    r = bs("--json", "steps", "show", name, cwd=isolated)
    assert r.returncode == 0, r.stderr
    example = json.loads(r.stdout)["example"]
    assert f"- {json.loads(r.stdout)['aliases'][0]}:" in example
