"""buildsys's prefect+http store against `prefect deploy --all`, on one real Prefect server, same run.

For 1 / 10 / 50 deployments (each with parameters, tags, a cron schedule and a work pool; one flow
file): the first apply (`buildsys apply --auto-approve` vs `prefect --no-prompt deploy --all`) and a
no-change run (`buildsys plan` vs `prefect deploy --all` again, which is what a CI job re-runs).
Both tools run as the commands users run (a new process each), against the same server through a
counting proxy on loopback, which counts HTTP requests and writes (POST/PATCH/PUT/DELETE other than
Prefect's read-only POST .../filter). Wall seconds, medians over --reps runs, each on fresh names.

    .venv/bin/python tests/bench/bench_prefect_store.py [--sizes 1,10,50] [--reps 3] [--tools buildsys]
"""

from __future__ import annotations

import argparse
import http.server
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.services.net import free_port  # noqa: E402
from tests.services.prefect import prefect_env  # noqa: E402
from tests.services.waiting import wait_for  # noqa: E402

READS = ("/filter", "/count", "/paginate")


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.writes = 0

    def reset(self) -> None:
        with self.lock:
            self.requests = self.writes = 0

    def add(self, method: str, path: str) -> None:
        with self.lock:
            self.requests += 1
            if method != "GET" and not path.split("?", 1)[0].endswith(READS):
                self.writes += 1


@contextmanager
def counting_proxy(upstream: str) -> Iterator[tuple[str, Counter]]:
    """A loopback HTTP proxy to `upstream` (http://host:port) that counts what passes."""
    counter = Counter()
    client = httpx.Client(base_url=upstream, timeout=120)
    hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            counter.add(self.command, self.path)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
            reply = client.request(self.command, self.path, content=body, headers=headers)
            data = reply.content
            self.send_response(reply.status_code)
            for k, v in reply.headers.items():
                if k.lower() not in hop:
                    self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()
        client.close()


@contextmanager
def prefect_server(base: Path) -> Iterator[str]:
    home = base / "server-home"
    home.mkdir()
    port = free_port()
    env = prefect_env(None, home, PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port))
    log = (base / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/api/health", timeout=2).status_code == 200, 180,
                 "prefect server to start", ignore=(httpx.HTTPError,))
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


FLOW = '''from prefect import flow


@flow(name="{flow}")
def etl(day: str = "today", region: str = "eu"):
    """Load one day of data."""
    return day
'''


def project(root: Path, tag: str, n: int, pool: str) -> Path:
    root.mkdir(parents=True)
    (root / "flows").mkdir()
    (root / "flows" / "etl.py").write_text(FLOW.format(flow=f"{tag}-etl"))
    lines = [f"name: {tag}", "pull:", "  - prefect.deployments.steps.set_working_directory:",
             f"      directory: {root}", "deployments:"]
    for i in range(n):
        lines += [
            f"  - name: d{i:03d}",
            "    entrypoint: flows/etl.py:etl",
            f"    parameters: {{day: d{i}, region: r{i % 3}}}",
            f"    tags: [bench, t{i % 5}]",
            "    schedules:",
            f"      - cron: \"{i % 60} 2 * * *\"",
            "        timezone: UTC",
            "    paused: false",
            f"    work_pool: {{name: {pool}}}",
        ]
    (root / "prefect.yaml").write_text("\n".join(lines) + "\n")
    return root


Run = tuple[float, int, int, float, float]  # wall s, requests, writes, CPU s, load average


def timed(cmd: list[str], cwd: Path, env: dict[str, str], counter: Counter) -> Run:
    """(wall seconds, requests, writes, CPU seconds of the command: user + system, which a busy
    machine inflates much less than wall time, and the 1-minute load average when it started: on a
    shared machine that says how far the wall time is to be trusted)."""
    counter.reset()
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return took, counter.requests, counter.writes, cpu, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,10,50")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tools", default="buildsys,prefect",
                        help="buildsys,prefect (default) or buildsys alone (no speed-up column then)")
    args = parser.parse_args()
    tools = tuple(t for t in ("buildsys", "prefect") if t in args.tools.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(tempfile.mkdtemp(prefix="bench-prefect-store-"))
    bindir = Path(sys.executable).parent
    rows: dict[tuple[str, int, str], list[Run]] = {}
    try:
        with prefect_server(base) as upstream, counting_proxy(upstream) as (proxy, counter):
            api = f"{proxy}/api"
            client_home = base / "client-home"
            client_home.mkdir()
            env = prefect_env(api, client_home)
            env.update(BUILDSYS_STATE=f"prefect+{api}", PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
            for n in sizes:
                for rep in range(args.reps):
                    for tool in tools:
                        tag = f"{tool[0]}{n}r{rep}-{uuid.uuid4().hex[:6]}"
                        pool = f"pool-{tag}"
                        httpx.post(f"{upstream}/api/work_pools/", json={"name": pool, "type": "process"}, timeout=60)
                        root = project(base / tag, tag, n, pool)
                        if tool == "buildsys":
                            first = [str(bindir / "buildsys"), "apply", "--auto-approve"]
                            again = [str(bindir / "buildsys"), "plan", "--detailed-exitcode"]
                        else:
                            first = again = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
                        rows.setdefault((tool, n, "first apply"), []).append(timed(first, root, env, counter))
                        rows.setdefault((tool, n, "no-change"), []).append(timed(again, root, env, counter))
                        print(f"  {tool} n={n} rep={rep}: {rows[(tool, n, 'first apply')][-1]} / "
                              f"{rows[(tool, n, 'no-change')][-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report(rows, sizes)


def report(rows: dict[tuple[str, int, str], list[Run]], sizes: list[int]) -> None:
    def med(tool: str, n: int, phase: str) -> tuple[float, int, int, float, float]:
        runs = rows[(tool, n, phase)]
        return (statistics.median(r[0] for r in runs), int(statistics.median(r[1] for r in runs)),
                int(statistics.median(r[2] for r in runs)), statistics.median(r[3] for r in runs),
                statistics.median(r[4] for r in runs))

    print("| deployments | phase | buildsys s (CPU s) | requests | writes | load | prefect deploy --all s (CPU s) "
          "| requests | writes | speed-up |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for phase in ("first apply", "no-change"):
            b = med("buildsys", n, phase)
            if ("prefect", n, phase) not in rows:
                print(f"| {n} | {phase} | {b[0]:.2f} ({b[3]:.2f}) | {b[1]} | {b[2]} | {b[4]:.1f} | (not run) | | | |")
                continue
            p = med("prefect", n, phase)
            print(f"| {n} | {phase} | {b[0]:.2f} ({b[3]:.2f}) | {b[1]} | {b[2]} | {b[4]:.1f} | {p[0]:.2f} ({p[3]:.2f}) "
                  f"| {p[1]} | {p[2]} | {p[0] / b[0]:.1f}x |")
    for n in sizes:  # each run, so a reader sees the spread and the load behind a median
        runs = rows[("buildsys", n, "no-change")]
        print(f"buildsys no-change plan of {n}, each run (wall s / CPU s @ load): "
              + ", ".join(f"{r[0]:.2f}/{r[3]:.2f} @ {r[4]:.1f}" for r in runs))


if __name__ == "__main__":
    main()
