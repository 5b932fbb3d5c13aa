"""The suite's leak check (tests/hygiene.py) sees and undoes what a test leaves behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import buildsys.schedules
from tests.hygiene import Snapshot


@pytest.mark.unit
def test_leaks_are_named_and_put_back(tmp_path: Path) -> None:
    original = buildsys.schedules.schedule_round
    before = Snapshot.take()
    os.environ["PREFECT_HYGIENE_PROBE"] = "1"
    was = signal.getsignal(signal.SIGUSR2)  # whatever the runner set (an xdist worker sets some)
    now = signal.SIG_IGN if was is not signal.SIG_IGN else signal.SIG_DFL
    signal.signal(signal.SIGUSR2, now)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    old_umask = os.umask(0o077)
    buildsys.schedules.schedule_round = lambda *a, **k: None  # type: ignore[assignment]
    (tmp_path / "hygiene_probe_mod.py").write_text("X = 1\n")
    sys.path.insert(0, str(tmp_path))
    __import__("hygiene_probe_mod")
    before.put_back_imports()
    found = before.leaks()
    assert found == [
        "environment variable PREFECT_HYGIENE_PROBE: None -> '1'",
        f"signal SIGUSR2 disposition: {was!r} -> {now!r}",
        f"blocked signals: [] -> [{signal.SIGTERM!r}]",
        f"umask: {old_umask:o} -> 77",
        "buildsys.schedules.schedule_round replaced and not put back",
    ]
    assert "PREFECT_HYGIENE_PROBE" not in os.environ
    assert signal.getsignal(signal.SIGUSR2) is was
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert buildsys.schedules.schedule_round is original
    assert "hygiene_probe_mod" not in sys.modules and str(tmp_path) not in sys.path
    assert before.leaks() == []


def test_a_child_left_running_is_named_and_stopped() -> None:
    before = Snapshot.take()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        found = before.leaks()
        assert found == [f"process {child.pid} still running: {sys.executable} -c import time; time.sleep(60)"]
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
