"""Worker processes for the tests: a SQLite state store in the test's tmp and `buildsys worker start`
subprocesses that are always stopped (fixtures `store` and `workers`; a module may define its own
`store`, which then wins)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from buildsys.store import open_store
from buildsys.store.base import StateStore

__all__ = ["Workers", "store", "workers"]


class Workers:
    """Starts `buildsys worker start` subprocesses and always stops them."""

    def __init__(self, state: Path | str, cwd: Path) -> None:
        self.state = state
        self.cwd = cwd
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[Path] = []

    def start(self, *args: str, pool: str = "local", env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        log = self.cwd / f"worker-{len(self.procs)}.log"
        cmd = [sys.executable, "-m", "buildsys", "--state", str(self.state), "worker", "start", "--pool", pool, *args]
        # Per-run temp dirs go under the test's own tmp: a worker killed with SIGKILL cannot remove them.
        tmp = self.cwd / "tmp"
        tmp.mkdir(exist_ok=True)
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "TMPDIR": str(tmp), **(env or {})},
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def output(self, proc: subprocess.Popen[str]) -> str:
        return self.logs[self.procs.index(proc)].read_text()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = open_store(str(tmp_path / "state.db"))
    yield s
    s.close()


@pytest.fixture
def workers(tmp_path: Path, store: StateStore) -> Iterator[Workers]:
    w = Workers(tmp_path / "state.db", tmp_path)
    yield w
    w.stop_all()
