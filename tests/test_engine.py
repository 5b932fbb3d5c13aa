"""The engine and its cache: parallel runs, reasons, no-op rebuilds, exact reruns, failure handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from buildsys.cache import Cache
from buildsys.compiled import compile_project
from buildsys.engine import BuildResult, build
from buildsys.project import load_project
from buildsys.reporter import Event

STEPS_PY = '''
import os, time
from pathlib import Path

def write(*, name, text="x", files=(), sleep=0.0, fail=False):
    if sleep:
        time.sleep(sleep)
    if fail:
        raise RuntimeError("boom " + name)
    marker = Path(os.environ["RUN_LOG"])
    with marker.open("a") as fh:
        fh.write(name + "\\n")
    return {"value": name + ":" + text, "started": time.time()}


import threading

_BARRIER = threading.Barrier(2)


def meet(*, name, timeout=60.0):
    _BARRIER.wait(timeout=timeout)  # returns only while the other step is running too
    return {"value": name}
'''


class Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def event(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass

    def of(self, kind: str) -> list[str]:
        return [e.label for e in self.events if e.kind == kind]

    def reasons(self) -> dict[str, str]:
        return {e.label: e.reason for e in self.events if e.kind in ("start", "cached", "skipped")}


@pytest.fixture
def project_dir(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (isolated / "mysteps.py").write_text(STEPS_PY)
    (isolated / "src").mkdir()
    for i in range(3):
        f = isolated / "src" / f"m{i}.py"
        f.write_text(f"x = {i}\n")
        old = time.time() - 60
        os.utime(f, (old, old))
    monkeypatch.setenv("RUN_LOG", str(isolated / "runs.log"))
    return isolated


def ran(root: Path) -> list[str]:
    log = root / "runs.log"
    out = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return out


def run(root: Path, **kw: Any) -> tuple[BuildResult, Collect]:
    rep = Collect()
    compiled = compile_project(load_project(root / "prefect.yaml"))
    result = build(compiled.project, compiled.graph, compiled.steps, reporter=rep, **kw)
    return result, rep


DIAMOND = """
build:
  - mysteps.py:write: {id: a, name: a, inputs: [src/m0.py]}
  - mysteps.py:write: {id: b, name: b, text: "{{ a.value }}", inputs: [src/m1.py], needs: [a]}
  - mysteps.py:write: {id: c, name: c, text: "{{ a.value }}", inputs: ["src/m2.py"], needs: [a]}
  - mysteps.py:write: {id: d, name: d, text: "{{ b.value }}+{{ c.value }}", needs: [b, c]}
deployments:
  - {name: one, entrypoint: f.py:f}
  - {name: two, entrypoint: f.py:f}
"""


def test_first_build_runs_everything_once_even_when_shared_by_deployments(project_dir: Path) -> None:
    (project_dir / "prefect.yaml").write_text(DIAMOND)
    result, rep = run(project_dir)
    assert result.ok
    assert sorted(ran(project_dir)) == ["a", "b", "c", "d"]  # shared by two deployments, run once
    assert rep.reasons() == {"a": "no previous run", "b": "no previous run", "c": "no previous run", "d": "no previous run"}
    assert result.namespace("one")["d"]["value"] == "d:b:a:x+c:a:x"


def test_noop_rebuild_runs_nothing_and_reads_no_file(project_dir: Path) -> None:
    (project_dir / "prefect.yaml").write_text(DIAMOND)
    run(project_dir)
    ran(project_dir)
    result, rep = run(project_dir)
    assert result.ok and ran(project_dir) == []
    assert sorted(rep.of("cached")) == ["a", "b", "c", "d"]
    cache = Cache(project_dir)
    for i in range(3):
        assert cache.digest(f"src/m{i}.py") is not None
    assert cache.reads == 0  # known by stat data: never read again
    cache.close()


def test_touching_one_file_reruns_exactly_its_dependents(project_dir: Path) -> None:
    (project_dir / "prefect.yaml").write_text(DIAMOND)
    run(project_dir)
    ran(project_dir)
    (project_dir / "src" / "m1.py").write_text("x = 'changed'\n")
    _result, rep = run(project_dir)
    assert ran(project_dir) == ["b", "d"]  # b reads the file; d depends on b; a and c do not
    assert rep.reasons()["b"] == "input file src/m1.py changed"
    assert rep.reasons()["d"] == "upstream step b changed"
    assert rep.reasons()["a"] == rep.reasons()["c"] == "unchanged"


def test_changed_output_propagates_downstream(project_dir: Path) -> None:
    (project_dir / "prefect.yaml").write_text(DIAMOND)
    run(project_dir)
    ran(project_dir)
    (project_dir / "prefect.yaml").write_text(DIAMOND.replace("{id: a, name: a,", "{id: a, name: a, text: y,"))
    _result, rep = run(project_dir)
    assert sorted(ran(project_dir)) == ["a", "b", "c", "d"]
    assert rep.reasons()["a"] == "inputs changed: text"
    assert rep.reasons()["b"] in ("inputs changed", "upstream step a changed") or "upstream step a changed" in rep.reasons()["b"]


def test_independent_steps_run_in_parallel(project_dir: Path) -> None:
    """Each step waits at a barrier for the other: the build completes only if both run at once."""
    (project_dir / "prefect.yaml").write_text(
        """
