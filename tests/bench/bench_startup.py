"""Benchmark the fixed cost of starting a buildsys process: everyday commands whose own work is small,
each a new process, this checkout's code against another's (`--compare`), alternating in the same
minutes so that the machine's load hits both alike.

    .venv/bin/python tests/bench/bench_startup.py --compare BEFORE_CHECKOUT [--rounds 9] [--only plan-50,…]

Each code runs from its own byte-compiled copy (`git archive` of a checkout laid out as the wheel
installs it, `compileall`) on PYTHONPATH, with its own copy of each project (the caches are keyed
on the code), the stores applied first. Commands: a fresh `plan` (no `.buildsys/`, the store up to date) of 50 and of 1,000
deployments (tests/bench/bench_plan.py's project), `plan --affected=main` after a one-flow change in
a git repository of the 50, a rebuild after one changed input and a no-op build of
tests/bench/bench_build.py's project (1,000 steps; the no-op is the launcher's fast path, a control),
`push --cache-from URL` of its small project (no cache key: the cache is named, never contacted),
and `--version`. Wall and CPU (user + system of the process and its children, `os.wait4`), medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_build  # noqa: E402
import bench_plan  # noqa: E402

Prep = Callable[[], None] | None


# the folders the wheel installs inside the package (pyproject's package-dir): on PYTHONPATH a
# checkout's top-level `steps/` is not `buildsys.steps`, which would then be the running venv's own
PACKAGED = {"steps": "steps", "schemas": "schemas", "recipes": "builtin_recipes"}


def copy_code(checkout: Path, dest: Path) -> Path:
    """A byte-compiled copy of a checkout's committed code laid out as the wheel installs it (what
    an installed package runs); of a plain directory's `buildsys/` (and its `steps/`, …) when it is
    not a git checkout (e.g. a tree with commits reversed)."""
    dest.mkdir(parents=True)
    if (checkout / ".git").exists():
        archive = subprocess.run(["git", "-C", str(checkout), "archive", "HEAD"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    else:
        shutil.copytree(checkout / "buildsys", dest / "buildsys")
        for folder in PACKAGED:
            if (checkout / folder).is_dir():
                shutil.copytree(checkout / folder, dest / folder)
    for folder, name in PACKAGED.items():
        if (dest / folder).is_dir() and not (dest / "buildsys" / name).exists():
            (dest / folder).rename(dest / "buildsys" / name)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest / "buildsys")], check=True, capture_output=True)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--compare", type=Path, required=True, help="the other checkout (before)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--only", help="comma-separated command names")
    args = parser.parse_args()
    env0 = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "BUILDSYS_CACHE_KEY")}
    env0["TOKEN"] = "x"  # the plan project's job variables name $TOKEN
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        codes = {"before": copy_code(args.compare, base / "code-before"), "after": copy_code(HERE.parents[1], base / "code-after")}
        projects: dict[tuple[str, str], Path] = {}
        for label in codes:
            for n in (50, 1000):
                root = projects[(f"plan{n}", label)] = base / label / f"plan{n}"
                (root / "flows").mkdir(parents=True)
                (root / "flows" / "etl.py").write_text(bench_plan.FLOW)
                (root / "prefect.yaml").write_text(bench_plan.project_text(n))
            bench_build.generate(root := base / label / "build")
            projects[("build", label)] = root
            (root := base / label / "small").mkdir()
            bench_build.small_project(root)
            projects[("small", label)] = root
            aff = projects[("affected", label)] = base / label / "affected"
            shutil.copytree(projects[("plan50", label)], aff)
            git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", "-c", "commit.gpgsign=false"]
            subprocess.run([*git, "init", "-q", "-b", "main"], cwd=aff, check=True)
            subprocess.run([*git, "add", "."], cwd=aff, check=True)
            subprocess.run([*git, "commit", "-q", "-m", "base"], cwd=aff, check=True)
            (aff / "flows" / "etl.py").write_text(bench_plan.FLOW.replace('"today"', '"yesterday"'))

        def run(label: str, argv: list[str], cwd: Path) -> tuple[float, float]:
            env = {**env0, "PYTHONPATH": str(codes[label])}
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "buildsys", *argv], cwd=cwd, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            err = proc.stderr.read().decode() if proc.stderr else ""
            if os.waitstatus_to_exitcode(status) not in (0, 2):
                raise SystemExit(f"{label}: buildsys {' '.join(argv)} failed:\n{err[-2000:]}")
            return wall, usage.ru_utime + usage.ru_stime

        touched = [0]

        def commands(label: str) -> dict[str, tuple[list[str], Path, Prep]]:
            state = str(base / f"state-{label}.db")
            build = projects[("build", label)]

            def fresh(root: Path) -> Prep:
                return lambda: shutil.rmtree(root / ".buildsys", ignore_errors=True)

            def change() -> None:
                touched[0] += 1
                with open(build / "src" / "d002s0" / "f00.txt", "a") as fh:
                    fh.write(f"{touched[0]}\n")

            def settle() -> None:  # a no-op needs a manifest written outside the 2 s racy window
                run(label, ["build", "-q"], build)

            return {
                "plan-50": (["--state", state, "plan"], projects[("plan50", label)], fresh(projects[("plan50", label)])),
                "plan-1000": (["--state", state + "1000", "plan"], projects[("plan1000", label)],
                              fresh(projects[("plan1000", label)])),
                "plan-affected-50": (["--state", state, "plan", "--affected=main"], projects[("affected", label)],
                                     fresh(projects[("affected", label)])),
                "build-noop": (["build", "-q"], build, settle),
                "build-after-1-change": (["build", "-j", "2", "-q"], build, change),
                "push-cache-from-small": (["push", "--cache-from", "http://127.0.0.1:9", "-q"], projects[("small", label)], None),
                "version": (["--version"], base, None),
            }

        names = [n for n in commands("after") if not args.only or n in args.only.split(",")]
        for label in codes:  # the stores up to date, each command once (caches written)
            run(label, ["--state", str(base / f"state-{label}.db"), "apply", "--auto-approve", "-q"], projects[("plan50", label)])
            run(label, ["--state", str(base / f"state-{label}.db1000"), "apply", "--auto-approve", "-q"], projects[("plan1000", label)])
            for name in names:
                argv, cwd, prep = commands(label)[name]
                if prep:
                    prep()
                run(label, argv, cwd)
        samples: dict[str, dict[str, list[tuple[float, float]]]] = {n: {"before": [], "after": []} for n in names}
        loads = [os.getloadavg()[0]]
        started = time.strftime("%H:%M", time.gmtime())
        for i in range(args.rounds):
            for name in names:
                for label in (("before", "after") if i % 2 == 0 else ("after", "before")):
                    argv, cwd, prep = commands(label)[name]
                    if prep:
                        prep()
                    samples[name][label].append(run(label, argv, cwd))
            loads.append(os.getloadavg()[0])
    print(f"{started}–{time.strftime('%H:%M', time.gmtime())} UTC, {args.rounds} rounds, load average (1 min) "
          f"{min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print("| command | before: median wall / CPU s | after: median wall / CPU s | CPU after/before |")
    print("|---|---|---|---:|")
    for name, got in samples.items():
        (wb, cb), (wa, ca) = ((statistics.median(w for w, _ in got[k]), statistics.median(c for _, c in got[k]))
                              for k in ("before", "after"))
        print(f"| `{name}` | {wb:.3f} / {cb:.3f} | {wa:.3f} / {ca:.3f} | {ca / cb:.2f} |")
    print("\nEach run's CPU s (before | after):")
    for name, got in samples.items():
        print(f"* `{name}`: " + " | ".join(" ".join(f"{c:.2f}" for _, c in got[k]) for k in ("before", "after")))


if __name__ == "__main__":
    main()
