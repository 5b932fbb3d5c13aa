"""The process pool type: one child process per run on the worker's machine (Prefect §7.5).

The child is ``<worker's python> -m buildsys.runtime`` unless the job configures a ``command``;
it gets the worker's environment plus the job's env, and runs in ``working_dir`` or in a fresh
temporary directory removed afterwards. It leads its own process group so that cancelling a run
also stops whatever the flow started.

With ``standby`` (the worker's default) one such runtime is kept started ahead of the next run,
with Prefect's engine already imported (``python -m buildsys.runtime --standby``; importing Prefect
takes seconds): a run whose interpreter settings (``PYTHON*``, ``LD_*``, ``PREFECT_LOGGING_*``)
match gets it, with its own environment, directory and context handed over on stdin; any other run
starts cold as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from buildsys import shutdown
from buildsys.infra import InfrastructureError, Job, Outcome, Sink, pump_lines, shipped_job_template
from buildsys.shutdown import join_within

# buildsys.runtime (with argparse) is imported where a run starts: a plan loads this module only for
# the type's default job template.


__all__ = ["ProcessExecution", "ProcessInfrastructure", "runtime_command"]


def runtime_command(python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "buildsys.runtime"]


class ProcessInfrastructure:
    type = "process"

    @staticmethod
    def default_job_template() -> dict[str, Any]:
        return shipped_job_template("process")

    def __init__(
        self, *, python: str | None = None, base_env: Mapping[str, str] | None = None, standby: bool = False
    ) -> None:
        self.python = python or sys.executable
        self.base_env = dict(os.environ if base_env is None else base_env)
        self._standby = _Standby(self.python, self.base_env) if standby else None

    def start(self, job: Job, sink: Sink) -> ProcessExecution:
        import shlex  # with shutil: only when a run starts, not when a plan reads the template
        import shutil

        from buildsys.runtime import PARENT_ENV

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
            import tempfile  # random, hashlib…: only when a run starts, not when a plan reads the template

            temp_dir = cwd = Path(tempfile.mkdtemp(prefix=f"buildsys-run-{job.run_id[:8]}-"))
        env = {**self.base_env, **job.environment(), PARENT_ENV: str(os.getpid())}
        stream = config.get("stream_output", True) is not False
        notice, sink = sink, self._watch_engine(sink if stream else _control_only(sink))
        if self._standby is not None and not (isinstance(command, str) and command.strip()):
            spare = self._standby.take(env, cwd)
            self._standby.warm_up()
            if spare is not None:
                return ProcessExecution(spare, sink, temp_dir, notice=notice)
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
        return ProcessExecution(proc, sink, temp_dir, notice=notice)

    def _watch_engine(self, sink: Sink) -> Sink:
        """Once a run hands its flow to Prefect's engine, the standby runtime preloads that engine."""
        from buildsys.runtime import CONTROL_PREFIX, control_event

        standby = self._standby
        if standby is None or standby.prefect:
            return sink

        def watching(stream: str, line: str) -> None:
            if not standby.prefect and line.startswith(CONTROL_PREFIX) and control_event(line[len(CONTROL_PREFIX) :]) == "engine":
                threading.Thread(target=standby.preload_prefect, name="standby-prefect", daemon=True).start()
            sink(stream, line)

        return watching

    def warm_up(self) -> None:
        """Start the next run's runtime now (with ``standby``)."""
        if self._standby is not None:
            self._standby.warm_up()

    def close(self) -> None:
        if self._standby is not None:
            self._standby.close()


