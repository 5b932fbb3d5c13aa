"""Benchmark plan and apply: 100, 1,000 and 10,000 deployments against a SQLite state file.

For each size, in a fresh process (so peak memory is that size's own): load the project and
compute desired state, plan against a cold store, apply all of it, re-plan with no change, then
change 1% of the deployments and plan + apply that. Times are medians of several runs; `plan`
columns include loading and validating the project file, as `buildsys plan` does.

    .venv/bin/python tests/bench/bench_plan.py [--sizes 100,1000,10000] [--runs 5]
    .venv/bin/python tests/bench/bench_plan.py --ci [--sizes 1000,10000] [--compare OTHER_CHECKOUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLOW = 'from prefect import flow\n\n\n@flow(name="etl")\ndef etl(day: str = "today", shard: int = 0):\n    """Load."""\n'
TARGETS = {"no_change_plan_1000": 1.0, "apply_new_1000": 3.0, "peak_mb_10000": 200.0}


def project_text(n: int, changed: frozenset[int] = frozenset()) -> str:
    lines = [
        "name: bench",
        "work_pools:",
        "  - {name: pool, type: process, queues: [{name: q1, priority: 1}]}",
        "variables: {region: eu-west-1}",
        "deployments:",
    ]
    for i in range(n):
        tag = "changed" if i in changed else "etl"
        lines += [
            f"  - name: dep-{i:05d}",
            "    entrypoint: flows/etl.py:etl",
            f"    tags: [{tag}, team-{i % 7}]",
            f"    parameters: {{day: today, shard: {i}}}",
            "    schedules: [{cron: '0 2 * * *', timezone: Europe/Paris}]",
            "    work_pool:",
            "      name: pool",
            "      job_variables: {env: {LOG_LEVEL: INFO, TOKEN: '{{ $TOKEN }}'}}",
            "    pull: [{set_working_directory: {directory: /opt/app}}]",
        ]
    return "\n".join(lines) + "\n"


def timed(fn: Callable[..., Any], *args: Any) -> tuple[tuple[float, float], Any]:
    """((wall seconds, CPU seconds of this process and its children), value)."""
    start, cpu = time.perf_counter(), _cpu()
    value = fn(*args)
    return (time.perf_counter() - start, _cpu() - cpu), value


def _cpu() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def one_size(n: int, runs: int) -> dict[str, Any]:
    from buildsys.caches import load_project
    from buildsys.desired import read_desired
    from buildsys.plan import plan
    from buildsys.reconcile import apply_plan, snapshot
    from buildsys.store.sql import SqlStore

    def diff_only(store: SqlStore, want: Any) -> Any:
        serial, actual = snapshot(store)
        return plan(want, actual, serial=serial)

    def desired(file: Path) -> Any:
        """As `buildsys plan` reads the working tree: the cache layer's load, then desired state."""
        return read_desired(file, loaded=load_project(file))

    def make_plan(store: SqlStore, file: Path) -> Any:
        _, want = desired(file)
        serial, actual = snapshot(store)
        return plan(want, actual, serial=serial)

    keys = ("load", "plan_cold", "apply_new", "plan_same", "diff_same", "plan_1pct", "apply_1pct")
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    peak_after_load = 0.0
    changes: dict[str, int] = {}
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "flows").mkdir()
            (root / "flows" / "etl.py").write_text(FLOW)
            file = root / "prefect.yaml"
            file.write_text(project_text(n))
            store = SqlStore.sqlite(root / ".buildsys" / "state.db")
            try:
                t, (_, want) = timed(desired, file)
                out["load"].append(t)
                peak_after_load = max(peak_after_load, peak_mb())
                del want
                # Each plan is dropped once used, as a `buildsys plan` / `apply` process would.
                t, cold = timed(make_plan, store, file)
                out["plan_cold"].append(t)
                t, _ = timed(apply_plan, store, cold)
                out["apply_new"].append(t)
                changes = {"cold": cold.summary["add"]}
                del cold
                t, same = timed(make_plan, store, file)
                out["plan_same"].append(t)
                assert not same.has_changes, same.summary
                del same
                _, want = desired(file)
                t, _ = timed(diff_only, store, want)
                out["diff_same"].append(t)
                del want
                file.write_text(project_text(n, frozenset(range(0, n, 100))))
                t, pct = timed(make_plan, store, file)
                out["plan_1pct"].append(t)
                t, _ = timed(apply_plan, store, pct)
                out["apply_1pct"].append(t)
                changes["1pct"] = pct.summary["change"]
                del pct
            finally:
                store.close()
    result: dict[str, Any] = {k: _median(v) for k, v in out.items()}
    result["n"] = n
    result["changes"] = changes
    result["peak_mb"] = peak_mb()
    result["peak_load_mb"] = peak_after_load
    return result


