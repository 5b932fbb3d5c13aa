"""Benchmark the worker on a process pool (not a pytest test).

    .venv/bin/python tests/bench/bench_worker.py [--latency-runs 50] [--burst 200] [--markdown FILE]

One real `buildsys worker start` subprocess serves a process pool in a fresh SQLite state file;
the flow is trivial (prints one line). Measured from the store's own timestamps:

* latency: runs created one at a time (the next after the previous finished), so nothing queues:
  created → Running (the worker claimed it, started `python -m buildsys.runtime`, and the runtime
  reported that the flow starts) and created → Completed;
* throughput: a burst of runs created at once, runs per second from the first creation to the last
  completion, for one worker (its default local concurrency).

Targets: created → Running p50 < 300 ms, created → Completed < 1 s, >= 10 runs/s.

The Prefect-flow row (``--prefect-flow-runs N``, default 20; 0 skips it) runs a real Prefect flow
with one task (``from prefect import flow, task``) through Prefect's own engine under the same
buildsys worker (file store, so the worker serves the Prefect API itself), sequentially, and the
same flow under Prefect's own server and process worker in the same run (this venv's prefect
unless ``--prefect-python`` names another). Target: created → Completed p50 < 2 s and at least 4×
faster than Prefect's.

The peer is Prefect's process worker, which polls every PREFECT_WORKER_QUERY_SECONDS = 10 s (±30 %
jitter). With ``--prefect-python PATH`` (the python of a venv with ``pip install prefect``) the same
trivial flow is measured for real: ``prefect server start`` (SQLite) on 127.0.0.1, a process work
pool, ``flow.from_source(...).deploy()``, ``prefect worker start``, then runs created through the
client; Prefect's own created / start_time / end_time are used. Without it, the table states the
documented poll interval instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from buildsys.pools import default_job_template  # noqa: E402
from buildsys.store import open_store  # noqa: E402
from buildsys.store.base import Change, FlowRun, StateStore  # noqa: E402

FLOW = "def trivial(n: int = 0):\n    print('run', n)\n"
TASK_FLOW = (
    "from prefect import flow, task\n\n\n@task\ndef one(n: int) -> int:\n    return n + 1\n\n\n"
    "@flow\ndef trivial(n: int = 0) -> int:\n    return one(n)\n"
)
TARGETS = {"running_p50_ms": 300.0, "completed_p50_ms": 1000.0, "runs_per_s": 10.0}
PREFECT_FLOW_TARGET_S = 2.0
PREFECT_FLOW_TARGET_RATIO = 4.0


def setup(root: Path, flow: str = FLOW) -> tuple[StateStore, str]:
    (root / "flows").mkdir()
    (root / "flows" / "bench.py").write_text(flow)
    store = open_store(str(root / "state.db"))
    store.apply(
        [
            Change(
                "create",
                "pool",
                "bench",
                spec={"type": "process", "base_job_template": default_job_template("process"), "queues": []},
            ),
            Change(
                "create",
                "deployment",
                "trivial/bench",
                spec={
                    "flow_name": "trivial",
                    "name": "bench",
                    "entrypoint": "flows/bench.py:trivial",
                    "work_pool_name": "bench",
                    "job_variables": {"stream_output": True},
                    "pull_steps": [{"set_working_directory": {"directory": str(root)}}],
                },
            ),
        ],
        expected_serial=None,
    )
    return store, "trivial/bench"


def wait_done(store: StateStore, run_id: str, timeout: float = 30.0) -> FlowRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = store.get_run(run_id)
        if run.is_terminal:
            return run
        time.sleep(0.005)
    raise SystemExit(f"run {run_id} did not finish within {timeout} s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure(latency_runs: int, burst: int, flow: str = FLOW, timeout: float = 30.0) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="buildsys-bench-worker-") as tmp:
        root = Path(tmp)
        store, deployment = setup(root, flow)
        log = (root / "worker.log").open("w")
        worker = subprocess.Popen(
            [sys.executable, "-m", "buildsys", "--state", str(root / "state.db"), "worker", "start", "--pool", "bench", "--no-stream"],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(1.0 if flow == FLOW else 15.0)  # let the worker start (not what is measured)
            to_running: list[float] = []
            to_completed: list[float] = []
            for i in range(latency_runs):
                created = store.create_run(deployment, parameters={"n": i})
                done = wait_done(store, created.id, timeout)
                if done.state != "COMPLETED" or done.started_at is None or done.ended_at is None:
                    raise SystemExit(f"run ended {done.state}: {done.state_message}")
                to_running.append(done.started_at - done.created_at)
                to_completed.append(done.ended_at - done.created_at)
            runs = [store.create_run(deployment, parameters={"n": i}) for i in range(burst)]
            finished = [wait_done(store, r.id, timeout=300) for r in runs]
            failed = [r for r in finished if r.state != "COMPLETED"]
            if failed:
                raise SystemExit(f"{len(failed)} burst runs did not complete: {failed[0].state_message}")
            span = max(r.ended_at or 0 for r in finished) - min(r.created_at for r in finished)
        finally:
            worker.terminate()
            worker.wait(60)
            log.close()
            store.close()
    return {
        "running_p50_ms": statistics.median(to_running) * 1000,
        "running_p95_ms": percentile(to_running, 95) * 1000,
        "completed_p50_ms": statistics.median(to_completed) * 1000,
        "completed_p95_ms": percentile(to_completed, 95) * 1000,
        "runs_per_s": burst / span,
    }


PREFECT_FLOW = 'from prefect import flow\n\n\n@flow\ndef trivial(n: int = 0):\n    print("run", n)\n'
PREFECT_SIDE = """
import asyncio, json, sys, time
from prefect import flow
from prefect.client.orchestration import get_client

