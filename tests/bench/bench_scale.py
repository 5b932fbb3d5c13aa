"""Benchmark `buildsys server` at scale: several server processes on one PostgreSQL, many worker
processes, many runs. Every run must be claimed exactly once.

Setup: a private PostgreSQL cluster (as in the tests), a fresh database, one process pool with
`--deployments` deployments, `--runs` due runs spread over them, `--servers` `buildsys server start`
processes on that database, and `--workers` worker processes, each talking to one server (round
robin). A worker process does what `buildsys worker` does with the store, minus starting a flow
process per run (10,000 Python processes would measure process start-up, not the server):
long-polling claims (`claim_runs(limit=--batch, wait=1)`, as the worker), heartbeats every 2 s for the runs in
hand, and, in the "worker loop" phase, RUNNING then COMPLETED for each run it claimed.

Phases, each on a fresh database:
  claims only   the workers claim and drop the run (heartbeats carry no runs): claims/s, claim
                latency, CPU per claim;
  worker loop   claim + RUNNING + COMPLETED + heartbeats, as a worker's store traffic.
  idle          the workers long-poll an empty pool for --idle-seconds: what idle workers cost
                (server and PostgreSQL CPU per second, database transactions per second).
  big pool      (--big-deployments N) one client claiming one run at a time from a pool with N
                deployments and as many finished runs in history: what a claim costs at that size,
                and one schedule pass (the server's housekeeping; each worker's, over HTTP).

Printed: runs claimed exactly once (checked from the workers' own records and from the database),
claims/s, claim latency p50/p99 (one HTTP claim call that returned a run, as the worker saw it),
CPU seconds per claimed run of the server processes and of PostgreSQL (its postmaster, reaped
backends and live backends, from /proc).

    .venv/bin/python tests/bench/bench_scale.py [--runs 10000] [--workers 50] [--servers 2]
        [--deployments 100] [--batch 1] [--big-deployments 100000] [--phases claims,loop,idle,big]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from buildsys.store.base import Change  # noqa: E402
from buildsys.store.http import HttpStore  # noqa: E402
from buildsys.store.sql import SqlStore  # noqa: E402
from tests.services.net import free_port  # noqa: E402
from tests.services.waiting import wait_for  # noqa: E402

POOL = "scale"
CLAIM_WAIT = 1.0  # as `buildsys worker` (its poll_seconds)
HEARTBEAT_SECONDS = 2.0
LEASE_SECONDS = 600.0  # no lease expires during a phase: a run claimed twice would be a bug
TICKS = os.sysconf("SC_CLK_TCK")


# --- the worker process ------------------------------------------------------------------------


def client_main(args: argparse.Namespace) -> None:
    """One worker process: claim until the coordinator says stop; write what it claimed."""
    from buildsys.store.base import COMPLETED, RUNNING

    work = Path(args.dir)
    claims: list[tuple[float, float, list[str]]] = []
    empty = 0
    in_hand: set[str] = set()
    lock = threading.Lock()
    with HttpStore(args.client, retries=0) as store:
        store.serial()  # connect before the clock starts
        (work / f"ready-{args.name}").touch()
        while not (work / "go").exists():
            time.sleep(0.01)
        stop = threading.Event()

        def beat() -> None:
            with HttpStore(args.client, retries=0) as hb:
                while not stop.wait(HEARTBEAT_SECONDS):
                    with lock:
                        held = sorted(in_hand)
                    hb.heartbeat(POOL, args.name, held, lease_seconds=LEASE_SECONDS)

        heart = threading.Thread(target=beat, daemon=True)
        heart.start()
        while not (work / "stop").exists():
            start = time.time()
            runs = store.claim_runs(POOL, args.name, limit=args.batch, lease_seconds=LEASE_SECONDS, wait=CLAIM_WAIT)
            end = time.time()
            if not runs:
                empty += 1
                continue
            claims.append((start, end, [r.id for r in runs]))
            if args.finish:
                with lock:
                    in_hand.update(r.id for r in runs)
                for run in runs:
                    store.set_run_state(run.id, RUNNING, worker=args.name)
                    store.set_run_state(run.id, COMPLETED, worker=args.name)
                with lock:
                    in_hand.difference_update(r.id for r in runs)
            # claims only: the run is dropped at once (its lease outlives the phase), so heartbeats
            # carry no runs, as a worker's whose runs are over
        stop.set()
        heart.join(10)
    (work / f"out-{args.name}.json").write_text(json.dumps({"claims": claims, "empty": empty}))


# --- the coordinator ---------------------------------------------------------------------------


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: reaped children
    return ticks / TICKS


def postgres_cpu(postmaster: int) -> float:
    """The cluster's CPU seconds so far: the postmaster with its reaped backends, plus live ones."""
    total = cpu_seconds(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == postmaster:
                total += (int(stat[11]) + int(stat[12])) / TICKS
    return total


@contextmanager
def servers(db: str, count: int, workdir: Path) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    logs = []
    try:
        for i in range(count):
            port = free_port()
            log = (workdir / f"server-{i}.log").open("wb")
            logs.append(log)
            cmd = [sys.executable, "-m", "buildsys", "server", "start", "--port", str(port), "--db", db]
            started.append((f"http://127.0.0.1:{port}", subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=log)))
        for url, _ in started:
            with HttpStore(url, retries=0) as probe:
                wait_for(lambda probe=probe: probe.serial() >= 0, 120, f"the server at {url} to answer", ignore=(Exception,))
        yield started
    finally:
        for _, proc in started:
            proc.terminate()
        for _, proc in started:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for log in logs:
            log.close()


