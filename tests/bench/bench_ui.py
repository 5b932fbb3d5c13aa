"""Benchmark the web UI: page time over 10,000 runs, page weight, and how soon a printed log line
shows on an open run page.

A real `buildsys server start` process (SQLite) holding 10,000 runs, and a real worker. Measures:

* server time of the first page (`/`) and of the runs list (`/runs`, first and 100th page, and with
  filters): the server's own time per request (the `Server-Timing` header the UI sends), p50 / p95;
* page weight: the bytes a first visit to `/runs` downloads (HTML, CSS, JS), against what a first
  visit to Prefect's own UI downloads (its index.html and the scripts and styles it links, read
  from the installed `prefect` package);
* log latency: a flow prints a line with the time it printed it; a headless chromium with the run's
  page open records when each line appears (MutationObserver); p50 / max over the lines.

    .venv/bin/python tests/bench/bench_ui.py [--runs 10000] [--requests 60] [--lines 20]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from buildsys.pools import default_job_template  # noqa: E402
from buildsys.store import open_store  # noqa: E402
from buildsys.store.base import Change, StateStore  # noqa: E402
from tests.server.running import server_process  # noqa: E402
from tests.services.waiting import wait_for  # noqa: E402
from tests.services.workers import Workers  # noqa: E402

TARGETS = {"p50_ms": 50.0, "weight_kb": 200.0, "log_ms": 500.0}
TARGET_PAGES = ("/", "/runs")  # the pages the p50 target is about; the others are shown for what they cost

FLOW = '''
import time

def talk(lines: int = 20, gap: float = 0.3) -> None:
    for i in range(lines):
        time.sleep(gap)
        print(f"line {i} printed-at {time.time():.6f}", flush=True)
'''

OBSERVER = """
window.__seen = {};
new MutationObserver(() => {
  for (const li of document.querySelectorAll('#logs li')) {
    const m = li.textContent.match(/line (\\d+) printed-at ([0-9.]+)/);
    if (m && !(m[1] in window.__seen)) {
      window.__seen[m[1]] = [parseFloat(m[2]), Date.now() / 1000];  // the system clock, as the flow's time.time()
    }
  }
}).observe(document.getElementById('logs'), {childList: true, subtree: true});
"""


def seed(store: StateStore, project: Path, runs: int) -> None:
    pool = {"type": "process", "base_job_template": default_job_template("process"), "queues": []}
    talk = {"flow_name": "talk", "name": "dev", "entrypoint": "flow.py:talk", "parameters": {},
            "work_pool_name": "local", "job_variables": {},
            "pull_steps": [{"set_working_directory": {"directory": str(project)}}]}
    other = {**talk, "flow_name": "batch", "work_pool_name": "batch"}
    store.apply([Change("create", "pool", "local", spec=pool), Change("create", "pool", "batch", spec=pool),
                 Change("create", "deployment", "talk/dev", spec=talk),
                 Change("create", "deployment", "batch/dev", spec=other)], expected_serial=None)
    for i in range(runs):  # on the "batch" pool, which no worker serves: they stay as made
        run = store.create_run("batch/dev", parameters={"i": i})
        if i % 3 == 0:
            store.request_cancel(run.id)


def server_times(url: str, path: str, count: int) -> tuple[float, float, int]:
    """p50 and p95 of the server's own time (ms) for `path`, and the page's size in bytes."""
    times = []
    size = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        client.get(path)  # warm: templates compiled, connections open
        for _ in range(count):
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text[:300])
            size = len(response.content)
            match = re.search(r"dur=([0-9.]+)", response.headers.get("server-timing", ""))
            assert match, f"no Server-Timing header on {path}"
            times.append(float(match.group(1)))
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], size


def page_weight(url: str, path: str) -> int:
    """HTML plus every script and stylesheet it links (what a first visit downloads)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        html = client.get(path).text
        total = len(html.encode())
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            total += len(client.get(asset).content)
    return total