root, n_seq, burst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def deploy():
    f = flow.from_source(source=root, entrypoint="flows/pflow.py:trivial")
    return f.deploy(name="bench", work_pool_name="bench", print_next_steps=False)


async def finished(client, ids, timeout):
    deadline = time.monotonic() + timeout
    out = {}
    while time.monotonic() < deadline and len(out) < len(ids):
        for i in ids:
            if i not in out:
                fr = await client.read_flow_run(i)
                if fr.state and fr.state.is_final():
                    out[i] = fr
        await asyncio.sleep(0.1)
    return out


async def main(dep_id):
    async with get_client() as client:
        seq = []
        for k in range(n_seq):
            fr = await client.create_flow_run_from_deployment(dep_id, parameters={"n": k})
            done = (await finished(client, [fr.id], 120))[fr.id]
            seq.append([done.state.type.value, done.created.timestamp(), done.start_time.timestamp(),
                        done.end_time.timestamp()])
        runs = [await client.create_flow_run_from_deployment(dep_id, parameters={"n": k}) for k in range(burst)]
        frs = list((await finished(client, [r.id for r in runs], 900)).values())
        span = max(f.end_time.timestamp() for f in frs) - min(f.created.timestamp() for f in frs)
        states = sorted({f.state.type.value for f in frs})
        print("RESULT " + json.dumps({"seq": seq, "done": len(frs), "span": span, "states": states}))


