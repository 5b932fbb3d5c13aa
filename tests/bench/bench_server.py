"""Benchmark `buildsys server`: claim latency, claim throughput and a no-change plan over HTTP.

A real `buildsys server start` process on 127.0.0.1 (SQLite, and PostgreSQL when a private cluster
can be started as in the tests). Measures:

* claim latency: a run is created (HTTP) while one client long-polls; time from just before the
  create call until the claim returns the run (p50 / p95 over many runs, one at a time);
* claims per second: 1 and 8 client threads claiming one run per call until the pool is empty;
* no-change plan of 1,000 deployments (load project + snapshot + diff): HTTP store vs file store.

    .venv/bin/python tests/bench/bench_server.py [--latency-runs 200] [--claims 2000] [--repeat 3] [--no-postgres]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from buildsys.store.base import Change, StateStore  # noqa: E402
from buildsys.store.http import HttpStore  # noqa: E402
from buildsys.store.sql import SqlStore  # noqa: E402
from tests.services.net import free_port  # noqa: E402
from tests.services.waiting import wait_for  # noqa: E402

TARGETS = {"p50_ms": 100.0, "claims_per_s": 200.0, "plan_ratio": 2.0}


@contextmanager
def server(db: str, workdir: Path) -> Iterator[str]:
    port = free_port()
    log = (workdir / f"server-{port}.log").open("wb")
    cmd = [sys.executable, "-m", "buildsys", "server", "start", "--port", str(port), "--db", db]
    proc = subprocess.Popen([*cmd, "--housekeeping-seconds", "3600"], cwd=workdir, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        with HttpStore(url, retries=0) as probe:
            wait_for(lambda: probe.serial() >= 0, 30, "the server to answer", ignore=(Exception,))
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def seed(store: StateStore, pool: str) -> None:
    store.apply(
        [
            Change("create", "pool", pool, {"type": "process"}),
            Change(
                "create", "deployment", f"{pool}/d", {"flow_name": pool, "name": "d", "work_pool_name": pool}
            ),
        ],
        expected_serial=None,
    )


def claim_latency(url: str, runs: int) -> list[float]:
    """Seconds from create to claim, one run at a time, with one long-polling client."""
    seed(HttpStore(url), "latency")
    got: dict[str, float] = {}
    arrived = threading.Condition()
    stop = threading.Event()

    def claimer() -> None:
        with HttpStore(url) as store:
            while not stop.is_set():
                for run in store.claim_runs("latency", "claimer", wait=5):
                    with arrived:
                        got[run.id] = time.perf_counter()
                        arrived.notify_all()

    thread = threading.Thread(target=claimer, daemon=True)
    thread.start()
    samples = []
    with HttpStore(url) as creator:
        creator.serial()
        time.sleep(0.2)  # let the claimer reach its long-poll before the first sample
        for _ in range(runs):
            start = time.perf_counter()
            run_id = creator.create_run("latency/d").id
            with arrived:
                arrived.wait_for(lambda rid=run_id: rid in got, timeout=10)
            samples.append(got[run_id] - start)
    stop.set()
    thread.join(10)
    return samples


def claims_per_second(url: str, db_store: StateStore, clients: int, runs: int, pool: str) -> float:
    seed(db_store, pool)
    for _ in range(runs):
        db_store.create_run(f"{pool}/d")
    claimed = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        with HttpStore(url) as store:
            store.serial()
            barrier.wait()
            while store.claim_runs(pool, f"c{i}", limit=1):
                claimed[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    assert sum(claimed) == runs, (sum(claimed), runs)
    return runs / elapsed


def _bench_plan_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_plan", REPO / "tests" / "bench" / "bench_plan.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def no_change_plan(url: str, workdir: Path, n: int, repeats: int = 7) -> tuple[float, float, float]:
    """Median seconds of a no-change plan of `n` deployments — the store's part: snapshot (serial +
    list_resources) and diff — on the file store and over HTTP, plus loading the project once."""
    from buildsys.desired import read_desired
    from buildsys.plan import plan
    from buildsys.reconcile import apply_plan, snapshot

    bench_plan = _bench_plan_module()
    root = workdir / "project"
    (root / "flows").mkdir(parents=True)
    (root / "flows" / "etl.py").write_text(bench_plan.FLOW)
    file = root / "prefect.yaml"
    file.write_text(bench_plan.project_text(n))
    start = time.perf_counter()
    _, want = read_desired(file)
    load = time.perf_counter() - start

    def make_plan(store: StateStore) -> Any:
        serial, actual = snapshot(store)
        return plan(want, actual, serial=serial)

    def median_time(store: StateStore) -> float:
        apply_plan(store, make_plan(store))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            same = make_plan(store)
            times.append(time.perf_counter() - start)
            assert not same.has_changes
        return statistics.median(times)

    file_store = SqlStore.sqlite(root / ".buildsys" / "state.db")
    try:
        local = median_time(file_store)
    finally:
        file_store.close()
    with HttpStore(url) as http:
        remote = median_time(http)
    return local, remote, load


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(
    label: str, db: str, open_db: Callable[[], StateStore], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    with server(db, workdir) as url:
        latency = claim_latency(url, args.latency_runs)
        store = open_db()
        try:
            one = claims_per_second(url, store, 1, args.claims, "tp1")
            eight = claims_per_second(url, store, 8, args.claims, "tp8")
        finally:
            store.close()
        local, remote, load = no_change_plan(url, workdir, 1000)
    return {
        "backend": label,
        "p50_ms": 1000 * statistics.median(latency),
        "p95_ms": 1000 * pct(latency, 0.95),
        "claims_1": one,
        "claims_8": eight,
        "plan_file_s": local,
        "plan_http_s": remote,
        "load_s": load,
    }


def postgres_server(stack: list[Any]) -> Any:
    """A private PostgreSQL cluster as in the tests, or None when this machine has none."""
    try:
        from tests.services.postgres import start_postgres
    except ImportError:
        return None
    gen = start_postgres()
    try:
        pg = next(gen)
    except BaseException as exc:  # no PostgreSQL here (the fixture's skip is a BaseException)
        if isinstance(exc, KeyboardInterrupt):
            raise
        print(f"(PostgreSQL skipped: {exc})", file=sys.stderr)
        return None
    stack.append(gen)
    return pg


def median_row(samples: list[dict[str, Any]]) -> dict[str, Any]:
    row = dict(samples[0])
    for key, value in samples[0].items():
        if isinstance(value, float):
            row[key] = statistics.median(s[key] for s in samples)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="whole runs; the table shows medians")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    from tests.services.postgres import fresh_database

    rows = []
    cleanup: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        samples = []
        for i in range(args.repeat):
            where = work / f"sqlite-{i}"
            where.mkdir()
            db = str(where / "server.db")
            samples.append(measure("SQLite", db, lambda db=db: SqlStore.sqlite(db), args, where))
        rows.append(median_row(samples))
        pg = None if args.no_postgres else postgres_server(cleanup)
        if pg is not None:
            samples = []
            for i in range(args.repeat):
                where = work / f"pg-{i}"
                where.mkdir()
                for url in fresh_database(pg):
                    samples.append(
                        measure("PostgreSQL", url, lambda url=url: SqlStore.postgres(url), args, where)
                    )
            rows.append(median_row(samples))
        for gen in cleanup:
            gen.close()
    print(
        f"medians of {args.repeat} whole runs, each on a fresh database: "
        f"claim latency over {args.latency_runs} runs; throughput over {args.claims} runs; plan = "
        "snapshot + diff of 1,000 deployments, no change (median of 7; loading the project, the same "
        f"for both, takes another {rows[0]['load_s'] * 1000:.0f} ms); {os.cpu_count()} CPUs\n"
    )
    print(
        "| server DB | claim p50 | claim p95 | claims/s, 1 client | claims/s, 8 clients | plan, file store | plan, HTTP | HTTP / file |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["plan_http_s"] / r["plan_file_s"]
        print(
            f"| {r['backend']} | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms | {r['claims_1']:.0f} | "
            f"{r['claims_8']:.0f} | {r['plan_file_s'] * 1000:.0f} ms | {r['plan_http_s'] * 1000:.0f} ms | {ratio:.2f}× |"
        )
    print(
        f"\ntargets: p50 < {TARGETS['p50_ms']:.0f} ms, ≥ {TARGETS['claims_per_s']:.0f} claims/s, "
        f"HTTP plan within {TARGETS['plan_ratio']:.0f}× of the file store's"
    )


if __name__ == "__main__":
    main()
