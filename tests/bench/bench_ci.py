"""Benchmark buildsys in CI at scale (not a pytest test).

    .venv/bin/python tests/bench/bench_ci.py [--part affected|cache] [--runs 5] [--deployments 50] [--groups 10]
        [--affected-install wheel|editable] [--cache-runs 3] [--cache-install wheel|editable] [--large-deployments 1000] [--large-runs 3]

Part `affected` (`affected_plan`): a git repository with 50 deployments in 10 groups; each group's
deployments share one Docker image built from the group's folder (a small image FROM the suite's
local Python base image) and name it in their job variables. `main` is built and applied (the store is
a file outside every checkout, as CI's store is a server), and its `.buildsys/cache.db` is kept as the
CI cache the examples/ci pipeline restores. A branch `change` commits a one-flow change (a new
parameter: its group's image and its deployment's parameter schema differ). Every timed command runs
as a whole `buildsys` process in its own fresh `git clone -b change` (issue 19: "every CI job starts
from a fresh checkout, so `.buildsys/` is empty"), the CI cache restored, in two forms:

* fresh: `plan` / `plan --affected=origin/main` are the job's first buildsys command;
* after build: the job first runs `build` / `build --affected=origin/main` (not timed), as the
  examples/ci pipeline does, then the plan;
* the job (beside the target, not its figure): `build` + `plan` against `build --affected` +
  `plan --affected`, timed together, on a runner whose Docker engine lacks the group images (another
  machine: the CI cache's entries are not proved there, so the build builds the images again).

Every command is the `buildsys` console script of a fresh venv holding buildsys's wheel, as the
examples/ci pipeline installs it (`--affected-install editable`: `python -m buildsys` of the
development venv, its editable-install finder on every process's start).

Full and affected alternate; both plans must show the same changes. Median of `--runs`. Target: the
affected plan at least 5x faster. Then both plans again and again in one warm process (the work
alone, without the process start). In the same minutes, what every process pays before any
command's work (`python -c pass`, `buildsys --version`), and the ratio's ceiling were `plan
--affected` to cost no more than `--version`; and less than any affected plan written in Python
must do (the interpreter asks git what changed, reads the project file's bytes without parsing them
and opens the store; no buildsys code) with the ratio's bound were it to cost only that. Then
the same at a larger size (`--large-deployments`, default 1,000, in groups of 5: one flow changed
still affects 5 deployments; `--large-runs` rounds; 0 skips it): where the affected plan pays,
beside the 50-deployment figure, whose definition it does not change.

Part `cache` (`shared_cache`): the same shape of project (50 deployments, 10 groups, one small image
per group FROM the local Python base image, built once per group and pushed to a local registry),
and a `buildsys server` (auth on) as the shared cache. Per round, with new flow contents (new keys,
new image layers): a fresh clone runs `buildsys push` without a shared cache (cold: 10 builds, 10
pushes); a trusted runner writes the cache (`--cache-write`, not timed); the images are removed from
the engine (the next runner is another machine); a fresh clone runs `buildsys push --cache-from`
(every step must be restored, 0 run, with the same outputs). Median of `--cache-runs` rounds.
Target: the fresh runner with the shared cache at least 10x faster than cold. Every runner of this
part runs the `buildsys` command of a fresh virtual environment holding buildsys's wheel (`pip
install`, byte-compiled at install), as a CI job installs it; `--cache-install editable` runs
`python -m buildsys` from the development venv instead (its editable-install finder, and its ~190
test and tool distributions scanned for entry points).
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
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import cast

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

AFFECTED_TARGET = 5.0
CACHE_TARGET = 10.0


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


BUILDSYS = [sys.executable, "-m", "buildsys"]  # the affected part's command (`_install`: `--affected-install`)


def bs(root: Path, *args: str) -> tuple[tuple[float, float], subprocess.CompletedProcess[str]]:
    """Run buildsys; ((wall seconds, CPU seconds of the process and its children), the result)."""
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run([*BUILDSYS, *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1"}, timeout=1800)
    took = (time.perf_counter() - start, _children_cpu() - cpu)
    if done.returncode not in (0, 2):
        raise SystemExit(f"buildsys {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return took, done


def _build_base(root: Path) -> float:
    """The base's cold build (its wall seconds); once more when it fails (at a few hundred images
    the shared Docker engine has been seen to lose an intermediate image under another run's
    load): the second build reruns only what failed, and its time is added."""
    start = time.perf_counter()
    try:
        bs(root, "build")
    except SystemExit as exc:
        print(f"(the base's build failed once; building again: {str(exc).splitlines()[0]})", file=sys.stderr)
        bs(root, "build")
    return time.perf_counter() - start


# Less than any Python process that plans only what a change affects must do: start the
# interpreter, ask git what changed since the base and in the working tree, read the project file's
# bytes (not even parse them) and open the state store. No buildsys code: a bound that no
# implementation in Python can go under.
LEAST = """
import sqlite3, subprocess, sys
base, state = sys.argv[1], sys.argv[2]
diff = subprocess.Popen(["git", "diff", "--name-only", "-z", base], stdout=subprocess.PIPE)
status = subprocess.Popen(["git", "status", "--porcelain", "-z"], stdout=subprocess.PIPE)
with open("prefect.yaml", "rb") as f:
    text = f.read()