build:
  - mysteps.py:meet: {id: a, name: a, needs: []}
  - mysteps.py:meet: {id: b, name: b, needs: []}
"""
    )
    result, _ = run(project_dir, jobs=2)
    assert {r.label: r.status for r in result.results.values()} == {"a": "ran", "b": "ran"}


def test_one_job_runs_one_step_at_a_time(project_dir: Path) -> None:
    """The barrier can fail: with -j 1 the first step waits alone and gives up."""
    (project_dir / "prefect.yaml").write_text(
        """
build:
  - mysteps.py:meet: {id: a, name: a, timeout: 0.5, needs: []}
  - mysteps.py:meet: {id: b, name: b, timeout: 0.5, needs: []}
"""
    )
    result, _ = run(project_dir, jobs=1, keep_going=True)
    assert [r.status for r in result.results.values()] == ["failed", "failed"]
    assert all("BrokenBarrierError" in r.error for r in result.results.values())


def test_failure_stops_dependents_and_keep_going_runs_the_rest(project_dir: Path) -> None:
    (project_dir / "prefect.yaml").write_text(
        """
build:
  - mysteps.py:write: {id: bad, name: bad, fail: true, needs: []}
  - mysteps.py:write: {id: after, name: after, needs: [bad]}
  - mysteps.py:write: {id: other, name: other, sleep: 0.2, needs: []}
