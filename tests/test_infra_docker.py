"""The docker pool type against the real engine, with the locally made base image (no pip inside)."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from buildsys.infra import Job
from buildsys.infra.docker import RUNTIME_MOUNT, DockerInfrastructure, pull_policy
from buildsys.pools import base_job_template, job_configuration
from buildsys.store.base import Change, StateStore
from tests.services.docker import TEST_LABELS
from tests.services.waiting import wait_for
from tests.services.workers import Workers
from tests.test_worker import FLOWS, final, log_lines

pytestmark = pytest.mark.docker

DOCKER_FLOWS = FLOWS + '''

def fetch(url: str):
    import urllib.request
    print(urllib.request.urlopen(url, timeout=10).read().decode())

def hog():
    blocks = []
    while True:
        blocks.append(bytearray(8 * 1024 * 1024))
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "flows").mkdir(parents=True)
    (root / "flows" / "demo.py").write_text(DOCKER_FLOWS)
    return root


def docker_pool(store: StateStore, image: str, **defaults: Any) -> None:
    template = base_job_template("docker", {"image": image, "labels": TEST_LABELS, **defaults})
    spec = {"type": "docker", "base_job_template": template, "queues": [], "paused": False}
    store.apply([Change("create", "pool", "dock", spec=spec)], expected_serial=None)


def docker_deployment(store: StateStore, project: Path, function: str, **job_variables: Any) -> str:
    spec = {
        "flow_name": function,
        "name": "docker",
        "entrypoint": "flows/demo.py:" + function,
        "parameters": {},
        "work_pool_name": "dock",
        "job_variables": {"volumes": [f"{project}:/app:ro"], **job_variables},
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}],
    }
    store.apply([Change("create", "deployment", f"{function}/docker", spec=spec)], expected_serial=None)
    return f"{function}/docker"


def test_pull_policy_follows_prefect() -> None:
    assert pull_policy("python", None) == "Always"
    assert pull_policy("registry:5000/team/app:latest", None) == "Always"
    assert pull_policy("registry:5000/team/app:1.2", None) == "IfNotPresent"
    assert pull_policy("app@sha256:abc", None) == "IfNotPresent"
    assert pull_policy("app:1", "Never") == "Never"


def test_container_kwargs_from_a_job_configuration() -> None:
    config = job_configuration(
        base_job_template("docker", {"image": "img:1"}),
        {"env": {"A": "1"}, "labels": {"prefect.io/team": "data"}, "mem_limit": "64m", "name": "run/1 x",
         "volumes": ["/data:/data:ro"], "container_create_kwargs": {"nano_cpus": 500_000_000}},
        None,
        env={},
    )
    job = Job("r1", "brave-otter", "etl", "etl/prod", "dock", "w1", config, {"entrypoint": "f.py:f"}, {"BUILDSYS_RUN_ID": "r1"})
    infra = DockerInfrastructure(store_url="http://127.0.0.1:4300", mount_runtime=False)
    kwargs = infra.container_kwargs(job)
    assert kwargs["image"] == "img:1"
    assert kwargs["command"] == ["python3", "-m", "buildsys.runtime"]
    assert kwargs["network_mode"] == "host"  # the store is on the host's loopback
    assert kwargs["name"] == "run-1-x"
    assert kwargs["mem_limit"] == "64m"
    assert kwargs["nano_cpus"] == 500_000_000
    assert kwargs["volumes"] == ["/data:/data:ro"]
    assert kwargs["labels"]["io.prefect.team"] == "data"
    assert kwargs["labels"]["buildsys.run-id"] == "r1"
    assert kwargs["environment"]["A"] == "1"
    assert kwargs["environment"]["BUILDSYS_RUN_CONTEXT"] == '{"entrypoint":"f.py:f"}'
    remote = DockerInfrastructure(store_url="https://store.example.com", mount_runtime=False)
    assert "network_mode" not in remote.container_kwargs(job)


def test_the_runs_prefect_api_wins_over_the_job_env_and_brings_host_networking() -> None:
    config = {"image": "img:1", "env": {"PREFECT_API_URL": "https://api.prefect.cloud/api/x", "A": "1"}}
    owned = {"PREFECT_API_URL": "http://127.0.0.1:41000/api", "PREFECT_API_KEY": "k", "PREFECT__FLOW_RUN_ID": "r1"}
    job = Job("r1", "brave-otter", "etl", "etl/prod", "dock", "w1", config, {"entrypoint": "f.py:f"}, owned_env=owned)
    remote_store = DockerInfrastructure(store_url="https://store.example.com", mount_runtime=False)
    kwargs = remote_store.container_kwargs(job)
    assert kwargs["network_mode"] == "host"  # the worker's own API is on its loopback
    assert {k: kwargs["environment"][k] for k in (*owned, "A")} == {**owned, "A": "1"}
    assert "network_mode" not in remote_store.container_kwargs(
        Job("r1", "n", "etl", "etl/prod", "dock", "w1", config, {}, owned_env={"PREFECT_API_URL": "https://store.example.com/prefect/api"})
    )


PREFECT_FLOW = """
from prefect import flow, get_run_logger, task