changed = [p for p in diff.communicate()[0].split(b"\\0") + status.communicate()[0].split(b"\\0") if p]
with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
    db.execute("select count(*) from sqlite_master").fetchone()
print(len(text), len(changed))
"""
LEAST_NAME = "git asked, file read, store opened"


def floor(root: Path, state: Path) -> dict[str, tuple[float, float]]:
    """What every process pays before a command's work, in the same checkout and minutes: the
    interpreter (`python -c pass`), `buildsys --version` (the interpreter, click and the CLI) and
    LEAST (less than an affected plan in Python must do)."""
    out = {}
    python = BUILDSYS[0] if BUILDSYS[1:2] == ["-m"] else str(Path(BUILDSYS[0]).with_name("python"))
    for name, argv in (("python -c pass", [python, "-c", "pass"]), ("buildsys --version", [*BUILDSYS, "--version"]),
                       (LEAST_NAME, [python, "-c", LEAST, BASE, str(state)])):
        start, cpu = time.perf_counter(), _children_cpu()
        subprocess.run(argv, cwd=root, capture_output=True, check=True, env={**os.environ, "NO_COLOR": "1"},
                       timeout=600)
        out[name] = (time.perf_counter() - start, _children_cpu() - cpu)
    return out


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
state, base = sys.argv[2], sys.argv[3]
def run(*args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = CliRunner().invoke(cli, ["--json", "plan", "--state", state, *args], obj=App(), catch_exceptions=False)
    assert result.exit_code in (0, 2), result.output
    return time.perf_counter() - wall, time.process_time() - cpu
run(); run(f"--affected={base}")  # imports and caches warm
times = {"plan": [], "affected": []}
for _ in range(int(sys.argv[1])):
    times["plan"].append(run())
    times["affected"].append(run(f"--affected={base}"))
print(json.dumps(times))
"""

BASE = "origin/main"
FORMS = ("fresh", "after_build")


def in_process(root: Path, runs: int, state: Path) -> dict[str, list[tuple[float, float]]]:
    """Both commands run again and again in one warm process: the work each does, without the
    interpreter start and imports every whole process pays."""
    done = subprocess.run([sys.executable, "-c", IN_PROCESS, str(runs), str(state), BASE], cwd=root,
                          capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO)},
                          timeout=1800, check=True)
    times: dict[str, list[tuple[float, float]]] = json.loads(done.stdout.strip().splitlines()[-1])
    return times


def changes(stdout: str) -> list[tuple[str, str]]:
    return sorted((c["action"], c["name"]) for c in json.loads(stdout)["changes"])


def _checkout(tmp: Path, origin: Path, ci_cache: Path, name: str) -> Path:
    """A CI job's checkout: a fresh clone of the pull request's branch, `.buildsys/` empty but for
    the build cache the pipeline restores."""
    clone = tmp / name
    git(tmp, "clone", "-q", "-b", "change", str(origin), str(clone))
    (clone / ".buildsys").mkdir()
    (clone / ".buildsys" / "cache.db").write_bytes(ci_cache.read_bytes())
    return clone


def _remove_group_images(client: object) -> None:
    for image in client.images.list(name="bench-ci/*"):  # type: ignore[attr-defined]
        for tag in image.tags:
            client.images.remove(tag, force=True)  # type: ignore[attr-defined]


