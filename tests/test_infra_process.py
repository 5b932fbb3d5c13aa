"""The process pool type on its own: real child processes, no store."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from buildsys.infra import InfrastructureError, Job
from buildsys.infra.process import ProcessInfrastructure
from buildsys.runtime import CONTROL_PREFIX
from tests.services.waiting import process_alive, wait_for


class Lines:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, stream: str, line: str) -> None:
        with self.lock:
            self.items.append((stream, line))

    def plain(self) -> list[tuple[str, str]]:
        return [(s, line) for s, line in self.items if not line.startswith(CONTROL_PREFIX)]


def job(tmp_path: Path, entrypoint: str, config: dict[str, Any] | None = None, **params: Any) -> Job:
    return Job(
        run_id="run-1234",
        run_name="calm-lake",
        flow_name="f",
        deployment="f/dev",
        pool="local",
        worker="w",
        configuration=config or {},
        context={"entrypoint": entrypoint, "parameters": params, "root": str(tmp_path)},
        env={"BUILDSYS_RUN_ID": "run-1234"},
    )


def test_runs_the_runtime_with_the_jobs_env_and_context(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(
        "import os, sys\n"
        "def f(x):\n"
        "    print('x', x, os.environ['BUILDSYS_RUN_ID'], os.environ['EXTRA'])\n"
        "    print('problem', file=sys.stderr)\n"
    )
    lines = Lines()
    execution = ProcessInfrastructure().start(job(tmp_path, "flow.py:f", {"env": {"EXTRA": "yes"}}, x=3), lines)
    outcome = execution.wait(30)
    assert outcome is not None and (outcome.exit_code, outcome.message) == (0, None)
    assert sorted(lines.plain()) == [("stderr", "problem"), ("stdout", "x 3 run-1234 yes")]
    events = [json.loads(line[len(CONTROL_PREFIX) :]) for _, line in lines.items if line.startswith(CONTROL_PREFIX)]
    assert [e["event"] for e in events] == ["running", "completed"]
    assert events[0]["cwd"] == str(tmp_path)  # the context's root
    assert execution.identifier.isdigit()


def test_temp_working_dir_is_removed_and_configured_one_is_used(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text("import os\ndef f(): print(os.getcwd())\n")
    lines = Lines()
    config = {"command": f"{sys.executable} -c 'import os; print(os.getcwd())'"}
    execution = ProcessInfrastructure().start(job(tmp_path, "flow.py:f", config), lines)
    assert execution.wait(30) is not None
    temp_dir = lines.plain()[0][1]
    assert Path(temp_dir).name.startswith("buildsys-run-run-1234-")
    assert not Path(temp_dir).exists()
    lines = Lines()
    execution = ProcessInfrastructure().start(job(tmp_path, "flow.py:f", {**config, "working_dir": str(tmp_path)}), lines)
    assert execution.wait(30) is not None
    assert lines.plain() == [("stdout", str(tmp_path))]
    assert tmp_path.is_dir()


def test_missing_working_dir_is_an_infrastructure_error(tmp_path: Path) -> None:
    with pytest.raises(InfrastructureError) as info:
        ProcessInfrastructure().start(job(tmp_path, "flow.py:f", {"working_dir": str(tmp_path / "nope")}), Lines())
    assert info.value.message == f"working_dir {tmp_path / 'nope'} does not exist"


def test_stream_output_false_passes_only_control_lines(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text("def f(): print('noise')\n")
    lines = Lines()
    execution = ProcessInfrastructure().start(job(tmp_path, "flow.py:f", {"stream_output": False}), lines)
    assert execution.wait(30) is not None
    assert lines.plain() == []
    assert len(lines.items) == 2


def test_terminate_stops_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    (tmp_path / "flow.py").write_text(
        "import subprocess, sys, time\n"
        "def f(pidfile):\n"
        "    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "    open(pidfile, 'w').write(str(p.pid))\n"
        "    time.sleep(60)\n"
    )
    execution = ProcessInfrastructure().start(job(tmp_path, "flow.py:f", pidfile=str(pidfile)), Lines())
    grandchild = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 20, "the flow to start a child"))
    execution.terminate()
    outcome = execution.wait(10)
    assert outcome is not None
    assert (outcome.exit_code, outcome.message) == (-15, "the flow-run process was killed by SIGTERM")
    wait_for(lambda: not process_alive(grandchild), 10, "the flow's own child to be stopped too")


def test_kill_after_sigterm_is_ignored(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    (tmp_path / "flow.py").write_text(
        "import signal, time\n"
        "def f(ready):\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    open(ready, 'w').write('1')\n"
        "    time.sleep(60)\n"
    )
    execution = ProcessInfrastructure().start(job(tmp_path, "flow.py:f", ready=str(ready)), Lines())
    wait_for(ready.exists, 20, "the flow to ignore SIGTERM")
    execution.terminate()
    assert execution.wait(0.5) is None
    execution.kill()
    outcome = execution.wait(10)
    assert outcome is not None and outcome.exit_code == -9



def test_the_standby_runtime_runs_the_next_run_with_its_own_env_and_directory(tmp_path: Path) -> None:
    (tmp_path / "lib.py").write_text("WHO = 'lib next to the flow'\n")
    (tmp_path / "flow.py").write_text(
        "import os, sys\n"
        "def f():\n"
        "    import lib\n"
        "    print(os.getpid(), os.getcwd(), os.environ['EXTRA'], 'WORKER_ONLY' in os.environ, lib.WHO)\n"
    )
    infra = ProcessInfrastructure(standby=True, base_env={**_env(), "WORKER_ONLY": "1"})
    try:
        infra.warm_up()
        spare = infra._standby._spares[0][0]  # type: ignore[union-attr]
        lines = Lines()
        execution = infra.start(job(tmp_path, "flow.py:f", {"env": {"EXTRA": "run's own"}}), lines)
        assert execution.identifier == str(spare.pid)  # the run got the waiting process
        outcome = execution.wait(30)
        assert outcome is not None and outcome.exit_code == 0, lines.items
        assert lines.plain() == [("stdout", f"{spare.pid} {tmp_path} run's own True lib next to the flow")]
        # a run that needs other interpreter settings starts cold, and the next standby is made for it
        waiting = [p for p, _ in infra._standby._spares]  # type: ignore[union-attr]
        lines = Lines()
        execution = infra.start(job(tmp_path, "flow.py:f", {"env": {"EXTRA": "x", "PYTHONPATH": str(tmp_path)}}), lines)
        assert len(waiting) == 2 and execution.identifier not in {str(p.pid) for p in waiting}
        assert execution.wait(30) is not None and lines.plain()[0][1].endswith(f"{tmp_path} x True lib next to the flow")
        assert infra._standby.settings == {"PYTHONPATH": str(tmp_path)}  # type: ignore[union-attr]
    finally:
        infra.close()
    assert all(p.poll() is not None for p in waiting)


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BUILDSYS_RUN_CONTEXT"))}