def prefect_ui_weight() -> int | None:
    """Prefect's UI first load: its index.html and the scripts/styles it links, from the package."""
    try:
        import prefect
    except ImportError:
        return None
    root = Path(prefect.__file__).parent / "server" / "ui"
    index = root / "index.html"
    if not index.is_file():
        return None
    html = index.read_text()
    total = len(html.encode())
    for asset in re.findall(r'(?:src|href)="(?:/PREFECT_UI_SERVE_BASE_REPLACE_PLACEHOLDER)?/?([^"]+\.(?:js|css))"', html):
        found = root / asset
        if found.is_file():
            total += found.stat().st_size
    return total


def log_latency(url: str, run_id: str, lines: int, tmp: Path) -> list[float]:
    from tests.ui.browser import chromium

    with chromium(tmp) as browser:
        browser.get(f"{url}/runs/{run_id}")
        browser.driver.execute_script(OBSERVER)
        seen: dict[str, Any] = wait_for(
            lambda: (s := browser.driver.execute_script("return window.__seen")) and len(s) >= lines and s,
            120, f"{lines} log lines on the page", interval=0.2,
        )
    return sorted((shown - printed) * 1000 for printed, shown in seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--lines", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp_name:
        tmp = Path(tmp_name)
        project = tmp / "project"
        project.mkdir()
        (project / "flow.py").write_text(textwrap.dedent(FLOW))
        db = tmp / "server.db"
        started = time.perf_counter()
        store = open_store(str(db))
        try:
            seed(store, project, args.runs)
        finally:
            store.close()
        print(f"seeded {args.runs} runs in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        with server_process(str(db), tmp, extra=["--housekeeping-seconds", "3600"]) as server:
            rows = []
            for path in ("/", "/runs", "/runs?page=100", "/runs?state=CANCELLED&pool=batch", "/runs?since=24h&page=3",
                         "/pools", "/deployments/batch/dev"):
                p50, p95, size = server_times(server.url, path, args.requests)
                rows.append((path, p50, p95, size))
            weight = page_weight(server.url, "/runs")
            workers = Workers(server.url, tmp)
            try:
                workers.start("--name", "bench")
                api = open_store(server.url)
                try:
                    run = api.create_run("talk/dev", parameters={"lines": args.lines})
                finally:
                    api.close()
                latencies = log_latency(server.url, run.id, args.lines, tmp)
            finally:
                workers.stop_all()
    peer = prefect_ui_weight()
    report(rows, weight, peer, latencies, args)


def report(rows: list[tuple[str, float, float, int]], weight: int, peer: int | None, latencies: list[float],
           args: argparse.Namespace) -> None:
    print(f"\nUI server time over {args.runs:,} runs ({args.requests} requests each; Server-Timing, ms)\n")
    print("| page | p50 ms | p95 ms | HTML KB |")
    print("|---|---:|---:|---:|")
    for path, p50, p95, size in rows:
        print(f"| `{path}` | {p50:.1f} | {p95:.1f} | {size / 1024:.1f} |")
    worst = max(r[1] for r in rows if r[0] in TARGET_PAGES)
    print(f"\nfirst page and runs list ({', '.join(TARGET_PAGES)}): worst p50 {worst:.1f} ms "
          f"(target < {TARGETS['p50_ms']:.0f} ms: {'met' if worst < TARGETS['p50_ms'] else 'MISSED'})")
    line = f"page weight of a first visit to /runs: {weight / 1024:.1f} KB"
    if peer:
        line += f"; Prefect's UI first load: {peer / 1024:.0f} KB ({peer / weight:.0f}x)"
    print(line + f" (target < {TARGETS['weight_kb']:.0f} KB: {'met' if weight / 1024 < TARGETS['weight_kb'] else 'MISSED'})")
    p50 = statistics.median(latencies)
    p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)]
    print(f"log line printed -> shown on the open page: p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {max(latencies):.0f} ms "
          f"over {len(latencies)} lines (target p95 < {TARGETS['log_ms']:.0f} ms: {'met' if p95 < TARGETS['log_ms'] else 'MISSED'})")


if __name__ == "__main__":
    os.environ.setdefault("NO_COLOR", "1")
    main()
