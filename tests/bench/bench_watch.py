"""Benchmark: watch latency and bursts, and `init` from a cached git recipe (not a pytest test).

    .venv/bin/python tests/bench/bench_watch.py [--edits 20] [--markdown FILE]

1. save → step start: a project of 20 `run_shell_script` steps, each reading its own input file,
   watched by `buildsys.watch.Watcher` (real inotify, the default 30 ms step). Each of N edits rewrites one
   input file; the time from the write to the engine's "start" event of that step is recorded, and
   the cycle must rerun that step alone. Peer: a bare `watchfiles.watch` loop with the same step
   setting, timed from the write to the yield (the floor any watcher built on it pays).
2. checkout of 500 files: a git repo whose two branches differ in 500 files; `git checkout` in
   the watched project; cycles are counted until a later sentinel file arrives on its own.
3. init from a cached git recipe: a recipe repo served by `git daemon` on 127.0.0.1, fetched once;
   then the daemon is stopped and `buildsys init --recipe git+…@SHA` runs from the cache — as a
   library call (resolve + render) and as the CLI in a fresh process. Peers: the first (uncached)
   init, and `git clone --depth 1` of the same repo.

Targets: save → step start p50 < 100 ms; cached git recipe init < 300 ms.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from buildsys.reporter import Event  # noqa: E402
from buildsys.watch import Cycle, Watcher  # noqa: E402

BUILDSYS = str(Path(sys.executable).parent / "buildsys")
TARGETS = {"save_to_step_p50_ms": 100.0, "cached_init_ms": 300.0}
STEPS = 20


@dataclass
class StartTimes:
    """A reporter that remembers when each step started (monotonic seconds)."""

    started: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, event: Event) -> None:
        if event.kind == "start":
            with self.lock:
                self.started[event.label] = time.monotonic()

    def close(self) -> None:
        pass

    def take(self, label: str) -> float | None:
        with self.lock:
            return self.started.pop(label, None)


def write_project(root: Path) -> None:
    steps = "".join(
        f"  - run_shell_script:\n      id: s{i:02}\n      script: cat in/s{i:02}.txt\n"
        f"      inputs: [in/s{i:02}.txt]\n      stream_output: false\n      needs: []\n"
        for i in range(STEPS)
    )
    (root / "in").mkdir(parents=True)
    for i in range(STEPS):
        (root / "in" / f"s{i:02}.txt").write_text("0\n")
    (root / "prefect.yaml").write_text(f"name: bench\nbuild:\n{steps}deployments: []\n")


class Loop:
    def __init__(self, watcher: Watcher) -> None:
        self.cycles: queue.Queue[Cycle] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=watcher.watch, args=(self.cycles.put,),
                                       kwargs={"stop": self.stop}, daemon=True)
        self.thread.start()

    def next(self, timeout: float = 30) -> Cycle:
        return self.cycles.get(timeout=timeout)

    def quiet_count(self, sentinel: Path) -> int:
        """Cycles holding the burst's changes, up to the one that brings ``sentinel`` (written after
        the first cycle of the burst)."""
        count = 0
        while True:
            cycle = self.next()
            count += any(c != f"+ {sentinel.name}" for c in cycle.changed)
            if f"+ {sentinel.name}" in cycle.changed:
                return count
            if count == 1:
                sentinel.write_text("x\n")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def bench_save_to_start(edits: int) -> tuple[list[float], list[float], int]:
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        root = Path(tmp)
        write_project(root)
        times = StartTimes()
        loop = Loop(Watcher(root / "prefect.yaml", reporter=times))
        try:
            first = loop.next()
            assert first.ok and len(first.reran) == STEPS, first
            latencies: list[float] = []
            wrong = 0
            for n in range(edits):
                label = f"s{n % STEPS:02}"
                target = root / "in" / f"{label}.txt"
                t0 = time.monotonic()
                target.write_text(f"{n + 1}\n")
                cycle = loop.next()
                start = times.take(label)
                if start is None or [s.label for s in cycle.reran] != [label]:
                    wrong += 1
                    continue
                latencies.append((start - t0) * 1000)
        finally:
            loop.close()
        return latencies, bench_peer(edits), wrong


def bench_peer(edits: int) -> list[float]:
    """A bare watchfiles loop: write → yield."""
    import watchfiles

    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        root = Path(tmp)
        got: queue.Queue[float] = queue.Queue()
        stop = threading.Event()
        ready = threading.Event()

        def loop() -> None:
            for _ in watchfiles.watch(root, step=30, stop_event=stop, yield_on_timeout=True, rust_timeout=100):
                ready.set()
                got.put(time.monotonic())

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        ready.wait(10)
        out = []
        for n in range(edits):
            while not got.empty():
                got.get()
            t0 = time.monotonic()
            (root / "f.txt").write_text(f"{n}\n")
            while True:
                t = got.get(timeout=10)
                if t > t0 and (root / "f.txt").exists():
                    break
            out.append((t - t0) * 1000)
        stop.set()
        thread.join(timeout=10)
        return out


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def bench_checkout(files: int = 500) -> tuple[int, int]:
    """Cycles for a checkout that rewrites ``files`` files, and for one that adds them in a new folder."""
    with tempfile.TemporaryDirectory(prefix="bench-checkout-") as tmp:
        root = Path(tmp)
        write_project(root)
        (root / "src").mkdir()
        git("init", "-q", "-b", "main", cwd=root)
        for i in range(files):
            (root / "src" / f"m{i:03}.py").write_text(f"X = {i}\n")
        git("add", "-A", cwd=root)
        git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "a", cwd=root)
        git("checkout", "-q", "-b", "other", cwd=root)
        for i in range(files):
            (root / "src" / f"m{i:03}.py").write_text(f"X = {i + 1}\n")
        (root / "more").mkdir()
        for i in range(files):
            (root / "more" / f"n{i:03}.py").write_text(f"Y = {i}\n")
        git("add", "-A", cwd=root)
        git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "b", cwd=root)
        git("checkout", "-q", "main", cwd=root)
        loop = Loop(Watcher(root / "prefect.yaml"))
        try:
            loop.next()
            git("checkout", "-q", "other", cwd=root)  # rewrites src/ and adds more/ (1,000 files)
            rewrite = loop.quiet_count(root / "sentinel1.txt")
            git("checkout", "-q", "main", cwd=root)  # and back: 500 rewritten, 500 deleted
            back = loop.quiet_count(root / "sentinel2.txt")
        finally:
            loop.close()
        return rewrite, back


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def bench_init(runs: int = 10) -> dict[str, float]:
    from buildsys.recipes.cache import resolve_recipe
    from buildsys.recipes.manifest import resolve_fields
    from buildsys.recipes.render import render_recipe

    with tempfile.TemporaryDirectory(prefix="bench-init-") as tmp:
        base = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(base / "cache")
        served = base / "served"
        work = base / "work"
        git("init", "-q", "-b", "main", str(work), cwd=base)
        shutil.copytree(REPO / "recipes" / "docker-git", work / "recipes" / "docker-git")
        shutil.copytree(REPO / "recipes" / "local", work / "recipes" / "local")
        git("add", "-A", cwd=work)
        git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "recipes", cwd=work)
        sha = git("rev-parse", "HEAD", cwd=work)
        served.mkdir()
        git("clone", "-q", "--bare", str(work), str(served / "recipes.git"), cwd=base)
        port = free_port()
        daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
                                   f"--port={port}", f"--base-path={served}", str(served)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)  # a benchmark script, not a test: polling a port is fine here
        url = f"git://127.0.0.1:{port}/recipes.git"
        source = f"git+{url}@{sha}#recipes/docker-git"
        fields = {"image_name": "127.0.0.1:5000/app", "repository": "https://example.com/flows.git"}

        def init_once(target: Path) -> None:
            recipe, _ = resolve_recipe(source)
            values = resolve_fields(recipe, fields, common={"directory": str(target), "name": "app", "branch": "main"})
            render_recipe(recipe, target, values.values)

        try:
            clone = statistics.median(timed(lambda i=i: git("clone", "-q", "--depth", "1", url, str(base / f"c{i}"),
                                                          cwd=base)) for i in range(3))
            first = timed(lambda: init_once(base / "t-first"))
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)
        lib = statistics.median(timed(lambda i=i: init_once(base / f"t{i}")) for i in range(runs))
        env = {**os.environ, "XDG_CACHE_HOME": str(base / "cache")}
        args = [f"--field={k}={v}" for k, v in fields.items()]

        def cli(i: int) -> None:
            subprocess.run([BUILDSYS, "init", "-q", "--recipe", source, *args, str(base / f"cli{i}")],
                           check=True, env=env, capture_output=True)

        cli_ms = statistics.median(timed(lambda i=i: cli(i)) for i in range(runs))
        noop = statistics.median(timed(lambda: subprocess.run([BUILDSYS, "--version"], check=True,
                                                              capture_output=True)) for _ in range(runs))
        return {"first_init_ms": first, "cached_init_ms": lib, "cached_init_cli_ms": cli_ms,
                "git_clone_ms": clone, "cli_startup_ms": noop}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    latencies, peer, wrong = bench_save_to_start(args.edits)
    rewrite, back = bench_checkout()
    init = bench_init()
    p50, p95 = pct(latencies, 50), pct(latencies, 95)
    rows = [
        ("save → affected step started, p50", f"{p50:.0f} ms", f"{pct(peer, 50):.0f} ms (watchfiles write → yield)",
         f"< {TARGETS['save_to_step_p50_ms']:.0f} ms", p50 < TARGETS["save_to_step_p50_ms"]),
        ("save → affected step started, p95", f"{p95:.0f} ms", f"{pct(peer, 95):.0f} ms", "", True),
        (f"edits whose cycle reran exactly that step ({args.edits} edits)", f"{args.edits - wrong}/{args.edits}", "",
         "all", wrong == 0),
        ("git checkout: 500 files rewritten + 500 added → cycles", str(rewrite), "", "1", rewrite == 1),
        ("git checkout back: 500 rewritten + 500 deleted → cycles", str(back), "", "1", back == 1),
        ("init from a cached git recipe (resolve + render, in-process)", f"{init['cached_init_ms']:.0f} ms",
         f"{init['first_init_ms']:.0f} ms first (uncached) init; {init['git_clone_ms']:.0f} ms git clone --depth 1",
         f"< {TARGETS['cached_init_ms']:.0f} ms", init["cached_init_ms"] < TARGETS["cached_init_ms"]),
        ("`buildsys init` from a cached git recipe (CLI, fresh process)", f"{init['cached_init_cli_ms']:.0f} ms",
         f"{init['cli_startup_ms']:.0f} ms `buildsys --version`", f"< {TARGETS['cached_init_ms']:.0f} ms",
         init["cached_init_cli_ms"] < TARGETS["cached_init_ms"]),
    ]
    lines = ["| measure | buildsys | peer | target | met |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {v} | {p} | {t} | {'yes' if ok else 'NO'} |" for m, v, p, t, ok in rows]
    table = "\n".join(lines)
    print(table)
    print(f"\nmachine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; latencies (ms): "
          + ", ".join(f"{x:.0f}" for x in latencies))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
