"""Prefect flows under `buildsys worker`: Prefect's own engine runs them against buildsys's
Prefect-compatible API (the worker's embedded one on the file store, `buildsys server`'s otherwise)."""

from __future__ import annotations

import sys
from pathlib import Path

from buildsys.store.base import StateStore
from tests.infra.workers import Workers
from tests.test_runtime_prefect import fake_prefect


def test_worker_refuses_a_prefect_it_cannot_start_naming_the_versions(
    tmp_path: Path, store: StateStore, workers: Workers
) -> None:
    fake = fake_prefect(tmp_path / "site", "4.0.0")
    proc = workers.start("--type", "process", "--once", "--name", "w0", env={"PYTHONPATH": str(fake)})
    assert proc.wait(30) == 1
    assert workers.output(proc).splitlines()[-2:] == [
        "error: prefect 4.0.0 is installed, but buildsys starts Prefect 3.x's engine (its API changed between major "
        f"versions); found in {sys.executable}",
        "  hint: install Prefect 3 there (`pip install 'prefect>=3,<4'`), or start the worker from a Python without "
        "Prefect if no flow uses it",
    ]
