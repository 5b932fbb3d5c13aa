"""Shutdown waits are bounded: the worker's log shipper, a container's output stream that never
ends, a process whose child keeps its pipes open. No Docker engine needed: the container is a fake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from buildsys import shutdown
from buildsys.infra.docker import DockerExecution, not_found
from buildsys.infra.process import ProcessExecution
from buildsys.worker import _LogShipper
from tests.services.waiting import wait_for


class Logs:
    """The store as the shipper sees it; `gate` holds append_logs until set."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def append_logs(self, run_id: str, lines: Sequence[tuple[float, str, str]]) -> int:
        self.entered.set()
        self.gate.wait()
        self.lines += [(run_id, message) for _at, _stream, message in lines]
        return len(lines)


class CountedEvent(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


def test_stop_while_the_shipper_lingers_ends_it_with_every_line_shipped() -> None:
    # The worker hung on exit when stop() came while the shipper waited for the rest of a burst:
    # the wake-up that stop() gave was cleared with the burst's, and the shipper waited for ever.
    # Here stop() runs, up to its join, exactly inside that wait.
    logs = Logs()
    shipper = _LogShipper(logs)  # type: ignore[arg-type]
    pending = CountedEvent()
    outcome: dict[str, bool] = {}

    def stop() -> None:
        outcome["stopped"] = shipper.stop(10)

    stopper = threading.Thread(target=stop, daemon=True)

    class StopDuringTheLinger(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            if timeout is not None and not stopper.is_alive() and "stopped" not in outcome:
                stopper.start()
                wait_for(lambda: self.is_set() and pending.sets >= 2, 10, "stop() to signal the shipper")
            return super().wait(timeout)

    shipper._stop, shipper._pending = StopDuringTheLinger(), pending
    shipper.start()
    shipper.add("r1", "stdout", "the last line")
    wait_for(lambda: not stopper.is_alive() and "stopped" in outcome, 10, "stop() to return")
    assert outcome == {"stopped": True}
    assert not shipper._thread.is_alive()
    assert logs.lines == [("r1", "the last line")]


def test_a_store_that_does_not_answer_bounds_the_shippers_stop() -> None:
    logs = Logs()
    logs.gate.clear()
    shipper = _LogShipper(logs, linger=0.0)  # type: ignore[arg-type]
    shipper.start()
    shipper.add("r1", "stdout", "stuck")
    assert logs.entered.wait(10)
    try:
        assert shipper.stop(0.1) is False
    finally:
        logs.gate.set()
    wait_for(lambda: not shipper._thread.is_alive(), 10, "the shipper to end once the store answers")
    assert logs.lines == [("r1", "stuck")]


class EndlessContainer:
    """A container that exited at once but whose follow streams end only when it is removed (as
    Docker 20.10 may do when the stream attaches after the exit)."""

    id = "0123456789abcdef"

    def __init__(self) -> None:
        self.removed = threading.Event()
        self.attrs: dict[str, Any] = {"State": {"OOMKilled": False}}

    def logs(self, *, stdout: bool, stderr: bool, stream: bool, follow: bool) -> Iterator[bytes]:
        if stderr:
            yield b"[FATAL tini (7)] exec no-such-python3 failed: No such file or directory\n"
        self.removed.wait(30)

    def wait(self) -> dict[str, Any]:
        return {"StatusCode": 127}

    def reload(self) -> None:
        pass

    def remove(self, force: bool) -> None:
        self.removed.set()


def test_a_container_output_stream_that_never_ends_is_given_up_and_the_container_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutdown, "OUTPUT_GRACE_SECONDS", 0.1)
    container = EndlessContainer()
    lines: list[tuple[str, str]] = []
    command = ["no-such-python3", "-m", "buildsys.runtime"]
    execution = DockerExecution(container, lambda s, line: lines.append((s, line)), stream=True,
                                auto_remove=True, image="img:1", command=command)
    outcome = wait_for(lambda: execution.wait(0), 10, "the run's outcome")
    assert (outcome.exit_code, outcome.message) == (127, not_found(127, "img:1", command))
    assert container.removed.is_set()
    wait_for(lambda: not any(p.is_alive() for p in execution._pumps), 10, "the streams to end with the removal")
    assert sorted(lines) == [
        ("stderr", "[FATAL tini (7)] exec no-such-python3 failed: No such file or directory"),
        ("stderr", "buildsys: the output of docker:0123456789ab did not end within 0.1 s of its exit; "
                   "lines after this may be missing"),
    ]


def test_a_child_that_keeps_the_pipes_open_does_not_hold_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutdown, "OUTPUT_GRACE_SECONDS", 0.1)
    script = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print('parent done')"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    lines: list[tuple[str, str]] = []
    try:
        execution = ProcessExecution(proc, lambda s, line: lines.append((s, line)), None)
        outcome = wait_for(lambda: execution.wait(0), 20, "the run's outcome")
        assert outcome.exit_code == 0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sleeping child
    wait_for(lambda: not any(p.is_alive() for p in execution._pumps), 10, "the pipes to close")
    assert sorted(lines) == [
        ("stderr", f"buildsys: the output of process {proc.pid} did not end within 0.1 s of its exit (a process "
                   "it started still holds its stdout or stderr); not waiting for it"),
        ("stdout", "parent done"),
    ]