asyncio.run(main(deploy()))
"""


def measure_prefect(python: Path, latency_runs: int, burst: int, flow: str = PREFECT_FLOW) -> dict[str, float]:
    """The same trivial flow on Prefect's own server + process worker (see the module docstring)."""
    bindir = python.parent
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="buildsys-bench-prefect-") as tmp:
        root = Path(tmp)
        (root / "flows").mkdir()
        (root / "flows" / "pflow.py").write_text(flow)
        (root / "side.py").write_text(PREFECT_SIDE)
        env = {
            **os.environ,
            "PREFECT_HOME": str(root / "home"),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        logs = (root / "prefect.log").open("w")
        procs = [
            subprocess.Popen(
                [str(bindir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env, stdout=logs, stderr=subprocess.STDOUT, cwd=root,
            )
        ]
        try:
            _wait_http(f"http://127.0.0.1:{port}/api/health", 180)
            subprocess.run([str(bindir / "prefect"), "work-pool", "create", "bench", "--type", "process"],
                           env=env, check=True, capture_output=True, cwd=root)
            procs.append(subprocess.Popen([str(bindir / "prefect"), "worker", "start", "--pool", "bench"],
                                          env=env, stdout=logs, stderr=subprocess.STDOUT, cwd=root))
            side = subprocess.run([str(python), "side.py", str(root), str(latency_runs), str(burst)],
                                  env=env, capture_output=True, text=True, cwd=root, timeout=1800)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            logs.close()
        line = next((x for x in side.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"the Prefect side failed:\n{side.stdout[-2000:]}\n{side.stderr[-2000:]}")
        data = json.loads(line[len("RESULT ") :])
    running = [start - created for _state, created, start, _end in data["seq"]]
    completed = [end - created for _state, created, _start, end in data["seq"]]
    return {
        "running_p50_ms": statistics.median(running) * 1000,
        "running_p95_ms": percentile(running, 95) * 1000,
        "completed_p50_ms": statistics.median(completed) * 1000,
        "completed_p95_ms": percentile(completed, 95) * 1000,
        "runs_per_s": data["done"] / data["span"],
        "burst": float(burst),
        "latency_runs": float(latency_runs),
    }


def _wait_http(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:g} s")


def table(
    results: dict[str, float], latency_runs: int, burst: int, prefect: dict[str, float] | None = None
) -> str:
    if prefect is None:
        peer = ["0–10 s (5 s average)", "≈ 9.5 s", "≥ poll wait + engine start", "", "≤ one poll batch per 10 s"]
        peer_head = "Prefect worker (documented 10 s poll, not measured)"
    else:
        peer = [
            f"{prefect['running_p50_ms'] / 1000:.1f} s",
            f"{prefect['running_p95_ms'] / 1000:.1f} s",
            f"{prefect['completed_p50_ms'] / 1000:.1f} s",
            f"{prefect['completed_p95_ms'] / 1000:.1f} s",
            f"{prefect['runs_per_s']:.2f} ({prefect['burst']:.0f} at once)",
        ]
        peer_head = f"Prefect 3 process worker, measured ({prefect['latency_runs']:.0f} sequential runs)"
    rows = [
        ("created → Running, p50", f"{results['running_p50_ms']:.0f} ms", "< 300 ms"),
        ("created → Running, p95", f"{results['running_p95_ms']:.0f} ms", ""),
        ("created → Completed, p50", f"{results['completed_p50_ms']:.0f} ms", "< 1 s"),
        ("created → Completed, p95", f"{results['completed_p95_ms']:.0f} ms", ""),
        (f"runs per second, one worker ({burst} at once)", f"{results['runs_per_s']:.1f}", "≥ 10"),
    ]
    lines = [
        f"Process pool, trivial flow, SQLite state; buildsys: {latency_runs} sequential runs for latency. "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs.",
        "",
        f"| measure | buildsys | target | {peer_head} |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for (a, b, c), d in zip(rows, peer, strict=True)]
    return "\n".join(lines)


def prefect_flow_table(ours: dict[str, float], theirs: dict[str, float], runs: int) -> str:
    ratio = theirs["completed_p50_ms"] / ours["completed_p50_ms"]
    rows = [
        ("created → Completed, p50", f"{ours['completed_p50_ms'] / 1000:.2f} s", "< 2 s", f"{theirs['completed_p50_ms'] / 1000:.2f} s"),
        ("created → Completed, p95", f"{ours['completed_p95_ms'] / 1000:.2f} s", "", f"{theirs['completed_p95_ms'] / 1000:.2f} s"),
        ("runs per second, one worker", f"{ours['runs_per_s']:.2f}", "", f"{theirs['runs_per_s']:.2f}"),
        ("p50 ratio (Prefect / buildsys)", f"{ratio:.1f}×", "≥ 4×", ""),
    ]
    lines = [
        f"Prefect flow with one task, through Prefect's engine; {runs} sequential runs each side. "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs.",
        "",
        "| measure | buildsys worker (file store) | target | Prefect 3 server + process worker |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--prefect-python", type=Path, help="python of a venv with prefect installed")
    parser.add_argument("--prefect-runs", type=int, default=5, help="sequential Prefect runs (each takes ~10 s)")
    parser.add_argument("--prefect-burst", type=int, default=20)
    parser.add_argument("--prefect-flow-runs", type=int, default=20, help="Prefect-flow row: sequential runs (0: skip)")
    parser.add_argument("--prefect-flow-burst", type=int, default=10, help="Prefect-flow row: runs created at once")
    parser.add_argument("--skip-plain", action="store_true", help="only the Prefect-flow row")
    args = parser.parse_args()
    texts, misses = [], []
    if not args.skip_plain:
        results = measure(args.latency_runs, args.burst)
        prefect = (
            measure_prefect(args.prefect_python, args.prefect_runs, args.prefect_burst) if args.prefect_python else None
        )
        texts.append(table(results, args.latency_runs, args.burst, prefect))
        misses += [k for k, limit in TARGETS.items() if (results[k] < limit if k == "runs_per_s" else results[k] >= limit)]
    if args.prefect_flow_runs:
        python = args.prefect_python or Path(sys.executable)
        ours = measure(args.prefect_flow_runs, args.prefect_flow_burst, TASK_FLOW, timeout=120.0)
        theirs = measure_prefect(python, args.prefect_flow_runs, args.prefect_flow_burst, TASK_FLOW)
        texts.append(prefect_flow_table(ours, theirs, args.prefect_flow_runs))
        if ours["completed_p50_ms"] >= PREFECT_FLOW_TARGET_S * 1000:
            misses.append("prefect_flow_completed_p50")
        if theirs["completed_p50_ms"] / ours["completed_p50_ms"] < PREFECT_FLOW_TARGET_RATIO:
            misses.append("prefect_flow_ratio")
    text = "\n\n".join(texts)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if misses:
        print("missed targets: " + ", ".join(misses), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