@task
def square(x: int) -> int:
    return x * x


@flow
def contained(n: int) -> int:
    get_run_logger().info("in a container: %s", type(n).__name__)
    return square(n)
"""


def test_prefect_flow_in_a_container_runs_through_the_engine_against_the_workers_api(
    store: StateStore, project: Path, workers: Workers, base_image: str, tmp_path: Path
) -> None:
    # no image with Prefect is built here: the base image (the host's Python) gets this venv's
    # site-packages read-only on PYTHONPATH, which is what an image with `pip install prefect` has
    import sys

    site_packages = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    (project / "flows" / "pf.py").write_text(PREFECT_FLOW)
    docker_pool(store, base_image, auto_remove=True)
    spec = {
        "flow_name": "contained",
        "name": "docker",
        "entrypoint": "flows/pf.py:contained",
        "parameters": {},
        "work_pool_name": "dock",
        "job_variables": {
            "volumes": [f"{project}:/app:ro", f"{site_packages}:/opt/site:ro"],
            "env": {"PYTHONPATH": "/opt/site", "PREFECT_HOME": "/tmp/prefect-home"},
        },
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}],
    }
    store.apply([Change("create", "deployment", "contained/docker", spec=spec)], expected_serial=None)
    worker = workers.start("--name", "dw", pool="dock")
    run = store.create_run("contained/docker", parameters={"n": "7"})
    done = final(store, run, timeout=180)
    wait_for(lambda: f"Run {run.name} ({run.id[:8]}) → " in workers.output(worker), 60, "the worker to conclude")
    assert (done.state, done.state_message) == ("COMPLETED", None), log_lines(store, run)
    records = [(x.logger, x.message) for x in store.read_logs(run.id) if x.stream == "prefect"]
    assert ("prefect.flow_runs", "in a container: int") in records  # "7" was coerced by the engine
    tasks = store.list_task_runs(run.id)  # type: ignore[attr-defined]
    assert [(t.state, t.name.rsplit("-", 1)[0]) for t in tasks] == [("COMPLETED", "square")]


def test_docker_run_end_to_end_with_host_networking(
    store: StateStore, project: Path, workers: Workers, base_image: str, docker_client: Any
) -> None:
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = b"answer from the host"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        docker_pool(store, base_image, network_mode="host", auto_remove=True)
        deployment = docker_deployment(store, project, "fetch")
        workers.start("--name", "dw", pool="dock")
        url = f"http://127.0.0.1:{server.server_address[1]}/ping"
        run = store.create_run(deployment, parameters={"url": url})
        done = final(store, run, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert (done.state, done.state_message, done.exit_code) == ("COMPLETED", None, 0), log_lines(store, run)
    assert done.infrastructure_pid is not None and done.infrastructure_pid.startswith("docker:")
    assert log_lines(store, run)[1:] == [
        ("stdout", "Running pull step pull[0: prefect.deployments.steps.set_working_directory]"),
        ("stdout", "answer from the host"),
    ]
    assert hits == ["/ping"]
    container_id = done.infrastructure_pid.split(":", 1)[1]
    wait_for(lambda: not docker_client.containers.list(all=True, filters={"id": container_id}), 10, "auto-remove")


def test_docker_flow_failure_and_runtime_mount(
    store: StateStore, project: Path, workers: Workers, base_image: str, docker_client: Any
) -> None:
    import docker.errors

    # the image has no buildsys of its own: the runtime comes from the worker's read-only mount
    with pytest.raises(docker.errors.ContainerError):
        docker_client.containers.run(
            base_image, ["python3", "-c", "import buildsys"], remove=True, labels=TEST_LABELS, network_mode="none"
        )
    docker_pool(store, base_image, auto_remove=True)
    deployment = docker_deployment(store, project, "fail")
    workers.start(pool="dock")
    run = store.create_run(deployment)
    done = final(store, run, timeout=60)
    assert (done.state, done.state_message) == ("FAILED", "Flow run failed: ValueError: the data is bad")
    assert ("stdout", "about to fail") in log_lines(store, run)
    infra = DockerInfrastructure(mount_runtime=True)
    try:
        kwargs = infra.container_kwargs(Job("r", "n", "f", "d", "p", "w", {"image": base_image}, {}))
        assert (infra.runtime_dir() / "buildsys" / "runtime.py").is_file()
        assert (infra.runtime_dir() / "buildsys" / "steps" / "workdir.py").is_file()
    finally:
        infra.close()
    assert kwargs["volumes"][-1].endswith(f":{RUNTIME_MOUNT}:ro")
    assert kwargs["environment"]["PYTHONPATH"] == RUNTIME_MOUNT


def test_docker_cancellation_stops_the_container(
    store: StateStore, project: Path, workers: Workers, base_image: str, docker_client: Any
) -> None:
    docker_pool(store, base_image)
    deployment = docker_deployment(store, project, "wait_for_file")
    workers.start("--cancel-grace", "5", pool="dock")
    run = store.create_run(deployment, parameters={"path": "/never"})
    running = wait_for(lambda: (r := store.get_run(run.id)).state == "RUNNING" and r, 60, "the container run to start")
    assert running.infrastructure_pid is not None
    container = docker_client.containers.get(running.infrastructure_pid.split(":", 1)[1])
    started = time.monotonic()
    store.request_cancel(run.id)
    done = final(store, run, timeout=30)
    assert (done.state, done.state_message) == ("CANCELLED", "Cancelled on request: the flow-run infrastructure was stopped.")
    assert time.monotonic() - started < 5  # SIGTERM through docker-init, no need for SIGKILL
    container.reload()
    assert container.status == "exited"
    container.remove(force=True)


def test_docker_oom_is_a_clear_crash(store: StateStore, project: Path, workers: Workers, base_image: str) -> None:
    docker_pool(store, base_image, auto_remove=True, mem_limit="48m", memswap_limit="48m")
    deployment = docker_deployment(store, project, "hog")
    workers.start(pool="dock")
    done = final(store, store.create_run(deployment), timeout=60)
    assert (done.state, done.state_message) == (
        "CRASHED",
        "Flow run infrastructure exited with non-zero status code 137 (the container was killed for using more "
        "memory than its limit (OOMKilled)).",
    )


def test_missing_image_with_pull_policy_never(store: StateStore, project: Path, workers: Workers, docker_client: Any) -> None:
    docker_pool(store, "buildsys-test/does-not-exist:1", image_pull_policy="Never")
    deployment = docker_deployment(store, project, "hello")
    workers.start(pool="dock")
    done = final(store, store.create_run(deployment), timeout=30)
    assert (done.state, done.state_message) == (
        "CRASHED",
        "Failed to submit flow run to infrastructure: image buildsys-test/does-not-exist:1 is not on this Docker "
        "engine and the pull policy is Never",
    )


def test_a_command_the_image_lacks_is_said_plainly(store: StateStore, project: Path, workers: Workers, base_image: str) -> None:
    docker_pool(store, base_image, auto_remove=True)
    deployment = docker_deployment(store, project, "hello", command="no-such-python3 -m buildsys.runtime")
    run = store.create_run(deployment)
    proc = workers.start("--once", pool="dock")
    assert proc.wait(60) == 1
    done = final(store, run)
    assert (done.state, done.state_message) == (
        "CRASHED",
        "Flow run infrastructure exited with non-zero status code 127 (the command `no-such-python3` was not found "
        f"in the image {base_image}; check the job variable `command`).",
    )


def test_an_image_without_python3_is_said_plainly() -> None:
    from buildsys.infra.docker import DEFAULT_COMMAND, not_found

    assert not_found(127, "alpine:3", DEFAULT_COMMAND) == (
        "the image alpine:3 has no `python3`; the docker pool runs `python3 -m buildsys.runtime` in the "
        "container: use an image with Python 3.11 or later, or set the job variable `command`"
    )
    assert not_found(1, "alpine:3", DEFAULT_COMMAND) is None