def seed(store: SqlStore, deployments: int) -> list[str]:
    names = [f"f/d{i}" for i in range(deployments)]
    changes = [Change("create", "pool", POOL, {"type": "process"})]
    changes += [
        Change("create", "deployment", name, {"flow_name": "f", "name": name.split("/")[1], "work_pool_name": POOL})
        for name in names
    ]
    store.apply(changes, expected_serial=None)
    return names


def create_runs(store: SqlStore, deployments: list[str], runs: int) -> tuple[set[str], float]:
    start = time.perf_counter()
    ids = {store.create_run(deployments[i % len(deployments)]).id for i in range(runs)}
    return ids, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_phase(label: str, pg: Any, args: argparse.Namespace, work: Path, *, finish: bool) -> dict[str, Any]:
    from tests.services.postgres import fresh_database

    with ExitStack() as stack:
        db = stack.enter_context(contextmanager(fresh_database)(pg))
        store = SqlStore.postgres(db)
        stack.callback(store.close)
        deployments = seed(store, args.deployments)
        expected, create_s = create_runs(store, deployments, args.runs)
        phase_dir = work / label.replace(" ", "-")
        phase_dir.mkdir()
        procs = stack.enter_context(servers(db, args.servers, phase_dir))
        postmaster = int((pg.directory / "data" / "postmaster.pid").read_text().split()[0])
        clients = []
        for i in range(args.workers):
            url = procs[i % len(procs)][0]
            cmd = [sys.executable, __file__, "--client", url, "--name", f"w{i}", "--dir", str(phase_dir), "--batch", str(args.batch)]
            clients.append(subprocess.Popen([*cmd, *(["--finish"] if finish else [])], stdin=subprocess.DEVNULL))

        def stop_clients() -> None:
            (phase_dir / "stop").touch()
            for c in clients:
                try:
                    c.wait(60)
                except subprocess.TimeoutExpired:
                    c.kill()

        stack.callback(stop_clients)
        wait_for(
            lambda: len(list(phase_dir.glob("ready-*"))) == args.workers or any(c.poll() is not None for c in clients),
            600,
            "the worker processes to start",
        )
        assert all(c.poll() is None for c in clients), "a worker process ended before the start"
        server_cpu0 = sum(cpu_seconds(p.pid) for _, p in procs)
        pg_cpu0 = postgres_cpu(postmaster)
        go = time.time()
        (phase_dir / "go").touch()
        done_states = ("COMPLETED",) if finish else ("PENDING",)

        def finished() -> bool:
            with store._db.tx() as tx:  # one count, not 10,000 rows
                row = tx.one(
                    f"SELECT COUNT(*) FROM flow_runs WHERE pool = ? AND state IN ({', '.join('?' for _ in done_states)})",
                    (POOL, *done_states),
                )
            return bool(row and int(row[0]) >= args.runs)

        wait_for(finished, 3600, f"all {args.runs} runs to be {'/'.join(done_states)}", interval=0.25)
        end = time.time()
        server_cpu = sum(cpu_seconds(p.pid) for _, p in procs) - server_cpu0
        pg_cpu = postgres_cpu(postmaster) - pg_cpu0
        stop_clients()
        claims: list[tuple[float, float, list[str]]] = []
        empty = 0
        for out in phase_dir.glob("out-*.json"):
            data = json.loads(out.read_text())
            claims.extend(data["claims"])
            empty += data["empty"]
        claimed = [rid for _, _, ids in claims for rid in ids]
        twice = sum(n - 1 for n in Counter(claimed).values() if n > 1)
        with store._db.tx() as tx:
            states = dict(tx.run("SELECT state, COUNT(*) FROM flow_runs GROUP BY state"))
            workers = int(tx.one("SELECT COUNT(DISTINCT worker) FROM flow_runs")[0])
        latencies = [e - s for s, e, _ in claims]
        last = max(e for _, e, _ in claims)
        return {
            "phase": label,
            "runs": args.runs,
            "claimed": len(set(claimed)),
            "twice": twice,
            "missing": len(expected - set(claimed)),
            "states": states,
            "workers_seen": workers,
            "claim_calls": len(claims),
            "empty_polls": empty,
            "elapsed": last - go,
            "until_db_done": end - go,
            "claims_per_s": len(claimed) / (last - go),
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * pct(latencies, 0.99),
            "max_ms": 1000 * max(latencies),
            "server_cpu_ms": 1000 * server_cpu / len(claimed),
            "pg_cpu_ms": 1000 * pg_cpu / len(claimed),
            "create_per_s": args.runs / create_s,
        }


