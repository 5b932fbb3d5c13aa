"""8 worker processes race for 2,000 runs through two server processes on one PostgreSQL database:
every run is claimed exactly once (row locks with SKIP LOCKED behind stateless servers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from buildsys.store.base import PENDING, Change
from buildsys.store.sql import SqlStore
from tests.server.running import server_process

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUNS = 2000
WORKERS = 8


def test_every_run_is_claimed_exactly_once(fresh_postgres_url: str, tmp_path: Path) -> None:
    store = SqlStore.postgres(fresh_postgres_url)
    try:
        store.apply(
            [
                Change("create", "pool", "race", {"type": "process"}),
                Change(
                    "create", "deployment", "f/d", {"flow_name": "f", "name": "d", "work_pool_name": "race"}
                ),
            ],
            expected_serial=0,
        )
        created = {store.create_run("f/d").id for _ in range(RUNS)}
        slow_housekeeping = ["--housekeeping-seconds", "3600"]
        with (
            server_process(fresh_postgres_url, tmp_path, extra=slow_housekeeping) as first,
            server_process(fresh_postgres_url, tmp_path, extra=slow_housekeeping) as second,
        ):
            outputs = [tmp_path / f"w{i}.json" for i in range(WORKERS)]
            gate = tmp_path / "gate"
            gate.mkdir()
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            workers = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.server.race_worker",
                        (first, second)[i % 2].url,
                        f"w{i}",
                        str(out),
                        str(gate),
                        str(WORKERS),
                    ],
                    cwd=REPO,
                    env=env,
                )
                for i, out in enumerate(outputs)
            ]
            try:
                codes = [w.wait(120) for w in workers]
            finally:
                for w in workers:
                    if w.poll() is None:
                        w.kill()
                        w.wait()
            assert codes == [0] * WORKERS
        claims = {f"w{i}": json.loads(out.read_text()) for i, out in enumerate(outputs)}
        counts = Counter(run_id for ids in claims.values() for run_id in ids)
        assert [run_id for run_id, n in counts.items() if n > 1] == []
        assert set(counts) == created
        assert all(claims.values()), "every worker claimed (they meet after their first batch)"
        owner = {run_id: worker for worker, ids in claims.items() for run_id in ids}
        stored = store.list_runs(limit=RUNS + 1)
        assert len(stored) == RUNS
        assert all(r.state == PENDING and r.worker == owner[r.id] for r in stored)
    finally:
        store.close()
