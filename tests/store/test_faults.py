"""kill -9 in the middle of applies: the store stays readable and each apply is all or nothing
(SQLite: 50 kills; PostgreSQL, where the server rolls back for us: 10)."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from buildsys.store import open_store
from buildsys.store.base import Change
from tests.store.contract import deployment_spec

KILLS = 50


def _flip_forever(url: str, batch: int, ready: Any) -> None:
    """Alternately create and delete `batch` deployments, flipping variable `phase` in the same apply."""
    store = open_store(url)
    ready.send(("open", 0.0))
    while True:
        phase = store.get_resource("variable", "phase")
        assert phase is not None
        if phase.spec["value"] == 0:
            changes = [
                Change("create", "deployment", f"etl/d{i}", deployment_spec(f"d{i}", description="x" * 200))
                for i in range(batch)
            ]
        else:
            changes = [Change("delete", "deployment", f"etl/d{i}") for i in range(batch)]
        changes.append(Change("update", "variable", "phase", {"value": 1 - phase.spec["value"]}))
        ready.send(("begin", 0.0))
        start = time.perf_counter()
        store.apply(changes, expected_serial=None)
        ready.send(("end", time.perf_counter() - start))


def _check(url: str, batch: int) -> tuple[int, int]:
    """The store opens, passes an integrity check, and holds exactly one side of an apply."""
    if not url.startswith("postgresql://"):
        db = sqlite3.connect(url)
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            db.close()
    store = open_store(url)
    try:
        phase = store.get_resource("variable", "phase")
        assert phase is not None
        deployments = len(store.list_resources("deployment"))
        serial = store.serial()
    finally:
        store.close()
    assert (deployments, (serial - 1) % 2) == (batch * phase.spec["value"], phase.spec["value"])
    return serial, deployments


def test_kill_9_during_applies_leaves_the_store_before_or_after(tmp_path: Path) -> None:
    kill_repeatedly(str(tmp_path / "state.db"), KILLS, 1500)


@pytest.mark.postgres
def test_kill_9_during_applies_on_postgres(fresh_postgres_url: str) -> None:
    kill_repeatedly(fresh_postgres_url, 10, 300)


def kill_repeatedly(url: str, kills: int, batch: int) -> None:
    """Kill an applying child `kills` times. Before each kill the child first completes 0, 1 or 2
    applies (so both sides get checked whatever the machine's speed), then the kill lands at a
    random moment within about one apply's duration."""
    store = open_store(url)
    try:
        store.apply([Change("create", "variable", "phase", {"value": 0})], expected_serial=0)
    finally:
        store.close()
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(1234)
    previous = 1
    outcomes: set[int] = set()
    durations: list[float] = []
    mid_apply = 0
    for i in range(kills):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_flip_forever, args=(url, batch, child))
        proc.start()
        messages: list[tuple[str, float]] = []
        try:
            while sum(1 for m in messages if m[0] == "end") < i % 3:
                assert parent.poll(30), f"the applying child went quiet (messages so far: {messages})"
                messages.append(parent.recv())
            typical = statistics.median(durations) if durations else 0.05
            time.sleep(rng.uniform(0.0, 1.5 * typical))  # the kill lands at a random moment
        finally:
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
            messages += _drain(parent)
            parent.close()
            child.close()
        assert proc.exitcode == -signal.SIGKILL
        serial, deployments = _check(url, batch)
        durations += [d for what, d in messages if what == "end"]
        inside = messages[-1][0] == "begin" if messages else False
        done = previous + sum(1 for what, _ in messages if what == "end")
        # killed inside an apply: it committed or it did not; otherwise every apply committed
        assert serial in ((done, done + 1) if inside else (done,))
        mid_apply += inside
        previous = serial
        outcomes.add(deployments)
    assert mid_apply >= kills // 5, f"only {mid_apply} of {kills} kills landed inside an apply"
    assert outcomes == {0, batch}


def _drain(conn: Any) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    while conn.poll(0):
        out.append(conn.recv())
    return out
