"""The in-run runtime, run for real as `python -m buildsys.runtime` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from buildsys.runtime import CONTROL_PREFIX, RunContext

HEAVY = ("yaml", "jsonschema", "networkx", "click", "rich", "httpx", "docker", "kubernetes", "pydantic")


def run_runtime(context: dict[str, Any], cwd: Path, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = cwd / "context.json"
    path.write_text(json.dumps(context))
    return subprocess.run(
        [sys.executable, "-m", "buildsys.runtime", "--context", str(path)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**_base_env(), **(env or {})},
    )


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "BUILDSYS_RUN_CONTEXT"}


def controls(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line[len(CONTROL_PREFIX) :]) for line in stdout.splitlines() if line.startswith(CONTROL_PREFIX)]


def output(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if not line.startswith(CONTROL_PREFIX)]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_file_entrypoint_runs_with_parameters(tmp_path: Path) -> None:
    write(
        tmp_path / "flows" / "hello.py",
        """
        def hello(name: str, times: int = 1) -> str:
            for _ in range(times):
                print(f"hello {name}")
            return name.upper()
        """,
    )
    result = run_runtime({"entrypoint": "flows/hello.py:hello", "parameters": {"name": "ada", "times": 2}}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert output(result.stdout) == ["hello ada", "hello ada"]
    events = controls(result.stdout)
    assert [e["event"] for e in events] == ["running", "completed"]
    assert events[1]["result"] == "'ADA'"
    assert result.stderr == ""


def test_module_entrypoint_and_prefect_flow_object(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "__init__.py", "")
    write(
        tmp_path / "pkg" / "flows.py",
        """
        class Flow:
            def __init__(self, fn):
                self.fn = fn
            def __call__(self, *a, **k):
                raise AssertionError("the runtime must call .fn, not the flow object")

        def flow(fn):
            return Flow(fn)

        @flow
        def etl(n: int) -> int:
            print("etl", n * 2)
            return n * 2
        """,
    )
    result = run_runtime({"entrypoint": "pkg.flows:etl", "parameters": {"n": 21}}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert output(result.stdout) == ["etl 42"]
    assert controls(result.stdout)[-1] == {"event": "completed", "result": "42"}


def test_async_flow_is_awaited(tmp_path: Path) -> None:
    write(
        tmp_path / "flow.py",
        """
        import asyncio
        async def main():
            await asyncio.sleep(0)
            print("async done")
        """,
    )
    result = run_runtime({"entrypoint": "flow.py:main"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert output(result.stdout) == ["async done"]


def test_flow_failure_exits_1_with_traceback(tmp_path: Path) -> None:
    write(
        tmp_path / "flow.py",
        """
        def broken():
            print("about to fail")
            raise ValueError("the data is bad")
        """,
    )
    result = run_runtime({"entrypoint": "flow.py:broken", "run": {"name": "brave-otter"}}, tmp_path)
    assert result.returncode == 1
    assert output(result.stdout) == ["about to fail"]
    assert [e["event"] for e in controls(result.stdout)] == ["running"]
    lines = result.stderr.splitlines()
    assert lines[0] == "Flow run brave-otter failed:"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: the data is bad"


def test_pull_steps_namespace_and_final_directory(tmp_path: Path) -> None:
    project = tmp_path / "project"
    write(project / "flows" / "where.py", "import os\ndef where(): print('cwd', os.getcwd())\n")
    write(
        tmp_path / "mysteps.py",
        """
        def locate(path):
            return {"directory": path, "label": "found " + path}

        def echo(message, also):
            print("echo:", message, "|", also)
            return {"echoed": message}
        """,
    )
    context = {
        "entrypoint": "flows/where.py:where",
        "pull_steps": [
            {"mysteps.locate": {"id": "loc", "path": str(project)}},
            {"mysteps.echo": {"message": "{{ loc.label }}", "also": "{{ $GREETING }} {{ prefect.variables.who }}"}},
        ],
        "variables": {"who": "team"},
    }
    result = run_runtime(context, tmp_path, env={"GREETING": "hi", "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert output(result.stdout) == [
        "Running pull step pull[0: loc]",
        "Running pull step pull[1: mysteps.echo]",
        f"echo: found {project} | hi team",
        f"cwd {project}",
    ]


def test_set_working_directory_moves_later_steps(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    write(sub / "flow.py", "def f(): print('ran')\n")
    context = {
        "entrypoint": "flow.py:f",
        "pull_steps": [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(sub)}},
            {"run_shell_script": {"id": "pwd", "script": "pwd", "stream_output": False}},
        ],
    }
    result = run_runtime(context, tmp_path)
    assert result.returncode == 0, result.stderr
    assert output(result.stdout)[-1] == "ran"


def test_pull_step_failure_exits_3_before_the_flow(tmp_path: Path) -> None:
    write(tmp_path / "flow.py", "def f(): print('must not run')\n")
    context = {
        "entrypoint": "flow.py:f",
        "pull_steps": [{"run_shell_script": {"script": "sh -c 'exit 7'"}}],
    }
    result = run_runtime(context, tmp_path)
    assert result.returncode == 3
    assert controls(result.stdout) == []
    assert "must not run" not in result.stdout
    assert result.stderr == (
        "buildsys runtime: pull step pull[0: run_shell_script] failed: `sh -c 'exit 7'` exited with status 7\n"
    )


def test_unresolved_placeholder_in_a_pull_step_is_a_pull_failure(tmp_path: Path) -> None:
    write(tmp_path / "flow.py", "def f(): pass\n")
    context = {
        "entrypoint": "flow.py:f",
        "pull_steps": [{"run_shell_script": {"script": "echo {{ clone.directory }}"}}],
    }
    result = run_runtime(context, tmp_path)
    assert result.returncode == 3
    assert result.stderr.startswith(
        "buildsys runtime: pull step pull[0: run_shell_script] failed: {{ clone.directory }} refers to step 'clone', "
        "which does not exist here"
    )


def test_missing_entrypoint_exits_4(tmp_path: Path) -> None:
    write(tmp_path / "flow.py", "def f(): pass\n")
    missing_file = run_runtime({"entrypoint": "nope.py:f"}, tmp_path)
    assert missing_file.returncode == 4
    assert missing_file.stderr == f"buildsys runtime: entrypoint file nope.py does not exist in {tmp_path}\n"
    missing_attr = run_runtime({"entrypoint": "flow.py:g"}, tmp_path)
    assert missing_attr.returncode == 4
    assert missing_attr.stderr == "buildsys runtime: entrypoint 'flow.py:g': 'flow.py' has no attribute 'g'\n"


def test_invalid_context_exits_2(tmp_path: Path) -> None:
    result = run_runtime({"parameters": {}}, tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "buildsys runtime: the run context has no valid entrypoint (got None; expected "
        "'path/to/file.py:function', 'package.module:function' or 'package.module.function')\n"
    )
    nothing = subprocess.run(
        [sys.executable, "-m", "buildsys.runtime"], capture_output=True, text=True, env=_base_env(), cwd=tmp_path
    )
    assert nothing.returncode == 2
    assert nothing.stderr == "buildsys runtime: no run context: pass --context FILE or set BUILDSYS_RUN_CONTEXT\n"


def test_context_from_environment_inline_json(tmp_path: Path) -> None:
    write(tmp_path / "flow.py", "def f(x): print('x =', x)\n")
    context = RunContext(entrypoint="flow.py:f", parameters={"x": [1, 2]}).to_dict()
    result = subprocess.run(
        [sys.executable, "-m", "buildsys.runtime"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**_base_env(), "BUILDSYS_RUN_CONTEXT": json.dumps(context)},
    )
    assert result.returncode == 0, result.stderr
    assert output(result.stdout) == ["x = [1, 2]"]


def test_runtime_imports_no_heavy_dependencies(tmp_path: Path) -> None:
    write(tmp_path / "flow.py", "def f(): pass\n")
    context = {"entrypoint": "flow.py:f", "pull_steps": [{"set_working_directory": {"directory": str(tmp_path)}}]}
    (tmp_path / "context.json").write_text(json.dumps(context))
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['buildsys.runtime', '--context', 'context.json']\n"
        "try:\n    runpy.run_module('buildsys.runtime', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=_base_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_unknown_step_with_requires_is_not_installed_but_explained(tmp_path: Path) -> None:
    write(tmp_path / "flow.py", "def f(): pass\n")
    context = {
        "entrypoint": "flow.py:f",
        "pull_steps": [{"prefect_foo.steps.pull_thing": {"requires": "prefect-foo>=1", "x": 1}}],
    }
    result = run_runtime(context, tmp_path)
    assert result.returncode == 3
    assert result.stderr.startswith(
        "buildsys runtime: pull step pull[0: prefect_foo.steps.pull_thing] failed: unknown step "
        "'prefect_foo.steps.pull_thing' (hint: it is not installed; install it with: pip install 'prefect-foo>=1'"
    )


def test_control_lines_are_read_as_json_not_searched(capsys: pytest.CaptureFixture[str]) -> None:
    from buildsys.runtime import control, control_event

    control("completed", result='"engine" and "running" in a result')
    line = capsys.readouterr().out.rstrip("\n")
    assert control_event(line[len(CONTROL_PREFIX) :]) == "completed"
    assert [control_event(p) for p in ('{"event": "engine"}', 'a flow printed "engine"', "[1]", '{"event": 1}')] == [
        "engine", None, None, None,
    ]
