"""Benchmark buildsys in CI at scale (not a pytest test).

    .venv/bin/python tests/bench/bench_ci.py [--part affected] [--runs 5] [--deployments 50] [--groups 10]

Part `affected` (`affected_plan`): a git repository with 50 deployments in 10 groups; each group's
deployments share one Docker image built from the group's folder (a small image FROM the suite's
local Python base image) and name it in their job variables. The base is built and applied, then
one flow file changes (a new parameter: its group's image and its deployment's parameter schema
differ). Timed, each as a whole `buildsys` process, median of `--runs`: `buildsys plan` (every
deployment) against `buildsys plan --affected=main` (the group's deployments). Both must show the
same changes. Target: the affected plan at least 5x faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

AFFECTED_TARGET = 5.0


# --- part `affected`: plan --affected against plan after a one-flow change -------------------------------


def affected_project(root: Path, deployments: int, groups: int, base_image: str) -> list[str]:
    """Write the project; returns the flow files (flows/gG/dN.py), one per deployment."""
    lines = [
        "name: bench-ci",
        "work_pools:",
        "  - {name: docker-pool, type: docker}",
        "deployments:",
    ]
    flows = []
    for g in range(groups):
        folder = root / "flows" / f"g{g}"
        folder.mkdir(parents=True)
        (folder / "Dockerfile").write_text(f"FROM {base_image}\nCOPY . /app\n")
    for n in range(deployments):
        g = n % groups
        flow = f"flows/g{g}/d{n}.py"
        (root / flow).write_text(f"def run_{n}(day: str = 'today'):\n    print(day)\n")
        flows.append(flow)
        lines += [
            f"  - name: d{n}",
            f"    entrypoint: {flow}:run_{n}",
            f"    tags: [group-{g}]",
            "    build:",
            "      - prefect_docker.deployments.steps.build_docker_image:",
            "          id: build_image",
            f"          image_name: bench-ci/g{g}",
            f"          path: flows/g{g}",
            "          dockerfile: Dockerfile",
            "    work_pool:",
            "      name: docker-pool",
            "      job_variables: {image: '{{ build_image.image }}'}",
        ]
    (root / "prefect.yaml").write_text("\n".join(lines) + "\n")
    (root / ".gitignore").write_text(".buildsys/\n")
    return flows


def bs(root: Path, *args: str) -> tuple[tuple[float, float], subprocess.CompletedProcess[str]]:
    """Run buildsys; ((wall seconds, CPU seconds of the process and its children), the result)."""
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1"}, timeout=1800)
    took = (time.perf_counter() - start, _children_cpu() - cpu)
    if done.returncode not in (0, 2):
        raise SystemExit(f"buildsys {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return took, done


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


IN_PROCESS = """
import json, sys, time
from click.testing import CliRunner
from buildsys.cli import cli
from buildsys.cli.app import App
def run(*args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = CliRunner().invoke(cli, list(args), obj=App(), catch_exceptions=False)
    assert result.exit_code in (0, 2), result.output
    return time.perf_counter() - wall, time.process_time() - cpu
run("--json", "plan"); run("--json", "plan", "--affected=main")  # imports and caches warm
times = {"plan": [], "affected": []}
for _ in range(int(sys.argv[1])):
    times["plan"].append(run("--json", "plan"))
    times["affected"].append(run("--json", "plan", "--affected=main"))
print(json.dumps(times))
"""


def in_process(root: Path, runs: int) -> dict[str, list[tuple[float, float]]]:
    """Both commands run again and again in one warm process: the work each does, without the
    interpreter start and imports every whole process pays."""
    done = subprocess.run([sys.executable, "-c", IN_PROCESS, str(runs)], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO)}, timeout=1800, check=True)
    times: dict[str, list[tuple[float, float]]] = json.loads(done.stdout.strip().splitlines()[-1])
    return times


def changes(stdout: str) -> list[tuple[str, str]]:
    return sorted((c["action"], c["name"]) for c in json.loads(stdout)["changes"])


def affected_plan(runs: int, deployments: int, groups: int) -> dict[str, object]:
    """Time `plan` and `plan --affected` after a one-flow change; returns the figures."""
    from tests.infra.docker import connect, ensure_base_image

    client = connect()
    base_image = ensure_base_image(client)
    with tempfile.TemporaryDirectory(prefix="bench-ci-affected-") as tmp:
        root = Path(tmp)
        flows = affected_project(root, deployments, groups, base_image)
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "base")
        (build_s, _), _ = bs(root, "build")
        bs(root, "apply", "--auto-approve")
        changed = flows[len(flows) // 2]
        text = (root / changed).read_text()
        (root / changed).write_text(text.replace("day: str = 'today'", "day: str = 'today', dry: bool = False"))
        full: list[tuple[float, float]] = []
        narrow: list[tuple[float, float]] = []
        for _ in range(runs):  # alternated, so load on the machine falls on both alike
            took, done = bs(root, "--json", "plan")
            full.append(took)
            full_changes = changes(done.stdout)
            took, done = bs(root, "--json", "plan", "--affected=main")
            narrow.append(took)
            narrow_changes = changes(done.stdout)
        if full_changes != narrow_changes:
            raise SystemExit(f"plan and plan --affected disagree:\n{full_changes}\n{narrow_changes}")
        warm = in_process(root, runs)
        _, done = bs(root, "--json", "affected", "--base", "main")
        found = json.loads(done.stdout)
        with_images = {img for img in client.images.list(name="bench-ci/*") for _ in [0]}
        for image in with_images:
            for tag in image.tags:
                client.images.remove(tag, force=True)
    full_s, narrow_s = statistics.median(t[0] for t in full), statistics.median(t[0] for t in narrow)
    full_cpu, narrow_cpu = statistics.median(t[1] for t in full), statistics.median(t[1] for t in narrow)
    return {
        "deployments": deployments,
        "groups": groups,
        "changed": changed,
        "cold_build_s": build_s,
        "plan_s": full_s,
        "plan_affected_s": narrow_s,
        "plan_cpu_s": full_cpu,
        "plan_affected_cpu_s": narrow_cpu,
        "ratio": full_s / narrow_s,
        "cpu_ratio": full_cpu / narrow_cpu,
        "in_process_plan": _medians(warm["plan"]),
        "in_process_affected": _medians(warm["affected"]),
        "plan_runs": [t[0] for t in full],
        "plan_affected_runs": [t[0] for t in narrow],
        "changes": full_changes,
        "affected_steps": [s["step"] for s in found["steps"]],
        "affected_deployments": [d["name"] for d in found["deployments"]],
    }


def _medians(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in samples), statistics.median(t[1] for t in samples)


def report_affected(figures: dict[str, object], runs: int) -> str:
    ratio = float(figures["ratio"])  # type: ignore[arg-type]
    lines = [
        f"plan --affected vs plan after a one-flow change ({figures['deployments']} deployments, "
        f"{figures['groups']} image groups; changed {figures['changed']}; median of {runs} whole processes)",
        "",
        "| command | median wall s | median CPU s | wall s of each run |",
        "|---|---:|---:|---|",
        f"| `buildsys plan` | {figures['plan_s']:.2f} | {figures['plan_cpu_s']:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in figures['plan_runs'])} |",  # type: ignore[attr-defined]
        f"| `buildsys plan --affected=main` | {figures['plan_affected_s']:.2f} | {figures['plan_affected_cpu_s']:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in figures['plan_affected_runs'])} |",  # type: ignore[attr-defined]
        "| `plan`, in one warm process | {:.2f} | {:.2f} | |".format(*figures["in_process_plan"]),  # type: ignore[misc]
        "| `plan --affected=main`, in one warm process | {:.2f} | {:.2f} | |".format(*figures["in_process_affected"]),  # type: ignore[misc]
        "",
        f"wall ratio {ratio:.1f}x (target >= {AFFECTED_TARGET:.0f}x: {'met' if ratio >= AFFECTED_TARGET else 'NOT met'}), "
        f"CPU ratio {float(figures['cpu_ratio']):.1f}x; "  # type: ignore[arg-type]
        f"both plans: {len(figures['changes'])} change(s) {figures['changes']}",  # type: ignore[arg-type]
        f"affected: steps {figures['affected_steps']}, deployments {figures['affected_deployments']}",
        f"(cold build of the base, {figures['groups']} images: {figures['cold_build_s']:.1f} s)",
    ]
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["affected"], action="append", help="Which part(s) to run (default: all).")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--deployments", type=int, default=50)
    parser.add_argument("--groups", type=int, default=10)
    args = parser.parse_args(argv)
    parts = args.part or ["affected"]
    print(machine())
    if "affected" in parts:
        figures = affected_plan(args.runs, args.deployments, args.groups)
        print(report_affected(figures, args.runs))
        print(machine())


if __name__ == "__main__":
    main()
