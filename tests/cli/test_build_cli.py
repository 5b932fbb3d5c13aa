"""The CLI contract for validate / graph / build / push / pull / cache: whole outputs and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = """\
name: cli-demo
build:
  - run_shell_script:
      id: hello
      script: echo hello
      stream_output: false
  - run_shell_script:
      id: shout
      script: echo {{ hello.stdout }}-loud
      inputs: [src/app.py]
deployments:
  - name: web
    entrypoint: src/app.py:main
  - name: batch
    entrypoint: src/app.py:main
    build:
      - run_shell_script:
          id: own
          script: echo batch
"""


def bs(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buildsys", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.fixture
def proj(isolated: Path) -> Path:
    (isolated / "prefect.yaml").write_text(PROJECT)
    (isolated / "src").mkdir()
    app = isolated / "src" / "app.py"
    app.write_text("def main():\n    print('hi')\n")
    old = time.time() - 60
    os.utime(app, (old, old))
    return isolated


def test_validate_ok_and_with_problems(proj: Path) -> None:
    r = bs("validate", cwd=proj)
    assert (r.returncode, r.stdout, r.stderr) == (0, "prefect.yaml: valid — 2 deployment(s), 3 step(s)\n", "")
    (proj / "bad.yaml").write_text("deployments:\n  - name: a\n    entrypoint: src/app.py:main\n    tgas: [x]\n    work_pool: {name: 5}\n")
    r = bs("validate", "-f", "bad.yaml", cwd=proj)
    assert r.returncode == 1
    assert r.stderr == (
        "bad.yaml:4:5: warning: unknown key 'tgas' (ignored)\n  at deployments[a].tgas\n  hint: did you mean 'tags'?\n"
        "bad.yaml:5:17: error: expected string or null, got integer 5\n  at deployments[a].work_pool.name\n"
        '  hint: quote it: "5" (YAML reads 5 as an integer)\n'
        "bad.yaml: invalid (1 error, 1 warning)\n"
    )
    r = bs("validate", "--strict", "-f", "bad.yaml", "--json", cwd=proj)
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["valid"] is False
    assert [p["severity"] for p in out["problems"]] == ["error", "error"]


def test_graph_formats(proj: Path) -> None:
    r = bs("graph", cwd=proj)
    assert r.returncode == 0
    assert r.stdout == (
        "hello (build: run_shell_script)  [web]\n"
        "shout (build: run_shell_script) ← hello  [web]\n"
        "own (build: run_shell_script)  [batch]\n"
    )
    data = json.loads(bs("graph", "--format", "json", cwd=proj).stdout)
    assert [n["label"] for n in data["nodes"]] == ["hello", "shout", "own"]
    assert bs("graph", "--format", "dot", cwd=proj).stdout.startswith("digraph buildsys {")
    assert bs("graph", "--format", "mermaid", cwd=proj).stdout.startswith("flowchart LR")


def test_build_then_noop_then_select_and_explain(proj: Path) -> None:
    r = bs("build", cwd=proj)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "build ok: 3 ran, 0 cached, 0 failed, 0 not run" in r.stderr
    r = bs("build", "--explain", "-j", "1", cwd=proj)
    assert r.stderr.splitlines() == [
        "= hello  cached (unchanged)",
        "= shout  cached (unchanged)",
        "= own  cached (unchanged)",
        "build ok: 0 ran, 3 cached, 0 failed, 0 not run",
    ]
    (proj / "src" / "app.py").write_text("def main():\n    print('changed')\n")
    r = bs("build", "-d", "web", "--explain", "--json", cwd=proj)
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(e["event"], e.get("step"), e.get("reason")) for e in events if e["event"] != "log"] == [
        ("cached", "hello", "unchanged"),
        ("start", "shout", "input file src/app.py changed"),
        ("done", "shout", "input file src/app.py changed"),
        ("summary", None, None),
    ]
    assert r.stderr == ""
    r = bs("cache", "explain", "shout", cwd=proj)
    assert r.stdout == "shout: cached: unchanged\n"


def test_failed_step_exit_code_and_message(proj: Path) -> None:
    (proj / "prefect.yaml").write_text("build:\n  - run_shell_script:\n      id: boom\n      script: ls /definitely/not/here\n")
    r = bs("build", cwd=proj)
    assert r.returncode == 1
    assert "✗ boom  failed: `ls /definitely/not/here` exited with status 2" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_deployment_and_missing_file_errors(proj: Path) -> None:
    r = bs("build", "-d", "wbe", cwd=proj)
    assert (r.returncode, r.stderr) == (1, "error: no deployment matches 'wbe'\n  hint: did you mean 'web'?\n")
    r = bs("build", "-f", "missing.yaml", cwd=proj)
    assert r.returncode == 1
    assert r.stderr == "error: no project file at missing.yaml\n  hint: run `buildsys init` to create one, or pass -f PATH\n"


def test_push_runs_build_then_push(proj: Path) -> None:
    (proj / "prefect.yaml").write_text(
        "build:\n  - run_shell_script: {id: b, script: echo built}\npush:\n  - run_shell_script: {id: p, script: 'echo pushed {{ b.stdout }}'}\n"
    )
    r = bs("push", "-v", cwd=proj)
    assert r.returncode == 0, r.stderr
    assert "  p │ pushed built" in r.stderr.splitlines()


def test_pull_runs_pull_steps_like_a_worker(proj: Path) -> None:
    (proj / "sub").mkdir()
    (proj / "prefect.yaml").write_text(
        "pull:\n  - set_working_directory: {id: wd, directory: sub}\n  - run_shell_script: {id: where, script: pwd}\n"
        "deployments:\n  - name: d\n    entrypoint: src/app.py:main\n"
    )
    r = bs("pull", "-d", "d", "--json", cwd=proj)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["outputs"]["wd"]["directory"] == str((proj / "sub").resolve())
    assert out["outputs"]["where"]["stdout"] == str((proj / "sub").resolve())


def test_cycle_is_an_error_printing_the_cycle(proj: Path) -> None:
    (proj / "prefect.yaml").write_text(
        "build:\n  - run_shell_script: {id: a, script: echo, needs: [b]}\n  - run_shell_script: {id: b, script: echo, needs: [a]}\n"
    )
    r = bs("graph", cwd=proj)
    assert r.returncode == 1
    assert "needs refers to step 'b', which runs after this step" in r.stderr


def test_help_is_fast_and_lists_commands(proj: Path) -> None:
    r = bs("--help", cwd=proj)
    assert r.returncode == 0
    for cmd in ("validate", "graph", "build", "push", "pull", "plan", "apply", "worker", "server", "cache"):
        assert f"  {cmd} " in r.stdout


def test_pull_needs_the_build_outputs_it_uses(proj: Path) -> None:
    (proj / "prefect.yaml").write_text(
        "build:\n  - run_shell_script: {id: tag, script: echo v1}\n"
        "pull:\n  - run_shell_script: {id: show, script: 'echo {{ tag.stdout }}'}\n"
        "deployments:\n  - name: d\n    entrypoint: src/app.py:main\n"
    )
    r = bs("pull", "-d", "d", cwd=proj)
    assert (r.returncode, r.stderr) == (
        1,
        "prefect.yaml:4:5: error: {{ tag.stdout }} uses the output of build step 'tag', which has no result for "
        "the current inputs (it never ran, or its last run failed)\n  at pull[0: show]\n"
        "  hint: run `buildsys build` (or `buildsys push`) first\n",
    )
    assert bs("build", cwd=proj).returncode == 0
    r = bs("pull", "-d", "d", "--json", cwd=proj)
    assert json.loads(r.stdout)["outputs"]["show"]["stdout"] == "v1"


def test_validate_flags_a_flat_name_no_step_outputs(proj: Path) -> None:
    (proj / "prefect.yaml").write_text(
        "pull:\n  - git_clone: {repository: 'https://example.com/r.git'}\n"
        "  - run_shell_script: {script: ls, directory: '{{ clone-output }}'}\n"
        "deployments:\n  - name: d\n    entrypoint: src/app.py:main\n"
    )
    r = bs("validate", cwd=proj)
    assert r.returncode == 1
    assert r.stderr.splitlines()[:3] == [
        "prefect.yaml:3:48: error: {{ clone-output }} does not match any step id or output before it "
        "(Prefect would silently drop the value)",
        "  at pull[1: run_shell_script].directory",
        "  hint: outputs here: directory",
    ]


DRY = """\
build:
  - run_shell_script: {id: first, script: cat a.txt, inputs: [a.txt], stream_output: false}
  - run_shell_script: {id: second, script: "echo {{ first.stdout }}", stream_output: false}
  - run_shell_script: {id: other, script: echo other, needs: [], stream_output: false}
