"""`buildsys graph --upstream/--downstream STEP`: the part of the graph around a step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys.cli import main

PROJECT = """\
build:
  - run_shell_script: {id: a, script: echo a}
  - run_shell_script: {id: b, script: "echo {{ a.stdout }}"}
  - run_shell_script: {id: c, script: echo c, needs: [b]}
  - run_shell_script: {id: d, script: echo d, needs: []}
deployments:
  - {name: x, entrypoint: f.py:f}
"""


def graph(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buildsys", "graph", *args], cwd=cwd, capture_output=True,
                          text=True, env=dict(os.environ), timeout=120)


def test_graph_around_a_step(isolated: Path) -> None:
    (isolated / "prefect.yaml").write_text(PROJECT)
    line = {k: f"{k} (build: run_shell_script)" + (f" ← {dep}" if dep else "") + "  [x]"
            for k, dep in (("a", ""), ("b", "a"), ("c", "b"), ("d", ""))}
    assert graph("--upstream", "b", cwd=isolated).stdout.splitlines() == [line["a"], line["b"]]
    alone = "b (build: run_shell_script)  [x]"  # its edge from a, which is left out, is dropped
    assert graph("--downstream", "b", cwd=isolated).stdout.splitlines() == [alone, line["c"]]
    both = graph("--upstream", "d", "--downstream", "b", cwd=isolated)
    assert both.stdout.splitlines() == [alone, line["c"], line["d"]]
    unknown = graph("--upstream", "bb", cwd=isolated)
    assert unknown.returncode == 1
    assert unknown.stderr == "error: no step 'bb' in the graph\n  hint: did you mean 'b'?\n"


def bs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)


def test_output_prints_a_build_output_from_the_cache(isolated: Path) -> None:
    (isolated / "prefect.yaml").write_text(PROJECT)
    before = bs("output", "b.stdout", cwd=isolated)
    assert (before.returncode, before.stderr) == (1, (
        "error: step 'b' has no outputs for its current inputs (upstream step a would run first)\n"
        "  hint: run `buildsys build` (or `push`) first\n"))
    assert bs("build", cwd=isolated).returncode == 0
    assert bs("output", "b.stdout", cwd=isolated).stdout == "a\n"
    assert bs("output", "a", cwd=isolated).stdout == '{\n  "stdout": "a",\n  "stderr": ""\n}\n'
    typo = bs("output", "a.stdot", cwd=isolated)
    assert (typo.returncode, typo.stderr) == (1, "error: step 'a' has no output 'stdot'\n  hint: did you mean 'stdout'?\n")


PULLS = PROJECT + """\
  - name: y
    entrypoint: f.py:f
    pull:
      - prefect.deployments.steps.git_clone: {repository: "https://example.com/r.git"}
      - prefect.deployments.steps.pip_install_requirements: {requirements_file: r.txt}
"""


def test_graph_shows_each_steps_cache_state_and_the_pull_steps(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (isolated / "prefect.yaml").write_text(PULLS)

    def run(*args: str) -> str:
        try:
            main(list(args))
        except SystemExit as exc:
            assert not exc.code
        return capsys.readouterr().out

    assert run("graph", "--cache", "--pull").splitlines() == [
        "a (build: run_shell_script)  [x, y]  — would run: no previous run",
        "b (build: run_shell_script) ← a  [x, y]  — would run: upstream step a would run first",
        "c (build: run_shell_script) ← b  [x, y]  — would run: upstream step b would run first",
        "d (build: run_shell_script)  [x, y]  — would run: no previous run",
        "",
        "pull steps (run by the worker where the flow runs, never cached):",
        "  x: set_working_directory#0 (prefect.deployments.steps.set_working_directory)  (generated default)",
        "  y: git_clone#0 (prefect.deployments.steps.git_clone) → pip_install_requirements#1 "
        "(prefect.deployments.steps.pip_install_requirements)",
    ]
    run("build")
    (isolated / "prefect.yaml").write_text(PULLS.replace("echo d", "echo dd"))
    assert run("graph", "--cache", "--upstream", "b", "-d", "y").splitlines() == [
        "a (build: run_shell_script)  [y]  — cached",
        "b (build: run_shell_script) ← a  [y]  — cached",
    ]
    data = json.loads(run("--json", "graph", "--cache", "--pull", "-d", "y"))
    assert {n["label"]: n["cache"]["state"] for n in data["nodes"]} == {"a": "cached", "b": "cached", "c": "cached", "d": "run"}
    assert data["pull"] == {"y": [
        {"label": "git_clone#0", "step": "prefect.deployments.steps.git_clone", "generated": False},
        {"label": "pip_install_requirements#1", "step": "prefect.deployments.steps.pip_install_requirements", "generated": False},
    ]}
    dot = run("graph", "--format", "dot", "--pull", "-d", "y")
    assert 'pull0_0 -> pull0_1 [style=dashed];' in dot
    assert "cached" not in dot  # the cache state only when asked for