def affected_plan(runs: int, deployments: int, groups: int) -> dict[str, object]:
    """Time `plan` and `plan --affected` in fresh clones after a one-flow change; returns the figures."""
    import shutil

    from tests.services.docker import connect, ensure_base_image

    client = connect()
    base_image = ensure_base_image(client)
    _byte_compile()
    with tempfile.TemporaryDirectory(prefix="bench-ci-affected-") as tmp_name:
        tmp = Path(tmp_name)
        origin, state, ci_cache = tmp / "origin", tmp / "state.db", tmp / "ci-cache.db"
        origin.mkdir()
        flows = affected_project(origin, deployments, groups, base_image)
        git(origin, "init", "-q", "-b", "main")
        git(origin, "add", "-A")
        git(origin, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "base")
        build_s = _build_base(origin)
        bs(origin, "apply", "--auto-approve", "--state", str(state))
        shutil.copyfile(origin / ".buildsys" / "cache.db", ci_cache)
        changed = flows[len(flows) // 2]
        git(origin, "checkout", "-q", "-b", "change")
        text = (origin / changed).read_text()
        (origin / changed).write_text(text.replace("day: str = 'today'", "day: str = 'today', dry: bool = False"))
        git(origin, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-am", "one flow")
        times: dict[str, list[tuple[float, float, float]]] = {f"{form}_{side}": [] for form in FORMS
                                                               for side in ("plan", "affected")}
        seen: dict[str, list[tuple[str, str]]] = {}
        floors: dict[str, list[tuple[float, float]]] = {}
        n = 0
        for _ in range(runs):
            for form in FORMS:
                for side, extra in (("plan", ()), ("affected", (f"--affected={BASE}",))):  # alternated
                    n += 1
                    clone = _checkout(tmp, origin, ci_cache, f"job{n}")
                    if form == "after_build":
                        bs(clone, "build", *extra)
                    (wall, cpu), done = bs(clone, "--json", "plan", "--state", str(state), *extra)
                    times[f"{form}_{side}"].append((wall, cpu, os.getloadavg()[0]))
                    seen.setdefault(f"{form}_{side}", changes(done.stdout))
                    if changes(done.stdout) != seen[f"{form}_{side}"]:
                        raise SystemExit(f"{form} {side}: the plan changed between runs")
                    if form == "fresh" and side == "plan":
                        for name, took in floor(clone, state).items():
                            floors.setdefault(name, []).append(took)
                    shutil.rmtree(clone)
        plans = {tuple(v) for v in seen.values()}
        if len(plans) != 1:
            raise SystemExit(f"plan and plan --affected disagree: {seen}")
        for _ in range(runs):  # the whole job on another machine: the group images are not in its engine
            for side, extra in (("plan", ()), ("affected", (f"--affected={BASE}",))):
                n += 1
                clone = _checkout(tmp, origin, ci_cache, f"job{n}")
                _remove_group_images(client)
                (b_wall, b_cpu), _ = bs(clone, "build", *extra)
                (p_wall, p_cpu), done = bs(clone, "--json", "plan", "--state", str(state), *extra)
                times.setdefault(f"job_{side}", []).append((b_wall + p_wall, b_cpu + p_cpu, os.getloadavg()[0]))
                if tuple(changes(done.stdout)) != next(iter(plans)):
                    raise SystemExit(f"the job's {side}: another plan than the others")
                shutil.rmtree(clone)
        clone = _checkout(tmp, origin, ci_cache, "warm")
        bs(clone, "build")
        warm = in_process(clone, runs, state)
        _, done = bs(clone, "--json", "affected", "--base", BASE)
        found = json.loads(done.stdout)
        _remove_group_images(client)
    figures: dict[str, object] = {
        "deployments": deployments,
        "groups": groups,
        "changed": changed,
        "cold_build_s": build_s,
        "runs": times,
        "in_process_plan": _medians(warm["plan"]),
        "in_process_affected": _medians(warm["affected"]),
        "floor": {name: _medians(samples) for name, samples in floors.items()},
        "changes": next(iter(seen.values())),
        "affected_steps": [s["step"] for s in found["steps"]],
        "affected_deployments": [d["name"] for d in found["deployments"]],
    }
    for form in (*FORMS, "job"):
        full, narrow = times[f"{form}_plan"], times[f"{form}_affected"]
        figures[form] = {
            "plan_s": statistics.median(t[0] for t in full), "affected_s": statistics.median(t[0] for t in narrow),
            "plan_cpu_s": statistics.median(t[1] for t in full),
            "affected_cpu_s": statistics.median(t[1] for t in narrow),
        }
    return figures


def _medians(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in samples), statistics.median(t[1] for t in samples)


def report_affected(figures: dict[str, object], runs: int) -> str:
    times: dict[str, list[tuple[float, float, float]]] = figures["runs"]  # type: ignore[assignment]

    def each(samples: list[tuple[float, float, float]]) -> str:
        return ", ".join(f"{w:.2f}/{c:.2f} ({load:.0f})" for w, c, load in samples)

    lines = [
        f"plan --affected vs plan after a one-flow change ({figures['deployments']} deployments, "
        f"{figures['groups']} image groups; changed {figures['changed']}; each a whole process in a fresh "
        f"clone with the CI cache restored; median of {runs})",
        "",
        "| job | command | median wall s | median CPU s | each run: wall/CPU s (load after) |",
        "|---|---|---:|---:|---|",
    ]
    said = {"fresh": "plan first", "after_build": "after `build`"}
    ratios = []
    for form in FORMS:
        f: dict[str, float] = figures[form]  # type: ignore[assignment]
        lines += [
            f"| {said[form]} | `buildsys plan` | {f['plan_s']:.2f} | {f['plan_cpu_s']:.2f} | {each(times[form + '_plan'])} |",
            f"| {said[form]} | `buildsys plan --affected={BASE}` | {f['affected_s']:.2f} | {f['affected_cpu_s']:.2f} | "
            f"{each(times[form + '_affected'])} |",
        ]
        ratio = f["plan_s"] / f["affected_s"]
        ratios.append(f"{said[form]}: wall ratio {ratio:.2f}x, CPU ratio {f['plan_cpu_s'] / f['affected_cpu_s']:.2f}x "
                      f"(target >= {AFFECTED_TARGET:.0f}x: {'met' if ratio >= AFFECTED_TARGET else 'NOT met'})")
    job: dict[str, float] = figures["job"]  # type: ignore[assignment]
    lines += [
        f"| the job, images not in the engine | `build` + `plan` | {job['plan_s']:.2f} | {job['plan_cpu_s']:.2f} | "
        f"{each(times['job_plan'])} |",
        f"| the job, images not in the engine | `build --affected={BASE}` + `plan --affected={BASE}` | "
        f"{job['affected_s']:.2f} | {job['affected_cpu_s']:.2f} | {each(times['job_affected'])} |",
    ]
    ratios.append(f"the job (not the target's figure): wall ratio {job['plan_s'] / job['affected_s']:.2f}x, "
                  f"CPU ratio {job['plan_cpu_s'] / job['affected_cpu_s']:.2f}x (the CPU of docker's builds is the engine's, not counted)")
    for name, (wall, cpu) in figures["floor"].items():  # type: ignore[attr-defined]
        lines.append(f"| every process | `{name}` | {wall:.3f} | {cpu:.3f} | |")
    fresh: dict[str, float] = figures["fresh"]  # type: ignore[assignment]
    start = figures["floor"]["buildsys --version"]  # type: ignore[index]
    ratios.append(f"ceiling: were `plan --affected` to cost no more than `buildsys --version`, the wall ratio "
                  f"(plan first) would be {fresh['plan_s'] / start[0]:.2f}x, the CPU ratio {fresh['plan_cpu_s'] / start[1]:.2f}x")
    least = figures["floor"][LEAST_NAME]  # type: ignore[index]
    ratios.append(f"bound: were `plan --affected` to cost no more than {LEAST_NAME!r} (the "
                  f"project file not even parsed, no buildsys code), the wall ratio (plan first) would be "
                  f"{fresh['plan_s'] / least[0]:.2f}x, the CPU ratio {fresh['plan_cpu_s'] / least[1]:.2f}x")
    lines += [
        "| warm process | `plan` | {:.3f} | {:.3f} | |".format(*figures["in_process_plan"]),  # type: ignore[misc]
        "| warm process | `plan --affected` | {:.3f} | {:.3f} | |".format(*figures["in_process_affected"]),  # type: ignore[misc]
        "",
        *ratios,
        f"both plans: {len(figures['changes'])} change(s) {figures['changes']}",  # type: ignore[arg-type]
        f"affected: steps {figures['affected_steps']}, deployments {figures['affected_deployments']}",
        f"(cold build of the base, {figures['groups']} images: {figures['cold_build_s']:.1f} s)",
    ]
    return "\n".join(lines)


# --- part `cache`: a fresh runner with the shared cache against a cold one --------------------------------


def cache_project(root: Path, deployments: int, groups: int, base_image: str, registry: str, nonce: str) -> None:
    """Write the project: per group one image (identical build and push steps in each of its
    deployments, so one graph node each), named in the registry."""
    lines = ["name: bench-ci-cache", "deployments:"]
    for g in range(groups):
        folder = root / "flows" / f"g{g}"
        folder.mkdir(parents=True)
        (folder / "Dockerfile").write_text(f"FROM {base_image}\nCOPY . /app\n")
        (folder / "round.txt").write_text(nonce)  # each round is new content: new keys, new layers
    for n in range(deployments):
        g = n % groups
        flow = f"flows/g{g}/d{n}.py"
        (root / flow).write_text(f"def run_{n}(day: str = 'today'):\n    print(day)\n")
        lines += [
            f"  - name: d{n}",
            f"    entrypoint: {flow}:run_{n}",
            "    build:",
            "      - prefect_docker.deployments.steps.build_docker_image:",
            "          id: build_image",
            f"          image_name: {registry}/bench-ci/g{g}",
            f"          path: flows/g{g}",
            "          dockerfile: Dockerfile",
            "    push:",
            "      - prefect_docker.deployments.steps.push_docker_image:",
            "          image_name: '{{ build_image.image_name }}'",
            "          tag: '{{ build_image.tag }}'",  # the registry login is DOCKER_CONFIG's, as after `docker login`
        ]
    (root / "prefect.yaml").write_text("\n".join(lines) + "\n")
    (root / ".gitignore").write_text(".buildsys/\n")


def _push(buildsys: list[str], root: Path, env: dict[str, str],
          *args: str) -> tuple[float, float, dict[str, object], dict[str, object]]:
    """Time `buildsys push --json ARGS` as a whole process: (wall s, CPU s, summary, outputs by step).
    Options after the command, as the CI examples write them (`buildsys push --explain …`); `--json`
    is there for this script to read the outcome. (Before the command, `buildsys --json push`, the
    launcher hands the arguments to click, whose import costs a restored push ~10 ms of CPU.)"""
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run([*buildsys, "push", "--json", *args], cwd=root,
                          capture_output=True, text=True, env=env, timeout=3600)
    took, used = time.perf_counter() - start, _children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"buildsys push {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    warnings = [e["message"] for e in events if e["event"] == "message"]
    if warnings:
        raise SystemExit(f"buildsys push {' '.join(args)} warned: {warnings}")
    return took, used, events[-1], _outputs(root)


def _cache_server(buildsys: list[str], base: Path) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    """`buildsys server start --auth` on a free port; its URL and a writer's and a reader's token."""
    from tests.services.net import free_port, port_open
    from tests.services.waiting import wait_for

    db = str(base / "cache-server.db")
    tokens = {}
    for scope in ("cache", "read"):
        made = subprocess.run([*buildsys, "server", "token", "create", "--scope", scope, "--db", db],
                              capture_output=True, text=True, check=True)
        tokens[scope] = made.stdout.strip()
    port = free_port()
    server = subprocess.Popen([*buildsys, "server", "start", "--auth", "--port", str(port), "--db", db],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: server.poll() is not None or port_open("127.0.0.1", port), 60, "the cache server to listen")
    if server.poll() is not None:
        raise SystemExit("buildsys server did not start")
    return server, f"http://127.0.0.1:{port}", tokens


def shared_cache(runs: int, deployments: int, groups: int, install_form: str = "wheel") -> dict[str, object]:
    """Time a cold fresh runner against a fresh runner with the shared cache; returns the figures."""
    import base64
    import secrets
    import shutil

    from tests.services.docker import connect, ensure_base_image
    from tests.services.registry import Registry, start_registry

    client = connect()
    base_image = ensure_base_image(client)
    # start_registry is a generator (typed as an Iterator): closing it stops the registry
    registries = cast("Generator[Registry, None, None]", start_registry())
    registry = next(registries)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ci-cache-"))
    try:
        buildsys = _install(tmp, install_form)
        server, url, tokens = _cache_server(buildsys, tmp)
    except BaseException:
        registries.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    config = tmp / "docker-config"  # `docker login` for the registry check of a restored build
    config.mkdir()
    login = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": login}}}))
    env = {**os.environ, "NO_COLOR": "1", "BUILDSYS_CACHE_KEY": secrets.token_hex(32), "DOCKER_CONFIG": str(config),
           "REGISTRY_USER": registry.username, "REGISTRY_PASSWORD": registry.password}
    cold: list[tuple[float, float, float]] = []  # (wall s, CPU s, 1-minute load average after)
    warm: list[tuple[float, float, float]] = []
    try:
        _push_base(client, base_image, registry)
        for r in range(runs):
            origin = tmp / f"origin{r}"
            cache_project(origin, deployments, groups, base_image, registry.host, secrets.token_hex(8))
            git(origin, "init", "-q", "-b", "main")
            git(origin, "add", "-A")
            git(origin, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "r")
            clones = []
            for name in ("cold", "writer", "fresh"):
                clones.append(tmp / f"{name}{r}")
                git(tmp, "clone", "-q", str(origin), str(clones[-1]))
            took, used, summary, cold_outputs = _push(buildsys, clones[0], env)
            assert summary["ran"] == 2 * groups, summary
            cold.append((took, used, os.getloadavg()[0]))
            _push(buildsys, clones[1], {**env, "BUILDSYS_CACHE_TOKEN": tokens["cache"]}, "--cache-from", url,
                  "--cache-write")
            _remove_images(client, registry.host)
            took, used, summary, fresh_outputs = _push(buildsys, clones[2],
                                                       {**env, "BUILDSYS_CACHE_TOKEN": tokens["read"]}, "--cache-from", url)
            if summary["ran"] != 0 or summary["cached"] != 2 * groups:
                raise SystemExit(f"the fresh runner with the shared cache ran steps: {summary}")
            if fresh_outputs != cold_outputs:
                differ = {k: (cold_outputs.get(k), fresh_outputs.get(k)) for k in set(cold_outputs) | set(fresh_outputs)
                          if cold_outputs.get(k) != fresh_outputs.get(k)}
                raise SystemExit(f"the fresh runner's outputs differ from the cold runner's: {differ}")
            warm.append((took, used, os.getloadavg()[0]))
    finally:
        server.terminate()
        server.wait(30)
        _remove_images(client, registry.host)
        registries.close()
        shutil.rmtree(tmp, ignore_errors=True)
    cold_s, warm_s = statistics.median(t[0] for t in cold), statistics.median(t[0] for t in warm)
    cold_cpu, warm_cpu = statistics.median(t[1] for t in cold), statistics.median(t[1] for t in warm)
    return {"deployments": deployments, "groups": groups, "install": install_form, "cold_s": cold_s, "warm_s": warm_s,
            "cold_cpu_s": cold_cpu, "warm_cpu_s": warm_cpu, "ratio": cold_s / warm_s, "cpu_ratio": cold_cpu / warm_cpu,
            "cold_runs": cold, "warm_runs": warm}


def _install(base: Path, form: str) -> list[str]:
    """The `buildsys` command every runner of the cache part runs. `wheel`: the console script of a
    fresh venv holding buildsys's wheel and its dependencies (pip byte-compiles them at install), as
    a CI job installs buildsys. `editable`: `python -m buildsys` from this development venv, its
    own modules byte-compiled first."""
    if form == "editable":
        _byte_compile()
        return [sys.executable, "-m", "buildsys"]
    wheels, venv = base / "wheels", base / "venv"
    _quiet(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO))
    _quiet(sys.executable, "-m", "venv", str(venv))
    _quiet(str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
           str(next(wheels.glob("buildsys-*.whl"))))
    return [str(venv / "bin" / "buildsys")]


def _quiet(*cmd: str) -> None:
    """Run a set-up command; its output only matters when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def _byte_compile() -> None:
    """Compiled bytecode for buildsys's own modules, as an installed package has it (pip compiles a
    wheel's modules at install): with PYTHONDONTWRITEBYTECODE set, as on this machine, every
    process of both sides would otherwise compile them again at its start."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "buildsys", "steps"], cwd=REPO, check=True,
                   capture_output=True)