deployments:
  - {name: d, entrypoint: f.py:f}
"""


def test_build_dry_run_says_what_would_run_and_why_without_running(isolated: Path) -> None:
    (isolated / "prefect.yaml").write_text(DRY)
    (isolated / "a.txt").write_text("1\n")
    first = bs("build", "-n", cwd=isolated)
    assert (first.returncode, first.stdout) == (0, (
        "▶ first  would run (no previous run)\n"
        "· second  waits (upstream step first would run first)\n"
        "▶ other  would run (no previous run)\n"
        "dry run: 2 would run, 0 cached, 1 after a step that would run, 0 error(s); nothing was run\n"
    ))
    assert bs("cache", "explain", "first", cwd=isolated).stdout == "first: would run: no previous run\n"  # nothing ran
    assert bs("build", cwd=isolated).returncode == 0
    (isolated / "a.txt").write_text("2\n")
    r = bs("--json", "build", "--dry-run", cwd=isolated)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "dry_run": True, "ok": True,
        "steps": [{"step": "first", "decision": "run", "reason": "input file a.txt changed"},
                  {"step": "second", "decision": "blocked", "reason": "upstream step first would run first"},
                  {"step": "other", "decision": "cached", "reason": "unchanged"}],
        "counts": {"cached": 1, "run": 1, "blocked": 1, "error": 0},
    }
    after = bs("build", "--explain", cwd=isolated)  # the dry run changed nothing: the build still sees the change
    assert "▶ first  (input file a.txt changed)" in after.stderr
