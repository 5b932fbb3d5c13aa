"""`buildsys graph --upstream/--downstream STEP`: the part of the graph around a step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