"""
    )
    result, rep = run(project_dir, jobs=1, keep_going=True)
    statuses = {r.label: r.status for r in result.results.values()}
    assert statuses == {"bad": "failed", "after": "skipped", "other": "ran"}
    assert rep.reasons()["after"] == "upstream step bad failed"
    assert "RuntimeError: boom bad" in result.results[next(k for k, r in result.results.items() if r.label == "bad")].error


def test_no_cache_and_cache_cleared_reasons(project_dir: Path) -> None:
    (project_dir / "prefect.yaml").write_text("build:\n  - mysteps.py:write: {id: a, name: a}\n")
    run(project_dir)
    _, rep = run(project_dir, use_cache=False)
    assert rep.reasons() == {"a": "caching disabled (--no-cache)"}


def test_step_logs_are_kept_and_env_secrets_masked(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "hunter2-secret")
    (project_dir / "prefect.yaml").write_text(
        "build:\n  - run_shell_script:\n      id: s\n      script: echo token={{ $API_TOKEN }}\n"
    )
    result, rep = run(project_dir)
    assert result.ok
    log = (project_dir / ".buildsys" / "logs" / "s.log").read_text()
    assert log == "token=****\n"
    db = (project_dir / ".buildsys" / "cache.db").read_bytes()
    assert b"hunter2-secret" not in db
    assert [e.text for e in rep.events if e.kind == "log"] == ["token=****"]


def test_a_silent_step_leaves_no_log_not_even_an_old_one(project_dir: Path) -> None:
    """Log files are opened when a step first prints: one that prints nothing has none."""
    (project_dir / "prefect.yaml").write_text("build:\n  - mysteps.py:write: {id: a, name: a}\n")
    logs = project_dir / ".buildsys" / "logs"
    logs.mkdir(parents=True)
    (logs / "a.log").write_text("an earlier run's output\n")
    result, _ = run(project_dir)
    assert result.ok
    assert not (logs / "a.log").exists()


def test_unknown_step_and_bad_input_fail_before_anything_runs(project_dir: Path) -> None:
    from buildsys.errors import ProjectError

    (project_dir / "prefect.yaml").write_text(
        "build:\n  - mysteps.py:write: {id: a, name: a}\n  - run_shell_script: {scirpt: echo}\n  - no.such.step: {}\n"
    )
    with pytest.raises(ProjectError) as info:
        run(project_dir)
    text = [d.render() for d in info.value.diagnostics()]
    assert any("has no input 'scirpt'" in t and "did you mean 'script'?" in t for t in text)
    assert any("unknown step 'no.such.step'" in t for t in text)
    assert ran(project_dir) == []


def test_concurrent_builds_do_not_corrupt_the_cache(project_dir: Path) -> None:
    import subprocess
    import sys

    (project_dir / "prefect.yaml").write_text(DIAMOND)
    procs = [
        subprocess.Popen([sys.executable, "-m", "buildsys", "build", "--json"], cwd=project_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    _result, rep = run(project_dir)
    assert sorted(rep.of("cached")) == ["a", "b", "c", "d"]
    for out, _ in outs:
        events = [json.loads(line) for line in out.splitlines()]
        assert events[-1]["event"] == "summary"


def test_requires_never_installs_by_default_and_prints_the_command(project_dir: Path) -> None:
    from buildsys.errors import ProjectError

    (project_dir / "prefect.yaml").write_text(
        "build:\n  - acme_steps.deploy.ship:\n      requires: acme-steps>=1.2\n      target: prod\n"
    )
    with pytest.raises(ProjectError) as info:
        run(project_dir)
    (d,) = info.value.diagnostics()
    assert d.message == "unknown step 'acme_steps.deploy.ship'"
    assert d.hint == "it is not installed; install it with: pip install 'acme-steps>=1.2' (or pass --install-requires)"


def test_one_decision_serves_the_build_plan_outputs_and_cache_explain(project_dir: Path) -> None:
    """Looking ahead (explain, plan's outputs) says exactly what the build then does, and why."""
    from buildsys.engine import cached_namespace, explain_step, foresee

    (project_dir / "prefect.yaml").write_text(DIAMOND)
    run(project_dir)
    ran(project_dir)
    (project_dir / "src" / "m1.py").write_text("x = 'changed'\n")
    project = load_project(project_dir / "prefect.yaml")
    _graph, decisions = foresee(project)
    assert {k: (d.state, d.reason) for k, d in zip("abcd", decisions.values(), strict=True)} == {
        "a": ("cached", "unchanged"),
        "b": ("run", "input file src/m1.py changed"),
        "c": ("cached", "unchanged"),
        "d": ("blocked", "upstream step b would run first"),
    }
    assert explain_step(project, "b") == "would run: input file src/m1.py changed"
    assert explain_step(project, "c") == "cached: unchanged"
    namespace, pending = cached_namespace(project, "one")
    assert pending == {"b", "d"} and namespace["c"]["value"] == "c:a:x"
    _result, rep = run(project_dir)
    assert rep.reasons() == {"a": "unchanged", "b": "input file src/m1.py changed", "c": "unchanged", "d": "upstream step b changed"}
    assert explain_step(project, "d") == "cached: unchanged"
    assert cached_namespace(project, "one")[1] == set()


def test_a_build_of_plain_steps_imports_neither_logging_nor_concurrent_futures(isolated: Path) -> None:
    """The steps run on the engine's own threads and a step's logger is made when asked for: a
    build (first, then after a change) does not import `logging` (~8 ms with `traceback`)."""
    (isolated / "prefect.yaml").write_text(
        'build:\n  - mysteps.py:emit:\n      id: a\n      word: hi\n      inputs: ["src/*"]\n')
    (isolated / "mysteps.py").write_text("def emit(word: str) -> dict[str, str]:\n    return {'word': word}\n")
    (isolated / "src").mkdir()
    (isolated / "src" / "a.txt").write_text("a\n")
    code = ("import sys\nfrom buildsys.cli import main\ntry:\n    main(['build', '--json'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('logging', 'concurrent.futures', 'traceback') if m in sys.modules))")
    for change in ("", "b\n"):
        if change:
            (isolated / "src" / "a.txt").write_text(change)
        r = subprocess.run([sys.executable, "-c", code], cwd=isolated, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1] == "[]"
        assert '"ran": 1' in r.stdout.splitlines()[-2]
