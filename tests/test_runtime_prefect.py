"""The runtime's side of Prefect flows that needs no API: which flows go to Prefect's engine, and the
clear failures when the run's Python cannot run them (Prefect missing, or a version we refuse)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

from buildsys.infra.docker import prepare_runtime_dir
from buildsys.prefectengine import version_problem
from tests.test_runtime import controls, output, run_runtime, write

PREFECT_FLOW = """
from prefect import flow

@flow
def hello(name: str = "world"):
    print("hello", name)
"""


def fake_prefect(root: Path, version: str) -> Path:
    """A package named prefect with the given distribution version whose @flow makes a
    ``prefect.flows.Flow`` (what the runtime recognises), without any engine."""
    write(root / f"prefect-{version}.dist-info" / "METADATA", f"Metadata-Version: 2.1\nName: prefect\nVersion: {version}\n")
    write(
        root / "prefect" / "flows.py",
        "class Flow:\n    def __init__(self, fn):\n        self.fn = fn\n    def __call__(self, *a, **k):\n"
        "        raise AssertionError('called without an engine')\n",
    )
    write(root / "prefect" / "__init__.py", "from prefect.flows import Flow\n\ndef flow(fn):\n    return Flow(fn)\n")
    return root


def test_version_problem_accepts_3x_only() -> None:
    assert version_problem("3.9.1") is None
    assert version_problem("3.0.0rc1") is None
    assert version_problem("2.20.3") == (
        "prefect 2.20.3 is installed, but buildsys starts Prefect 3.x's engine (its API changed between major versions)"
    )
    assert version_problem("4.0.0") is not None


def test_module_path_entrypoint_runs_in_the_stdlib_runtime(tmp_path: Path) -> None:
    write(tmp_path / "flows" / "__init__.py", "")
    write(tmp_path / "flows" / "plain.py", "def plain(n: int = 1):\n    print('plain', n)\n")
    result = run_runtime({"entrypoint": "flows.plain.plain", "parameters": {"n": 3}}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert output(result.stdout) == ["plain 3"]
    assert [c["event"] for c in controls(result.stdout)] == ["running", "completed"]


def test_prefect_flow_without_prefect_names_the_interpreter_and_the_fix(tmp_path: Path) -> None:
    # a Python without prefect (a fresh venv) that runs buildsys's runtime from a copy, as an image would
    env_dir = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    runtime = prepare_runtime_dir(tmp_path / "runtime")
    write(tmp_path / "flows" / "hello.py", PREFECT_FLOW)
    (tmp_path / "context.json").write_text('{"entrypoint": "flows/hello.py:hello"}')
    result = subprocess.run(
        [str(python), "-m", "buildsys.runtime", "--context", "context.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(runtime), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 5
    version = subprocess.run([str(python), "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True)
    assert result.stderr == (
        "buildsys runtime: the flow 'flows/hello.py:hello' imports prefect, but prefect is not installed for "
        f"the run's Python {python} (Python {version.stdout.strip()}); install it there (`{python} -m pip install "
        "'prefect>=3,<4'`), add it to the image, or set the job variable `command` to an interpreter that has it\n"
    )


def test_prefect_2_is_refused_at_run_start_naming_both_versions(tmp_path: Path) -> None:
    fake = fake_prefect(tmp_path / "site", "2.20.3")
    write(tmp_path / "flows" / "hello.py", PREFECT_FLOW)
    result = run_runtime(
        {"entrypoint": "flows/hello.py:hello"},
        tmp_path,
        env={"PYTHONPATH": str(fake), "PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT__FLOW_RUN_ID": "x"},
    )
    assert result.returncode == 5
    assert result.stderr == (
        "buildsys runtime: prefect 2.20.3 is installed, but buildsys starts Prefect 3.x's engine (its API changed "
        f"between major versions); the run's interpreter is {sys.executable}\n"
    )
    assert controls(result.stdout) == []  # nothing ran, the worker never hears "engine"


def test_prefect_flow_without_an_api_is_refused_not_called(tmp_path: Path, prefect_python: str) -> None:
    write(tmp_path / "flows" / "hello.py", PREFECT_FLOW)
    result = run_runtime({"entrypoint": "flows/hello.py:hello"}, tmp_path, env={"PREFECT_API_URL": ""})
    assert result.returncode == 2
    assert result.stderr.endswith(
        "buildsys runtime: 'flows/hello.py:hello' is a Prefect flow, but no Prefect API was given to the run "
        "(PREFECT_API_URL and PREFECT__FLOW_RUN_ID are set by `buildsys worker`)\n"
    )
    assert "hello" not in output(result.stdout)
