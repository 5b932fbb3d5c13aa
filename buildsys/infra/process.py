"""The process pool type: one child process per run on the worker's machine (Prefect §7.5).

The child is ``<worker's python> -m buildsys.runtime`` unless the job configures a ``command``;
it gets the worker's environment plus the job's env, and runs in ``working_dir`` or in a fresh
temporary directory removed afterwards. It leads its own process group so that cancelling a run
also stops whatever the flow started.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from buildsys.infra import InfrastructureError, Job, Outcome, Sink, pump_lines
from buildsys.runtime import PARENT_ENV

__all__ = ["ProcessExecution", "ProcessInfrastructure", "runtime_command"]


def runtime_command(python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "buildsys.runtime"]


class ProcessInfrastructure:
    type = "process"

    def __init__(self, *, python: str | None = None, base_env: Mapping[str, str] | None = None) -> None:
        self.python = python or sys.executable
        self.base_env = dict(os.environ if base_env is None else base_env)

    def start(self, job: Job, sink: Sink) -> ProcessExecution:
        config = job.configuration
        command = config.get("command")
        args = shlex.split(command) if isinstance(command, str) and command.strip() else runtime_command(self.python)
        working_dir = config.get("working_dir")
        temp_dir: Path | None = None
        if working_dir:
            cwd = Path(str(working_dir)).expanduser()
            if not cwd.is_dir():
                raise InfrastructureError(
                    f"working_dir {cwd} does not exist", hint="set the job variable working_dir to an existing directory"
                )
        else:
            temp_dir = cwd = Path(tempfile.mkdtemp(prefix=f"buildsys-run-{job.run_id[:8]}-"))
        env = {**self.base_env, **job.environment(), PARENT_ENV: str(os.getpid())}
        stream = config.get("stream_output", True) is not False
        try:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
            raise InfrastructureError(f"cannot start {shlex.join(args)}: {exc}") from exc
        return ProcessExecution(proc, sink if stream else _control_only(sink), temp_dir)


def _control_only(sink: Sink) -> Sink:
    """With stream_output false only the runtime's control lines are passed on."""
    from buildsys.runtime import CONTROL_PREFIX

    def filtered(stream: str, line: str) -> None:
        if line.startswith(CONTROL_PREFIX):
            sink(stream, line)

    return filtered


class ProcessExecution:
    def __init__(self, proc: subprocess.Popen[bytes], sink: Sink, temp_dir: Path | None) -> None:
        self.proc = proc
        self.temp_dir = temp_dir
        self._pumps = [pump_lines(proc.stdout, "stdout", sink), pump_lines(proc.stderr, "stderr", sink)]
        self._lock = threading.Lock()

    @property
    def identifier(self) -> str:
        return str(self.proc.pid)

    def wait(self, timeout: float | None = None) -> Outcome | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for pump in self._pumps:
            pump.join()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return Outcome(code, _signal_message(code))

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        with self._lock:
            if self.proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)


def _signal_message(code: int) -> str | None:
    if code >= 0:
        return None
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"the flow-run process was killed by {name}"