def _median(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(w for w, _ in samples), statistics.median(c for _, c in samples)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cli_processes(n: int) -> dict[str, Any]:
    """The commands themselves, each a new process (interpreter start included): `plan` on a fresh
    checkout (nothing cached), `apply`, then `plan` with no change three times. Their wall time,
    and the peak memory (max RSS) of each process, read with wait4."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "flows").mkdir()
        (root / "flows" / "etl.py").write_text(FLOW)
        (root / "prefect.yaml").write_text(project_text(n))
        cmd = [sys.executable, "-m", "buildsys"]
        out: dict[str, Any] = {}
        out["plan_fresh_s"], out["plan_fresh_mb"], _ = _process([*cmd, "plan"], root)
        out["apply_s"], out["apply_mb"], _ = _process([*cmd, "apply", "--auto-approve", "-q"], root)
        same = [_process([*cmd, "plan", "--detailed-exitcode"], root) for _ in range(3)]
        assert all(code == 0 for _, _, code in same), "a no-change plan found changes"
        out["plan_same_s"] = statistics.median(s for s, _, _ in same)
        out["plan_same_mb"] = max(mb for _, mb, _ in same)
        return out


def ci_fresh_plans(sizes: list[int], runs: int, compare: Path | None) -> str:
    """`buildsys plan --detailed-exitcode` as CI runs it: a fresh checkout (no `.buildsys/`), the
    store already up to date (applied once beforehand, kept outside the project). Each run is a new
    process; wall, CPU (user + system) and peak RSS, medians of `runs`. With `compare`, the same
    runs with that checkout's code (PYTHONPATH), alternating with this one so load hits both alike."""
    import shutil

    here = Path(__file__).resolve().parents[2]
    codes = {"this checkout": here, **({f"{compare}": compare} if compare else {})}
    lines = [
        "| deployments | code | wall s (median) | CPU s (median) | peak RSS MB (max) | runs (wall) |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for code in codes.values():
        # compiled bytecode, as an installed package has it: with PYTHONDONTWRITEBYTECODE set (as on
        # this machine) every plan process would otherwise compile buildsys's modules at its start
        subprocess.run([sys.executable, "-m", "compileall", "-q", "buildsys", "steps"], cwd=code, check=True,
                       capture_output=True)
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "project"
            (root / "flows").mkdir(parents=True)
            (root / "flows" / "etl.py").write_text(FLOW)
            (root / "prefect.yaml").write_text(project_text(n))
            base = {label: [sys.executable, "-m", "buildsys", "--state", str(Path(tmp) / f"state-{i}.db")]
                    for i, label in enumerate(codes)}  # a store each: an older code may not read a newer store
            for label, code in codes.items():
                _process([*base[label], "apply", "--auto-approve", "-q"], root, env={"PYTHONPATH": str(code)})
            samples: dict[str, list[tuple[float, float, float]]] = {label: [] for label in codes}
            for _ in range(runs):
                for label, code in codes.items():
                    shutil.rmtree(root / ".buildsys", ignore_errors=True)
                    cmd = [*base[label], "plan", "--detailed-exitcode"]
                    wall, mb, rc, cpu = _process_cpu(cmd, root, {"PYTHONPATH": str(code)})
                    assert rc == 0, f"{label}: the plan of an applied project found changes"
                    samples[label].append((wall, cpu, mb))
            for label, got in samples.items():
                walls = ", ".join(f"{w:.2f}" for w, _, _ in got)
                lines.append(
                    f"| {n:,} | {label} | {statistics.median(w for w, _, _ in got):.3f} | "
                    f"{statistics.median(c for _, c, _ in got):.3f} | {max(m for _, _, m in got):.0f} | [{walls}] |"
                )
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return "\n".join([*lines, "", f"load average at the end: {load} on {os.cpu_count()} CPUs"])


def _process_cpu(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, int, float]:
    """(wall seconds, peak MB, exit code, CPU seconds) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **env})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 2):
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, code, usage.ru_utime + usage.ru_stime


def _process(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak MB, exit code) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode not in (0, 2):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ci", action="store_true", help="only the CI plan: fresh checkout, store up to date")
    parser.add_argument("--compare", type=Path, help="with --ci: also run another checkout's code (PYTHONPATH)")
    args = parser.parse_args()
    # the job variables say {{ $TOKEN }}: plan resolves deploy-time values and refuses an unset one
    os.environ.setdefault("TOKEN", "bench-token")
    if args.ci:
        print(ci_fresh_plans([int(x) for x in args.sizes.split(",")], args.runs, args.compare))
        return
    if args.child:
        runs = args.runs if args.child <= 1000 else 1
        print(json.dumps(one_size(args.child, runs)))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(n), "--runs", str(args.runs)],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(proc.stdout)
        row["cli"] = cli_processes(n)
        rows.append(row)
    print(table(rows))
    print(verdict(rows))
    print(
        f"load average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"
    )


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "In process (library calls, one SQLite state file):\n\n"
        "| deployments | load + desired | plan (cold store) | apply (all new) | re-plan, no change "
        "| of which snapshot + diff | plan, 1% changed | apply, 1% changed "
        "| peak memory (after loading the project) |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        cells = [f"{r['n']:,}"]
        cells += [_t(r[k]) for k in ("load", "plan_cold", "apply_new", "plan_same", "diff_same")]
        cells.append(f"{_t(r['plan_1pct'])}, {r['changes']['1pct']} changes")
        cells.append(_t(r["apply_1pct"]))
        cells.append(f"{r['peak_mb']:.0f} MB ({r['peak_load_mb']:.0f} MB)")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "The commands, each a new process (wall time / peak RSS):",
        "",
        "| deployments | `buildsys plan`, fresh checkout | `buildsys apply --auto-approve` (all new) "
        "| `buildsys plan`, no change (median of 3) |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r["cli"]
        lines.append(
            f"| {r['n']:,} | {c['plan_fresh_s']:.2f} s / {c['plan_fresh_mb']:.0f} MB "
            f"| {c['apply_s']:.2f} s / {c['apply_mb']:.0f} MB | {c['plan_same_s']:.2f} s / {c['plan_same_mb']:.0f} MB |"
        )
    return "\n".join(lines)


def _t(sample: tuple[float, float]) -> str:
    return f"{sample[0]:.3f} s (cpu {sample[1]:.3f})"


def verdict(rows: list[dict[str, Any]]) -> str:
    by = {r["n"]: r for r in rows}
    checks = []
    if 1000 in by:
        checks.append(f"no-change plan of 1,000: {_t(by[1000]['plan_same'])} (target < 1 s)")
        checks.append(f"apply of 1,000 new: {_t(by[1000]['apply_new'])} (target < 3 s)")
    if 10000 in by:
        r = by[10000]
        processes = max(r["cli"][k] for k in ("plan_fresh_mb", "apply_mb", "plan_same_mb"))
        checks.append(
            f"peak memory at 10,000: {r['peak_mb']:.0f} MB in process, {processes:.0f} MB for the largest "
            "command process (target < 200 MB)"
        )
    return "\n".join(checks)


if __name__ == "__main__":
    main()