def _remove_images(client: object, registry: str) -> None:
    """Untag this run's images (by tag: the base image, tagged too, must stay in the engine)."""
    for image in client.images.list(name=f"{registry}/bench-ci/*"):  # type: ignore[attr-defined]
        for tag in image.tags:
            if tag.startswith(f"{registry}/bench-ci/"):
                client.images.remove(tag)  # type: ignore[attr-defined]


def _push_base(client: object, base_image: str, registry: object) -> None:
    """The base image's layers in the registry first, as a CI registry already has them."""
    name = f"{registry.host}/bench-ci/base"  # type: ignore[attr-defined]
    client.images.get(base_image).tag(name, "warm")  # type: ignore[attr-defined]
    client.images.push(name, tag="warm", auth_config=registry.auth_config)  # type: ignore[attr-defined]


def _outputs(root: Path) -> dict[str, object]:
    """Every step result the runner's local cache holds: outputs (JSON) by cache key."""
    import sqlite3

    db = sqlite3.connect(root / ".buildsys" / "cache.db")
    try:
        return {str(k): json.loads(v) for k, v in db.execute("SELECT key, outputs FROM results")}
    finally:
        db.close()


def report_cache(figures: dict[str, object], runs: int) -> str:
    ratio, cpu_ratio = float(figures["ratio"]), float(figures["cpu_ratio"])  # type: ignore[arg-type]

    def each(samples: object) -> str:
        return ", ".join(f"{w:.2f}/{c:.2f} (load {load:.0f})" for w, c, load in samples)  # type: ignore[attr-defined]

    lines = [
        f"fresh runner: `buildsys push` cold vs with the shared cache ({figures['deployments']} deployments, "
        f"{figures['groups']} images built and pushed to a local registry; buildsys server as the cache; "
        f"median of {runs} rounds, whole processes; buildsys "
        f"{'from a wheel in a fresh venv' if figures['install'] == 'wheel' else 'from the development venv'})",
        "",
        "| fresh clone, empty .buildsys/ | median wall s | median CPU s | each round: wall/CPU s (load after) |",
        "|---|---:|---:|---|",
        f"| `buildsys push` (cold) | {figures['cold_s']:.2f} | {figures['cold_cpu_s']:.2f} | {each(figures['cold_runs'])} |",
        f"| `buildsys push --cache-from URL` | {figures['warm_s']:.2f} | {figures['warm_cpu_s']:.2f} | "
        f"{each(figures['warm_runs'])} |",
        "",
        f"wall ratio {ratio:.1f}x (target >= {CACHE_TARGET:.0f}x: {'met' if ratio >= CACHE_TARGET else 'NOT met'}), "
        f"CPU ratio {cpu_ratio:.1f}x; with the cache: 0 steps run, {2 * int(figures['groups'])} restored, "  # type: ignore[call-overload]
        "the same outputs as cold",
    ]
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["affected", "cache"], action="append",
                        help="Which part(s) to run (default: all).")
    parser.add_argument("--cache-runs", type=int, default=3, help="Rounds of the cache part.")
    parser.add_argument("--cache-install", choices=("wheel", "editable"), default="wheel",
                        help="how the cache part's runners get buildsys (default: its wheel in a fresh venv)")
    parser.add_argument("--affected-install", choices=("wheel", "editable"), default="wheel",
                        help="how the affected part runs buildsys (default: its wheel in a fresh venv, as examples/ci installs it)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--deployments", type=int, default=50)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--large-deployments", type=int, default=1000,
                        help="The affected part again at this size, in groups of 5 (0: not run).")
    parser.add_argument("--large-runs", type=int, default=3, help="Rounds of the larger affected figure.")
    args = parser.parse_args(argv)
    parts = args.part or ["affected", "cache"]
    print(machine())
    if "affected" in parts:
        global BUILDSYS
        install = Path(tempfile.mkdtemp(prefix="bench-ci-install-"))
        try:
            BUILDSYS = _install(install, args.affected_install)
            _affected_part(args)
        finally:
            import shutil

            shutil.rmtree(install, ignore_errors=True)
    if "cache" in parts:
        cache_figures = shared_cache(args.cache_runs, args.deployments, args.groups, args.cache_install)
        print(report_cache(cache_figures, args.cache_runs))
        print(machine())


def _affected_part(args: argparse.Namespace) -> None:
    figures = affected_plan(args.runs, args.deployments, args.groups)
    print(report_affected(figures, args.runs))
    print(machine())
    if args.large_deployments:
        large = affected_plan(args.large_runs, args.large_deployments, max(1, args.large_deployments // 5))
        print(report_affected(large, args.large_runs))
        print(machine())


if __name__ == "__main__":
    main()