class _Standby:
    """Runtimes started ahead of the next runs (``SPARES`` of them: importing Prefect can take
    longer than a run); they preload Prefect's engine once a run of this pool has used it. A run is
    handed the oldest even while it is still importing: it has a head start on any process started
    now."""

    SPARES = 2

    def __init__(self, python: str, base_env: Mapping[str, str]) -> None:
        self.python = python
        self.base_env = dict(base_env)
        self.settings = _interpreter_settings(base_env)  # what the last run needed
        self.prefect = False  # a run went to Prefect's engine: preload it
        self._spares: list[tuple[subprocess.Popen[bytes], dict[str, str]]] = []  # oldest first
        self._lock = threading.Lock()
        self._closed = False

    def warm_up(self) -> None:
        with self._lock:
            self._spares = [(p, e) for p, e in self._spares if p.poll() is None]
            while not self._closed and len(self._spares) < self.SPARES:
                started = self._start()
                if started is None:
                    return
                self._spares.append(started)

    def _start(self) -> tuple[subprocess.Popen[bytes], dict[str, str]] | None:
        import tempfile

        from buildsys.runtime import PARENT_ENV, PRELOAD_PREFECT_FLAG, STANDBY_FLAG

        env = {k: v for k, v in self.base_env.items() if k not in _interpreter_settings(self.base_env)}
        env.update(self.settings)
        env.update({PARENT_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"})
        env.pop("BUILDSYS_RUN_CONTEXT", None)
        args = [*runtime_command(self.python), STANDBY_FLAG, *([PRELOAD_PREFECT_FLAG] if self.prefect else [])]
        try:
            proc = subprocess.Popen(
                args,
                cwd=tempfile.gettempdir(),
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError:
            return None
        return proc, env

    def preload_prefect(self) -> None:
        """From now on the waiting runtimes have Prefect's engine imported (replace those without)."""
        with self._lock:
            if self.prefect:
                return
            self.prefect = True
            spares, self._spares = self._spares, []
        for proc, _env in spares:
            _stop(proc)
        self.warm_up()

    def take(self, env: Mapping[str, str], cwd: Path) -> subprocess.Popen[bytes] | None:
        """The oldest waiting runtime, handed this run's environment and directory; None when there
        is none with the run's interpreter settings (the run then starts cold)."""
        settings = _interpreter_settings(env)
        with self._lock:
            if settings != self.settings:  # the next ones are made for runs like this one
                self.settings, stale, self._spares = settings, self._spares, []
            else:
                stale = []
            alive = [(p, e) for p, e in self._spares if p.poll() is None]
            stale += [(p, e) for p, e in self._spares if p.poll() is not None]
            proc = alive[0][0] if alive else None
            self._spares = alive[1:]
        for old, _env in stale:
            _stop(old)
        if proc is None:
            return None
        try:
            assert proc.stdin is not None
            proc.stdin.write((json.dumps({"env": dict(env), "cwd": str(cwd)}) + "\n").encode())
            proc.stdin.close()
        except OSError:  # it died between the check and the write
            _stop(proc)
            return None
        return proc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spares, self._spares = self._spares, []
        for proc, _env in spares:
            _stop(proc)


def _interpreter_settings(env: Mapping[str, str]) -> dict[str, str]:
    """What a started interpreter has already applied: a run that needs other values starts cold."""
    keep = ("PYTHON", "LD_", "PREFECT_LOGGING_")
    return {k: v for k, v in env.items() if k.startswith(keep) and k != "PYTHONUNBUFFERED"}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _control_only(sink: Sink) -> Sink:
    """With stream_output false only the runtime's control lines are passed on."""
    from buildsys.runtime import CONTROL_PREFIX

    def filtered(stream: str, line: str) -> None:
        if line.startswith(CONTROL_PREFIX):
            sink(stream, line)

    return filtered


class ProcessExecution:
    def __init__(self, proc: subprocess.Popen[bytes], sink: Sink, temp_dir: Path | None, *, notice: Sink | None = None) -> None:
        self.proc = proc
        self.temp_dir = temp_dir
        self._notice = notice or sink  # the worker's own lines (shown even without stream_output)
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
        if join_within(self._pumps, shutdown.OUTPUT_GRACE_SECONDS):
            self._notice("stderr", f"buildsys: the output of process {self.proc.pid} did not end within "
                       f"{shutdown.OUTPUT_GRACE_SECONDS:g} s of its exit (a process it started still holds its stdout or "
                       "stderr); not waiting for it")
        if self.temp_dir is not None:
            import shutil

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
