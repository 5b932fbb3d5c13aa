"""`buildsys run / runs / pool / worker` through the real command line, with a real worker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsys.store import open_store
from tests.services.waiting import wait_for

BUILDSYS = [sys.executable, "-m", "buildsys"]

FLOW = '''
import time
from pathlib import Path


def greet(who: str, times: int = 1, loud: bool = False) -> str:
    """Say hello."""
    for _ in range(times):
        print(("HELLO " if loud else "hello ") + who)
    return who


def broken(reason: str = "no reason"):
    raise RuntimeError(reason)


def hold(path: str):
    while not Path(path).exists():
        time.sleep(0.02)
'''

PROJECT = """
name: runs-demo
work_pools:
  - name: local
    type: process
    job_variables:
      env: {GREETING_SOURCE: pool}
deployments:
  - name: greet
    entrypoint: flows/demo.py:greet
    enforce_parameter_schema: true
    parameters: {who: world}
    work_pool: {name: local}
  - name: broken
    entrypoint: flows/demo.py:broken
    work_pool: {name: local}
  - name: hold
    entrypoint: flows/demo.py:hold
    work_pool: {name: local}
"""


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BUILDSYS, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "flows").mkdir(parents=True)
    (root / "flows" / "demo.py").write_text(FLOW)
    (root / "prefect.yaml").write_text(textwrap.dedent(PROJECT))
    return root


@pytest.fixture
def applied(project: Path) -> Path:
    result = cli(project, "apply", "--auto-approve")
    assert result.returncode == 0, result.stderr
    return project


@pytest.fixture
def worker(applied: Path) -> Iterator[subprocess.Popen[str]]:
    log = (applied / "worker.log").open("w")
    proc = subprocess.Popen(
        [*BUILDSYS, "worker", "start", "--pool", "local", "--name", "w1"],
        cwd=applied,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield proc
    proc.kill()
    proc.wait(10)
    log.close()


def test_run_wait_logs_end_to_end(applied: Path, worker: subprocess.Popen[str]) -> None:
    result = cli(applied, "run", "greet", "--param", "who=ada", "-p", "times=2", "--wait", "--logs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Created flow run ") and lines[0].endswith(" of greet/greet on pool 'local'.")
    assert lines[1].startswith("[worker] Submitted to process infrastructure (")
    assert lines[2:] == [
        "Running pull step pull[0: prefect.deployments.steps.set_working_directory]",
        "hello ada",
        "hello ada",
    ]
    assert result.stderr.startswith("Flow run ") and result.stderr.endswith(" finished: COMPLETED\n")


def test_failed_run_exits_1_with_the_reason(applied: Path, worker: subprocess.Popen[str]) -> None:
    result = cli(applied, "run", "broken/broken", "-p", "reason=disk full", "--wait")
    assert result.returncode == 1
    name = result.stdout.split()[3]
    assert result.stderr.splitlines()[-3:] == [
        f"Flow run {name} finished: FAILED (Flow run failed: RuntimeError: disk full)",
        f"error: flow run {name} ended FAILED: Flow run failed: RuntimeError: disk full",
        f"  hint: see its logs: buildsys runs logs {result.stdout.split()[4].strip('()')}",
    ]


def test_parameters_are_checked_against_the_stored_schema(applied: Path) -> None:
    unknown = cli(applied, "run", "greet", "-p", "whoo=x", "-p", "times=two")
    assert unknown.returncode == 1
    assert unknown.stderr == (
        "error: deployment greet/greet: Validation failed for field 'whoo'. Failure reason: the flow has no "
        "parameter 'whoo'; Validation failed for field 'times'. Failure reason: 'two' is not of type 'integer'\n"
        "  hint: did you mean 'who'?; the flow takes (who: string, times: integer, loud: boolean)\n"
    )
    with open_store(str(applied / ".buildsys" / "state.db")) as store:  # type: ignore[attr-defined]
        assert store.list_runs() == []


def test_job_variables_are_checked_before_the_run_exists(applied: Path) -> None:
    wrong = cli(applied, "run", "greet", "--job-variable", "stream_output=maybe")
    assert wrong.returncode == 1
    assert wrong.stderr == (
        "error: job variable 'stream_output': 'maybe' is not of type 'boolean'\n"
        "  at job_variables.stream_output\n"
        "  hint: expected boolean (Copy the flow run's output to the worker's output.)\n"
    )
    unknown = cli(applied, "run", "greet", "-jv", "workdir=/tmp")
    assert unknown.returncode == 0
    assert unknown.stderr == (
        "warning: unknown job variable 'workdir': the pool's template does not use it\n"
        "  at job_variables.workdir\n"
        "  hint: did you mean 'working_dir'?\n"
    )


def test_unknown_deployment_suggests_one(applied: Path) -> None:
    result = cli(applied, "run", "gret")
    assert result.returncode == 1
    assert result.stderr == (
        "error: no deployment 'gret' in the state store\n"
        "  hint: did you mean 'greet'?; deployments: broken/broken, greet/greet, hold/hold\n"
    )


def test_runs_ls_show_logs_cancel(applied: Path, worker: subprocess.Popen[str], tmp_path: Path) -> None:
    release = tmp_path / "release"
    created = cli(applied, "--json", "run", "hold", "-p", f"path={release}")
    assert created.returncode == 0, created.stderr
    import json

    run = json.loads(created.stdout)
    store_path = applied / ".buildsys" / "state.db"
    store = open_store(str(store_path))
    try:
        wait_for(lambda: store.get_run(run["id"]).state == "RUNNING", 20, "the run to start")
    finally:
        store.close()
    listed = cli(applied, "runs", "ls")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "DEPLOYMENT", "STATE", "CREATED", "DURATION"]
    assert row.split()[:4] == [run["id"][:8], run["name"], "hold/hold", "Running"]
    shown = cli(applied, "runs", "show", run["id"][:8])
    facts, history = shown.stdout.split("\n\n")
    fields = dict(line.split(":", 1) for line in facts.splitlines())
    assert fields["state"].strip() == "RUNNING"
    assert fields["worker"].strip() == "w1"
    assert fields["attempt"].strip() == "1 of 1"
    header, *entered = history.splitlines()
    assert header.split() == ["STATE", "TYPE", "ENTERED", "FOR", "ATTEMPT", "WORKER", "MESSAGE"]
    assert [line.split()[:2] for line in entered] == [["Scheduled", "SCHEDULED"], ["Pending", "PENDING"], ["Running", "RUNNING"]]
    assert entered[-1].split()[5:8] == ["so", "far", "1"] and entered[-1].split()[8] == "w1"
    cancelled = cli(applied, "runs", "cancel", run["name"])
    assert cancelled.stdout == f"Cancellation of flow run {run['name']} ({run['id']}) requested; its worker will stop it.\n"
    followed = cli(applied, "runs", "logs", "--follow", run["id"])
    assert followed.returncode == 0
    assert followed.stdout.splitlines() == [
        followed.stdout.splitlines()[0],
        "Running pull step pull[0: prefect.deployments.steps.set_working_directory]",
        "[worker] Stopping the run (SIGTERM).",
    ]
    assert followed.stderr == (
        f"Flow run {run['name']} finished: CANCELLED "
        "(Cancelled on request: the flow-run infrastructure was stopped.)\n"
    )
    again = cli(applied, "runs", "cancel", run["id"])
    assert again.returncode == 1
    assert again.stderr.startswith(f"error: flow run {run['name']} ({run['id']}) is already CANCELLED")


def test_cancel_a_scheduled_run_at_once(applied: Path) -> None:
    created = cli(applied, "run", "greet", "--at", "3600")
    run_id = created.stdout.split()[4].strip("()")
    cancelled = cli(applied, "runs", "cancel", run_id)
    assert cancelled.returncode == 0
    assert cancelled.stdout.startswith("Cancelled flow run ")


def test_pool_ls_show_and_preview(project: Path) -> None:
    before = cli(project, "pool", "preview", "greet")  # not applied yet: read from prefect.yaml
    assert before.returncode == 0, before.stderr
    assert before.stdout == (
        "# deployment greet/greet on work pool local (process), from prefect.yaml\n"
        "env:\n  GREETING_SOURCE: pool\nstream_output: true\n"
    )
    assert cli(project, "apply", "--auto-approve").returncode == 0
    after = cli(project, "pool", "preview", "greet", "-jv", "env.EXTRA={{ $SECRET }}", "--job-variable", "working_dir=/srv")
    assert after.stdout == (
        "# deployment greet/greet on work pool local (process), from the state store\n"
        "env:\n  GREETING_SOURCE: pool\n  EXTRA: '{{ $SECRET }}'\nstream_output: true\nworking_dir: /srv\n"
    )
    listed = cli(project, "pool", "ls")
    assert listed.stdout.splitlines() == [
        "NAME   TYPE     PAUSED  LIMIT  QUEUES   WORKERS ONLINE",
        "local  process  no      -      default  0",
    ]
    shown = cli(project, "pool", "show", "local")
    assert shown.returncode == 0
    assert shown.stdout.splitlines()[:3] == [
        "work pool local (process)",
        "  paused: no; concurrency limit: none",
        "  job variables:",
    ]
    assert '    env = {"GREETING_SOURCE": "pool"}  — Environment variables for the flow run (merged key by key over the pool\'s defaults).' in shown.stdout.splitlines()
    missing = cli(project, "pool", "show", "nope")
    assert (missing.returncode, missing.stderr) == (1, "error: no work pool 'nope' in the state store\n  hint: pools: local\n")


def test_worker_start_type_creates_the_pool(tmp_path: Path) -> None:
    result = subprocess.run(
        [*BUILDSYS, "--state", str(tmp_path / "s.db"), "worker", "start", "--pool", "new", "--type", "docker", "--once", "-n", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Created work pool 'new' of type 'docker' with the type's defaults.",
        "Worker 'x' started on pool 'new' (docker).",
        "Worker 'x' stopped.",
    ]


@pytest.mark.docker
def test_docker_pool_from_a_freshly_applied_project(tmp_path: Path, base_image: str) -> None:
    from tests.services.docker import TEST_LABELS

    root = tmp_path / "dockerproj"
    (root / "flows").mkdir(parents=True)
    (root / "flows" / "demo.py").write_text(FLOW)
    labels = ", ".join(f'"{k}": "{v}"' for k, v in TEST_LABELS.items())
    (root / "prefect.yaml").write_text(
        textwrap.dedent(
            f"""
            name: docker-demo
            work_pools:
              - name: dock
                type: docker
                job_variables:
                  image: {base_image}
                  auto_remove: true
                  volumes: ["{root}:/app:ro"]
                  labels: {{{labels}}}
            deployments:
              - name: greet-docker
                entrypoint: flows/demo.py:greet
                parameters: {{who: container}}
                work_pool: {{name: dock}}
                pull:
                  - prefect.deployments.steps.set_working_directory:
                      directory: /app
            """
        )
    )
    assert cli(root, "apply", "--auto-approve").returncode == 0
    worker = subprocess.Popen([*BUILDSYS, "worker", "start", "--pool", "dock"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = cli(root, "run", "greet-docker", "--wait", "--logs", "--timeout", "90")
    finally:
        worker.terminate()
        worker.wait(30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2:] == [
        "Running pull step pull[0: prefect.deployments.steps.set_working_directory]",
        "hello container",
    ]
    assert result.stdout.splitlines()[1].startswith("[worker] Submitted to docker infrastructure (docker:")
