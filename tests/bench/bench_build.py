"""Benchmark: buildsys vs doit vs GNU make on one synthetic project (not a pytest test).

    .venv/bin/python tests/bench/bench_build.py [--markdown FILE] [--keep] [--repeat N] [--install wheel|editable]

The generated project has 200 deployments, 1,000 cheap steps and 20,000 input files (20 per step).
Deployments come in 50 groups of 4: a group shares a chain of 4 steps (one graph node each, used by
all 4 deployments through YAML aliases), then each deployment has a chain of 4 steps of its own, so
the graph has 50*4 + 200*4 = 1,000 distinct nodes and every deployment runs 8 of them in order.

Every tool does the same work per step: check its 20 input files and its upstream step, and when
out of date write one small stamp file.
- buildsys: a project-local step (`mysteps.py:touch`, a plain Python function, no subprocess),
  `inputs: ["src/<step>/*"]`, run as `buildsys build -j 2`.
- make: one stamp target per step depending on its 20 files and the upstream stamp, recipe
  `@touch $@`, run as `make -r -s -j2`.
- doit: one task per step, `file_dep` = the 20 files + upstream stamp, `targets` = its stamp, a
  Python action writing it (no subprocess), run as `doit -n 2` (and `-n 1`) with each backend.

A "content change" appends a line to an input file of a group's first shared step: exactly 20 steps
depend on it (the 4 shared steps of the group and the 4x4 own steps of its deployments). Which
steps reran is measured the same way for every tool, from the stamp files whose mtime changed;
for buildsys it is also counted from its `--json` events, and both must name exactly the expected
steps. Generated input files get mtimes an hour in the past, so buildsys's "racily clean" window
(files modified within 2 s of being recorded are re-read) does not apply to the no-op runs.

By default buildsys and doit run from a fresh virtual environment holding buildsys's wheel and doit
(`pip install`, as users install them). `--install editable` runs them from the development venv
instead, where every Python start also imports setuptools' editable-install finder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

GROUPS = 50
DEPLOYMENTS_PER_GROUP = 4
SHARED_PER_GROUP = 4
OWN_PER_DEPLOYMENT = 4
FILES_PER_STEP = 20
PYCACHE = os.path.join(tempfile.gettempdir(), "buildsys-bench-pycache")  # main() puts it in its own temporary folder
PAST = time.time() - 3600  # mtime of generated inputs (outside the racily-clean window)

STEP_MODULE = '''"""Bench step: record that the step ran by writing its stamp file."""

import time
from pathlib import Path


def touch(stamp: str) -> dict[str, str]:
    path = Path(stamp)
    path.write_text(str(time.time_ns()))
    return {"stamp": stamp}
'''

DODO = '''"""doit version of the bench graph: one task per step, file_dep on inputs + upstream stamp."""

import json
import os
import time

DOIT_CONFIG = {"verbosity": 0}
STAMPS = os.environ.get("BENCH_STAMPS", "stamps/doit")
with open("graph.json") as fh:
    GRAPH = json.load(fh)


def touch(path):
    with open(path, "w") as out:
        out.write(str(time.time_ns()))


def task_step():
    for name, node in GRAPH.items():
        deps = list(node["files"])
        if node["upstream"]:
            deps.append(f"{STAMPS}/{node['upstream']}")
        stamp = f"{STAMPS}/{name}"
        yield {"name": name, "file_dep": deps, "targets": [stamp], "actions": [(touch, [stamp])]}
'''


@dataclass
class Node:
    name: str
    upstream: str | None
    files: list[str] = field(default_factory=list)


@dataclass
class Bench:
    root: Path
    nodes: dict[str, Node]
    deployments: dict[str, list[str]]  # deployment -> chain of node names
    groups: int

    def dependents(self, name: str) -> set[str]:
        """The node and everything downstream of it."""
        out = {name}
        changed = True
        while changed:
            changed = False
            for n in self.nodes.values():
                if n.upstream in out and n.name not in out:
                    out.add(n.name)
                    changed = True
        return out


# --- generation ------------------------------------------------------------------------------------


def generate(root: Path, groups: int = GROUPS) -> Bench:
    nodes: dict[str, Node] = {}
    deployments: dict[str, list[str]] = {}
    for g in range(groups):
        shared: list[str] = []
        for s in range(SHARED_PER_GROUP):
            name = f"g{g:02d}s{s}"
            nodes[name] = Node(name, shared[-1] if shared else None)
            shared.append(name)
        for k in range(DEPLOYMENTS_PER_GROUP):
            dep = f"d{g * DEPLOYMENTS_PER_GROUP + k:03d}"
            chain = list(shared)
            for s in range(OWN_PER_DEPLOYMENT):
                name = f"{dep}s{s}"
                nodes[name] = Node(name, chain[-1])
                chain.append(name)
            deployments[dep] = chain
    for node in nodes.values():
        folder = root / "src" / node.name
        folder.mkdir(parents=True)
        for i in range(FILES_PER_STEP):
            f = folder / f"f{i:02d}.txt"
            f.write_text(f"{node.name} input {i}\n")
            os.utime(f, (PAST, PAST))
            node.files.append(f"src/{node.name}/f{i:02d}.txt")
    for tool in ("buildsys", "make", "doit", "doit-json", "doit-sqlite3"):
        (root / "stamps" / tool).mkdir(parents=True)
    (root / "mysteps.py").write_text(STEP_MODULE)
    (root / "flows.py").write_text("def main() -> None:\n    pass\n")
    (root / "prefect.yaml").write_text(_prefect_yaml(nodes, deployments))
    (root / "Makefile").write_text(_makefile(nodes))
    (root / "dodo.py").write_text(DODO)
    graph = {n.name: {"files": n.files, "upstream": n.upstream} for n in nodes.values()}
    (root / "graph.json").write_text(json.dumps(graph))
    return Bench(root, nodes, deployments, groups)


def _step_yaml(name: str, indent: str) -> str:
    return (
        f"{indent}mysteps.py:touch:\n"
        f"{indent}  id: {name}\n"
        f"{indent}  stamp: stamps/buildsys/{name}\n"
        f'{indent}  inputs: ["src/{name}/*"]\n'
    )


def _prefect_yaml(nodes: dict[str, Node], deployments: dict[str, list[str]]) -> str:
    out = ["name: bench", "prefect-version: 3.1.0", "definitions:", "  shared_steps:"]
    shared = [n for n in nodes if n.startswith("g")]
    for name in shared:
        out.append(f"    - &{name}\n" + _step_yaml(name, "      ").rstrip("\n"))
    out.append("deployments:")
    for dep, chain in deployments.items():
        out += [f"  - name: {dep}", "    entrypoint: flows.py:main", "    build:"]
        for name in chain:
            if name in shared:
                out.append(f"      - *{name}")
            else:
                out.append("      - " + _step_yaml(name, "        ").lstrip().rstrip("\n"))
    return "\n".join(out) + "\n"


def _makefile(nodes: dict[str, Node]) -> str:
    out = ["all: " + " ".join(f"stamps/make/{n}" for n in nodes), ""]
    for n in nodes.values():
        prereqs = [*n.files, *([f"stamps/make/{n.upstream}"] if n.upstream else [])]
        out += [f"stamps/make/{n.name}: " + " ".join(prereqs), "\t@touch $@", ""]
    return "\n".join(out)


def small_project(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    for i in range(3):
        f = root / "src" / f"m{i}.py"
        f.write_text(f"X = {i}\n")
        os.utime(f, (PAST, PAST))
    (root / "prefect.yaml").write_text(
        "name: small\n"
        "build:\n"
        + "".join(
            f"  - run_shell_script:\n      id: s{i}\n      script: echo {i}\n      inputs: [\"src/m{i}.py\"]\n"
            for i in range(3)
        )
        + "deployments:\n  - name: small\n    entrypoint: flows.py:main\n"
    )
    (root / "flows.py").write_text("def main() -> None:\n    pass\n")
    for f in (root / "prefect.yaml", root / "flows.py", root / "src"):
        os.utime(f, (PAST, PAST))  # like the inputs: outside the cache's 2 s "racily clean" window


# --- tools ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    name: str
    stamps: str
    build: Sequence[str]  # the measured command
    variants: dict[str, Sequence[str]] = field(default_factory=dict)  # extra no-op forms
    env: dict[str, str] = field(default_factory=dict)


def tools(bin_dir: Path) -> list[Tool]:
    buildsys = str(bin_dir / "buildsys")
    doit = str(bin_dir / "doit")
    out = [
        Tool("buildsys", "buildsys", [buildsys, "build", "-j", "2"], {"-j 1": [buildsys, "build", "-j", "1"]}),
        Tool("make", "make", ["make", "-r", "-s", "-j2"], {"-j1": ["make", "-r", "-s"]}),
    ]
    for backend, stamps in (("dbm", "doit"), ("json", "doit-json"), ("sqlite3", "doit-sqlite3")):
        base = [doit, "run", "--backend", backend, "--db-file", f".doit-{backend}.db"]
        out.append(
            Tool(
                f"doit ({backend})",
                stamps,
                [*base, "-n", "2"],
                {"-n 1": base},
                {"BENCH_STAMPS": f"stamps/{stamps}"},
            )
        )
    return out


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # user + system time of the command and its children


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every measured command gets.

    Python tools get a writable bytecode cache outside the repository (as an installed package
    has its .pyc files), even when the caller's environment says PYTHONDONTWRITEBYTECODE.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = PYCACHE
    env["NO_COLOR"] = "1"
    return {**env, **(extra or {})}


def run(cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[Timing, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(env), capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(elapsed, cpu), proc.stdout


def stamp_times(root: Path, tool: Tool) -> dict[str, int]:
    folder = root / "stamps" / tool.stamps
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def reran(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {name for name, t in after.items() if before.get(name) != t}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def wall(series: Sequence[Timing]) -> float:
    return median([t.wall for t in series])


def cpu(series: Sequence[Timing]) -> float:
    return median([t.cpu for t in series])


def _fmt(series: Sequence[Timing]) -> str:
    return "[" + ", ".join(f"{t.wall:.3f}" for t in series) + "]"


# --- measurement ------------------------------------------------------------------------------------


@dataclass
class Row:
    colds: list[Timing] = field(default_factory=list)
    noop: list[Timing] = field(default_factory=list)
    variants: dict[str, list[Timing]] = field(default_factory=dict)
    change: list[Timing] = field(default_factory=list)
    change_reran: list[int] = field(default_factory=list)
    change_exact: bool = True
    touch_reran: int = 0


def reset(root: Path, tool: Tool) -> None:
    """Forget everything a tool built: its stamps and its own state (a fresh checkout for it)."""
    folder = root / "stamps" / tool.stamps
    shutil.rmtree(folder)
    folder.mkdir()
    if tool.name == "buildsys":
        shutil.rmtree(root / ".buildsys", ignore_errors=True)
    if tool.name.startswith("doit ("):
        for db in root.glob(f".doit-{tool.name[6:-1]}.db*"):
            db.unlink()


def measure(bench: Bench, repeat: int, log: Callable[[str], None], bin_dir: Path) -> dict[str, Row]:
    rows = {t.name: Row() for t in tools(bin_dir)}
    every = set(bench.nodes)
    # Cold builds: each tool from nothing, one tool after the other per round (load hits all alike).
    for r in range(repeat):
        for tool in tools(bin_dir):
            if r:
                reset(bench.root, tool)
            timing, _ = run(tool.build, bench.root, tool.env)
            after = stamp_times(bench.root, tool)
            if set(after) != every:
                raise SystemExit(f"{tool.name}: cold build made {len(after)} stamps, expected {len(every)}")
            rows[tool.name].colds.append(timing)
            log(f"cold   {tool.name:<16} {timing.wall:8.3f} s (CPU {timing.cpu:.3f} s)")
    # No-op: every form of every tool once per round, so a change in machine load hits all alike.
    forms = [(tool, label, cmd) for tool in tools(bin_dir) for label, cmd in [("", tool.build), *tool.variants.items()]]
    stamps = {tool.name: stamp_times(bench.root, tool) for tool in tools(bin_dir)}
    series: dict[tuple[str, str], list[Timing]] = {(tool.name, label): [] for tool, label, _ in forms}
    for _ in range(repeat):
        for tool, label, cmd in forms:
            series[(tool.name, label)].append(run(cmd, bench.root, tool.env)[0])
    for tool, label, _ in forms:
        if reran(stamps[tool.name], stamp_times(bench.root, tool)):
            raise SystemExit(f"{tool.name} {label}: a no-op rebuild ran steps")
        got = series[(tool.name, label)]
        if label:
            rows[tool.name].variants[label] = got
        else:
            rows[tool.name].noop = got
        log(f"no-op  {tool.name:<16} {label:<5} median {wall(got):.3f} s (CPU {cpu(got):.3f} s) {_fmt(got)}")
    # Content change: append to one input of a group's first shared step, rebuild with every tool.
    for r in range(repeat):
        target = f"g{(r * 7) % bench.groups:02d}s0"
        expected = bench.dependents(target)
        changed = bench.root / bench.nodes[target].files[r % FILES_PER_STEP]
        with open(changed, "a") as fh:
            fh.write(f"change {r}\n")
        log(f"change {changed.relative_to(bench.root)}: {len(expected)} steps depend on it")
        for tool in tools(bin_dir):
            row = rows[tool.name]
            before = stamp_times(bench.root, tool)
            cmd = [*tool.build, "--json"] if tool.name == "buildsys" else tool.build
            timing, out = run(cmd, bench.root, tool.env)
            steps = reran(before, stamp_times(bench.root, tool))
            row.change.append(timing)
            row.change_reran.append(len(steps))
            if steps != expected:
                row.change_exact = False
                log(f"!! {tool.name} reran {sorted(steps)}")
            if tool.name == "buildsys" and _buildsys_events(out) != steps:
                row.change_exact = False
                log(f"!! buildsys --json says it ran {sorted(_buildsys_events(out))}")
    # mtime-only touch (same content): make goes by mtime, the content-hashing tools do not rerun.
    touched = bench.root / bench.nodes[f"g{3 % bench.groups:02d}s0"].files[0]
    os.utime(touched, None)
    for tool in tools(bin_dir):
        before = stamp_times(bench.root, tool)
        run(tool.build, bench.root, tool.env)
        rows[tool.name].touch_reran = len(reran(before, stamp_times(bench.root, tool)))
    return rows


def _buildsys_events(stdout: str) -> set[str]:
    """The steps buildsys says it ran, from its `--json` events."""
    ran = set()
    for line in stdout.splitlines():
        event = json.loads(line)
        if event["event"] == "done":
            ran.add(event["step"])
    return ran


def small_timings(root: Path, repeat: int, bin_dir: Path) -> dict[str, list[Timing]]:
    """`buildsys --help`, a no-op build of a 3-step project, and Python's own start-up for scale."""
    small_project(root)
    buildsys = str(bin_dir / "buildsys")
    run([buildsys, "build"], root)  # cold
    out: dict[str, list[Timing]] = {}
    for label, cmd in (
        ("`python -c pass` (interpreter start-up, for scale)", [str(bin_dir / "python"), "-c", "pass"]),
        ("`buildsys --help`", [buildsys, "--help"]),
        ("`buildsys build`, no-op, 3 steps", [buildsys, "build"]),
    ):
        run(cmd, root)  # warm the page and bytecode caches
        out[label] = [run(cmd, root)[0] for _ in range(max(repeat, 5))]
    return out