def transactions(store: SqlStore) -> int:
    with store._db.tx() as tx:
        row = tx.one("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
    return int(row[0]) if row else 0


def idle(pg: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`--workers` worker processes long-polling a pool with nothing to claim."""
    from tests.services.postgres import fresh_database

    with ExitStack() as stack:
        db = stack.enter_context(contextmanager(fresh_database)(pg))
        store = SqlStore.postgres(db)
        stack.callback(store.close)
        seed(store, args.deployments)
        phase_dir = work / "idle"
        phase_dir.mkdir()
        procs = stack.enter_context(servers(db, args.servers, phase_dir))
        postmaster = int((pg.directory / "data" / "postmaster.pid").read_text().split()[0])
        clients = []
        for i in range(args.workers):
            cmd = [sys.executable, __file__, "--client", procs[i % len(procs)][0], "--name", f"w{i}", "--dir", str(phase_dir)]
            clients.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))

        def stop_clients() -> None:
            (phase_dir / "stop").touch()
            for c in clients:
                try:
                    c.wait(60)
                except subprocess.TimeoutExpired:
                    c.kill()

        stack.callback(stop_clients)
        wait_for(lambda: len(list(phase_dir.glob("ready-*"))) == args.workers, 600, "the worker processes to start")
        (phase_dir / "go").touch()
        time.sleep(3)  # let every worker reach its steady long-poll loop before measuring
        server0, pg0, tx0, t0 = sum(cpu_seconds(p.pid) for _, p in procs), postgres_cpu(postmaster), transactions(store), time.time()
        time.sleep(args.idle_seconds)  # the measurement window: nothing to wait for
        elapsed = time.time() - t0
        server = sum(cpu_seconds(p.pid) for _, p in procs) - server0
        pg_cpu = postgres_cpu(postmaster) - pg0
        tx = transactions(store) - tx0
        stop_clients()
        polls = sum(json.loads(o.read_text())["empty"] for o in phase_dir.glob("out-*.json"))
        return {
            "workers": args.workers,
            "seconds": elapsed,
            "server_cpu_per_s": server / elapsed,
            "pg_cpu_per_s": pg_cpu / elapsed,
            "tx_per_s": tx / elapsed,
            "client_polls": polls,
        }


def big_pool(pg: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Claim latency (one client, one run at a time) with N deployments and N finished runs."""
    from tests.services.postgres import fresh_database

    n = args.big_deployments
    with ExitStack() as stack:
        db = stack.enter_context(contextmanager(fresh_database)(pg))
        store = SqlStore.postgres(db)
        stack.callback(store.close)
        start = time.perf_counter()
        deployments = seed(store, n)
        seed_s = time.perf_counter() - start
        with store._db.tx(write=True) as tx:  # history: N finished runs, one per deployment
            tx.run(
                "INSERT INTO flow_runs (id, name, deployment, deployment_id, flow_name, pool, queue, parameters, "
                "job_variables, state, state_name, scheduled_at, created_at, ended_at, attempt, max_retries, "
                "retry_delay_seconds, auto_scheduled, tags, run_count, prefect) "
                "SELECT md5(r.name || 'h'), 'h-' || r.name, r.name, r.id, 'f', ?, 'default', '{}', '{}', 'COMPLETED', "
                "'Completed', 0, 0, 1, 1, 0, 0, 0, '[]', 1, '{}' FROM resources r WHERE r.kind = 'deployment'",
                (POOL,),
            )
        samples = []
        phase_dir = work / "big"
        phase_dir.mkdir()
        ((url, _),) = stack.enter_context(servers(db, 1, phase_dir))
        with HttpStore(url, retries=0) as client:
            client.serial()
            for i in range(args.big_claims):
                store.create_run(deployments[(i * 7919) % n])
                t0 = time.perf_counter()
                got = client.claim_runs(POOL, "big", limit=1, lease_seconds=LEASE_SECONDS)
                samples.append(time.perf_counter() - t0)
                assert len(got) == 1
            from buildsys.schedules import schedule_due_runs

            start = time.perf_counter()
            schedule_due_runs(store)  # what each server's housekeeping does every 10 s
            pass_db = time.perf_counter() - start
            start = time.perf_counter()
            schedule_due_runs(client)  # what each `buildsys worker` on this server does every 5 s
            pass_http = time.perf_counter() - start
        with store._db.tx() as tx:
            rows = int(tx.one("SELECT COUNT(*) FROM flow_runs")[0])
            size = tx.one("SELECT pg_database_size(current_database())")[0]
            tables = {
                name: int(tx.one(f"SELECT pg_total_relation_size('{name}')")[0]) for name in ("resources", "flow_runs")
            }
        return {
            "deployments": n,
            "runs_rows": rows,
            "seed_s": seed_s,
            "p50_ms": 1000 * statistics.median(samples),
            "p99_ms": 1000 * pct(samples, 0.99),
            "schedule_pass_db_s": pass_db,
            "schedule_pass_http_s": pass_http,
            "db_mb": int(size) / 1e6,
            "resources_mb": tables["resources"] / 1e6,
            "flow_runs_mb": tables["flow_runs"] / 1e6,
        }


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1, help="runs asked for per claim call")
    parser.add_argument("--big-deployments", type=int, default=100_000)
    parser.add_argument("--big-claims", type=int, default=300)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--phases", default="claims,loop,idle,big")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--finish", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args)
        return
    from tests.services.postgres import start_postgres

    phases = set(args.phases.split(","))
    print(f"{os.cpu_count()} CPUs, load average before: {load_average()}", flush=True)
    gen = start_postgres()
    pg = next(gen)
    rows = []
    big = idle_row = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            if "claims" in phases:
                rows.append(run_phase("claims only", pg, args, work, finish=False))
                print(json.dumps(rows[-1]), flush=True)
            if "loop" in phases:
                rows.append(run_phase("worker loop", pg, args, work, finish=True))
                print(json.dumps(rows[-1]), flush=True)
            if "idle" in phases:
                idle_row = idle(pg, args, work)
                print(json.dumps(idle_row), flush=True)
            if "big" in phases:
                big = big_pool(pg, args, work)
                print(json.dumps(big), flush=True)
    finally:
        gen.close()
    print(f"\nload average after: {load_average()}")
    print(
        f"\n{args.servers} servers on one PostgreSQL 15, {args.workers} worker processes, {args.runs} runs over "
        f"{args.deployments} deployments, {args.batch} run(s) per claim call\n"
    )
    print("| phase | claimed once | claimed twice | missing | claims/s | claim p50 | claim p99 | server CPU / run | PostgreSQL CPU / run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['phase']} | {r['claimed']} | {r['twice']} | {r['missing']} | {r['claims_per_s']:.0f} | "
            f"{r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['server_cpu_ms']:.2f} ms | {r['pg_cpu_ms']:.2f} ms |"
        )
    if idle_row is not None:
        print(
            f"\nidle: {idle_row['workers']} workers long-polling an empty pool for {idle_row['seconds']:.0f} s: "
            f"servers {idle_row['server_cpu_per_s']:.2f} CPU s/s, PostgreSQL {idle_row['pg_cpu_per_s']:.2f} CPU s/s, "
            f"{idle_row['tx_per_s']:.0f} database transactions/s"
        )
    if big is not None:
        print(
            f"\nbig pool: {big['deployments']} deployments, {big['runs_rows']} run rows, database {big['db_mb']:.0f} MB: "
            f"claim p50 {big['p50_ms']:.1f} ms, p99 {big['p99_ms']:.1f} ms (one client, one run per claim); "
            f"applying the deployments took {big['seed_s']:.1f} s; resources {big['resources_mb']:.0f} MB, "
            f"flow_runs {big['flow_runs_mb']:.0f} MB with their indexes; one schedule pass over all deployments "
            f"(none has a schedule): {big['schedule_pass_db_s']:.1f} s in the server, {big['schedule_pass_http_s']:.1f} s "
            "from a worker over HTTP"
        )


if __name__ == "__main__":
    main()