# --- report -----------------------------------------------------------------------------------------


def install(base: Path, form: str, log: Callable[[str], None]) -> Path:
    """The bin directory the Python tools run from: a fresh venv with buildsys's wheel and doit,
    or (`editable`) the development venv this script runs in."""
    if form == "editable":
        return Path(sys.executable).parent
    wheels, venv = base / "wheels", base / "venv"
    started = time.time()
    quiet(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO))
    quiet(sys.executable, "-m", "venv", str(venv))
    doit = subprocess.run([sys.executable, "-m", "pip", "show", "doit"], capture_output=True, text=True, check=True)
    version = next(line.split(":", 1)[1].strip() for line in doit.stdout.splitlines() if line.startswith("Version:"))
    wheel = next(wheels.glob("buildsys-*.whl"))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    quiet(*pip, str(wheel), f"doit=={version}")
    log(f"installed {wheel.name} and doit {version} into {venv} in {time.time() - started:.1f} s")
    return venv / "bin"


def quiet(*cmd: str) -> None:
    """Run a set-up command; its output only matters when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def machine(started: float, bin_dir: Path, form: str) -> str:
    cpu_model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    make = subprocess.run(["make", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    doit = subprocess.run([str(bin_dir / "doit"), "--version"], capture_output=True, text=True).stdout.split()[0]
    load = os.getloadavg()
    return (
        f"run started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; nproc {os.cpu_count()} ({cpu_model}), "
        f"{mem_kb / 1024 / 1024:.1f} GiB RAM, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; {make}; doit {doit}; buildsys at commit "
        f"{commit.stdout.strip() or '?'} ({'wheel in a fresh venv' if form == 'wheel' else 'editable install'}); load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )


def report(
    rows: dict[str, Row], small: dict[str, list[Timing]], bench: Bench, repeat: int, started: float, bin_dir: Path, install_form: str
) -> str:
    steps = len(bench.nodes)
    files = sum(len(n.files) for n in bench.nodes.values())
    expected = len(bench.dependents("g00s0"))
    lines = [
        f"Synthetic project: {len(bench.deployments)} deployments, {steps} steps (graph nodes), "
        f"{files:,} input files. Wall-clock seconds, median of {repeat} runs (CPU = user+system seconds "
        "of the command and its children).",
        "",
        "| tool | cold build (wall / CPU) | no-op rebuild (wall / CPU) | no-op, other form "
        f"| after changing 1 input (wall / CPU) | steps rerun (expected {expected}) | after `touch` (mtime only) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        other = "; ".join(f"{wall(v):.3f} / {cpu(v):.3f} (`{k}`)" for k, v in row.variants.items())
        exact = "exactly those" if row.change_exact else "NOT the expected set"
        counts = ", ".join(str(c) for c in sorted(set(row.change_reran)))
        lines.append(
            f"| {name} | {wall(row.colds):.2f} / {cpu(row.colds):.2f} | **{wall(row.noop):.3f}** / {cpu(row.noop):.3f} | "
            f"{other} | {wall(row.change):.3f} / {cpu(row.change):.3f} | {counts} ({exact}) | {row.touch_reran} reran |"
        )
    bs = rows["buildsys"].noop
    best: dict[str, tuple[str, list[Timing]]] = {}
    for name, row in rows.items():
        family = "doit" if name.startswith("doit") else name
        for form, series in (("", row.noop), *row.variants.items()):
            label = f"{name} {form}".strip()
            if family not in best or wall(series) < wall(best[family][1]):
                best[family] = (label, series)
    doit_label, doit = best["doit"]
    make_label, make = best["make"]
    lines += [
        "",
        f"No-op, buildsys vs the fastest doit form ({doit_label}): doit/buildsys = "
        f"**{wall(doit) / wall(bs):.2f}×** wall, {cpu(doit) / cpu(bs):.2f}× CPU (target ≥ 5×).",
        f"No-op, buildsys vs the fastest make form ({make_label}): buildsys/make = "
        f"**{wall(bs) / wall(make):.1f}×** wall, {cpu(bs) / cpu(make):.1f}× CPU (target ≤ 2×).",
        "",
        *_targets(rows),
        "",
        "| command (3-step project) | median wall | median CPU | runs (wall) |",
        "|---|---:|---:|---|",
    ]
    for label, series in small.items():
        lines.append(f"| {label} | {wall(series) * 1000:.0f} ms | {cpu(series) * 1000:.0f} ms | {_fmt(series)} |")
    lines += ["", f"Machine: {machine(started, bin_dir, install_form)}."]
    return "\n".join(lines) + "\n"


# The command as the console script runs it, under cProfile. The launcher ends a command with
# os._exit (no interpreter teardown), which would end the process before cProfile writes its file.
PROFILED = """\
import cProfile, os, sys
from buildsys import launcher
target = sys.argv[1]
sys.argv = ["buildsys", *sys.argv[2:]]
os._exit = sys.exit
cProfile.run("launcher.main()", target)
"""


def profile(bench: Bench, bin_dir: Path, log: Callable[[str], None], top: int = 14) -> str:
    """cProfile of one buildsys rebuild after a change and one cold build (run last: it changes
    the project): the functions with the most cumulative time, buildsys's own and the libraries'."""
    import io
    import pstats

    buildsys = next(t for t in tools(bin_dir) if t.name == "buildsys")
    python = str(bin_dir / "python")
    out = []
    for label in ("rebuild after changing 1 input", "cold build"):
        if label == "cold build":
            reset(bench.root, buildsys)
        else:
            with open(bench.root / bench.nodes["g01s0"].files[0], "a") as fh:
                fh.write("profiled change\n")
        target = bench.root.parent / f"{label.split()[0]}.prof"
        timing, _ = run([python, "-c", PROFILED, str(target), *buildsys.build[1:]], bench.root)
        text = io.StringIO()
        stats = pstats.Stats(str(target), stream=text)
        stats.sort_stats("cumulative").print_stats(r"buildsys/(?!cli/|launcher|__main__)|sqlite3|yaml|pickle|json", top)
        rows = [line for line in text.getvalue().splitlines() if line.strip() and line.lstrip()[0].isdigit()]
        total = getattr(stats, "total_tt", 0.0)
        out += [f"{label} under cProfile: {total:.2f} s profiled ({timing.wall:.2f} s wall), top {top} by cumulative time:", "",
                "```", *(re.sub(r"\S*site-packages/|\S*/buildsys/", "", line) for line in rows), "```", ""]
        log(f"profiled {label}: {target}")
    return "\n".join(out)


def _targets(rows: dict[str, Row]) -> list[str]:
    """Issue 18's targets: a rebuild after one change faster than doit and within 3x of make, a
    cold build faster than doit and within 2x of make (doit: its fastest backend for each)."""
    bs, make = rows["buildsys"], rows["make"]
    doits = [row for name, row in rows.items() if name.startswith("doit")]
    out = []
    for label, limit in (("cold build", 2.0), ("rebuild after changing 1 input", 3.0)):
        pick: Callable[[Row], list[Timing]] = (lambda r: r.colds) if label == "cold build" else (lambda r: r.change)
        doit = min(doits, key=lambda r: wall(pick(r)))
        vs_doit, vs_make = wall(pick(doit)) / wall(pick(bs)), wall(pick(bs)) / wall(pick(make))
        cpu_doit, cpu_make = cpu(pick(doit)) / cpu(pick(bs)), cpu(pick(bs)) / cpu(pick(make))
        met = "met" if vs_doit > 1 and vs_make <= limit else "NOT met"
        out.append(
            f"{label[0].upper() + label[1:]}: doit/buildsys = **{vs_doit:.2f}×** wall ({cpu_doit:.2f}× CPU), "
            f"buildsys/make = **{vs_make:.2f}×** wall ({cpu_make:.2f}× CPU); target faster than doit and "
            f"≤ {limit:.0f}× make: **{met}** (on wall time)."
        )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per no-op / change figure (default 5)")
    parser.add_argument("--groups", type=int, default=GROUPS, help="groups of 4 deployments (default 50: full size)")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the generated projects")
    parser.add_argument("--profile", action="store_true", help="also profile a rebuild after a change and a cold build")
    parser.add_argument(
        "--install", choices=("wheel", "editable"), default="wheel", help="how buildsys and doit are installed (default: wheel)"
    )
    args = parser.parse_args(argv)
    if shutil.which("make") is None:
        raise SystemExit("GNU make is not installed")
    global PYCACHE
    base = Path(tempfile.mkdtemp(prefix="buildsys-bench-"))
    PYCACHE = str(base / "pycache")  # removed with the rest (it was left in the system's temporary folder)
    started = time.time()
    try:
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        bin_dir = install(base, args.install, log)
        bench = generate(base / "big", args.groups)
        log(f"generated {len(bench.nodes)} steps in {time.time() - started:.1f} s under {base}")
        rows = measure(bench, args.repeat, log, bin_dir)
        small = small_timings(base / "small", args.repeat, bin_dir)
        text = report(rows, small, bench, args.repeat, started, bin_dir, args.install)
        if args.profile:
            text += "\n" + profile(bench, bin_dir, log)
        print(text)
        if args.markdown:
            args.markdown.write_text(text)
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
