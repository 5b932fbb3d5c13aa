"""The kubernetes pool type: manifests rendered and validated offline, and the submit / watch / log /
cancel path exercised against the fake API server of tests/services/k8s.py (there is no cluster here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from buildsys.infra import InfrastructureError, Job
from buildsys.infra.kubernetes import build_job, validate_manifest
from buildsys.pools import base_job_template, default_job_template, job_configuration
from buildsys.store.base import Change, StateStore
from tests.services.k8s import FakeKubernetes
from tests.services.waiting import wait_for
from tests.services.workers import Workers
from tests.test_worker import FLOWS, final, log_lines


def k8s_job(job_variables: dict[str, Any], template: dict[str, Any] | None = None) -> Job:
    config = job_configuration(template or default_job_template("kubernetes"), job_variables, None, env={})
    return Job("run-1", "brave-otter", "etl", "etl/prod", "k8s", "w1", config, {"entrypoint": "f.py:f"}, {"BUILDSYS_RUN_ID": "run-1"})


def test_manifest_from_the_default_template_is_a_valid_job() -> None:
    manifest = build_job(
        k8s_job(
            {
                "image": "registry:5000/etl:1",
                "namespace": "data",
                "env": {"LOG_LEVEL": "DEBUG"},
                "labels": {"team": "data"},
                "cpu_request": "250m",
                "memory_limit": "256Mi",
                "service_account_name": "runner",
                "name": "nightly etl",
            }
        )
    )
    validate_manifest(manifest)
    assert manifest["metadata"]["namespace"] == "data"
    assert manifest["metadata"]["generateName"] == "nightly-etl-"
    assert manifest["metadata"]["labels"]["buildsys.dev/deployment"] == "etl-prod"
    assert manifest["metadata"]["labels"]["team"] == "data"
    assert manifest["spec"]["parallelism"] == 1 and manifest["spec"]["completions"] == 1
    assert manifest["spec"]["backoffLimit"] == 0
    pod = manifest["spec"]["template"]
    assert pod["metadata"]["labels"] == manifest["metadata"]["labels"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["serviceAccountName"] == "runner"
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "prefect-job"
    assert container["image"] == "registry:5000/etl:1"
    assert container["args"] == ["python3", "-m", "buildsys.runtime"]
    assert container["resources"] == {"limits": {"memory": "256Mi"}, "requests": {"cpu": "250m"}}
    assert container["env"] == [
        {"name": "BUILDSYS_RUN_ID", "value": "run-1"},
        {"name": "LOG_LEVEL", "value": "DEBUG"},
        {"name": "BUILDSYS_RUN_CONTEXT", "value": '{"entrypoint":"f.py:f"}'},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def test_the_runs_prefect_api_is_in_the_env_and_a_loopback_one_means_host_network() -> None:
    config = job_configuration(default_job_template("kubernetes"), {"image": "img:1"}, None, env={})
    owned = {"PREFECT_API_URL": "http://127.0.0.1:41000/api", "PREFECT_API_KEY": "k", "PREFECT__FLOW_RUN_ID": "run-1"}
    manifest = build_job(Job("run-1", "brave-otter", "etl", "etl/prod", "k8s", "w1", config, {}, owned_env=owned))
    validate_manifest(manifest)
    pod = manifest["spec"]["template"]["spec"]
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert {k: env[k] for k in owned} == owned
    server = {**owned, "PREFECT_API_URL": "https://buildsys.example.com/prefect/api"}
    manifest = build_job(Job("run-1", "brave-otter", "etl", "etl/prod", "k8s", "w1", config, {}, owned_env=server))
    assert "hostNetwork" not in manifest["spec"]["template"]["spec"]


def test_command_string_and_hard_coded_env_entries() -> None:
    template = default_job_template("kubernetes")
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
        {"name": "LOG_LEVEL", "value": "INFO"},
    ]
    manifest = build_job(k8s_job({"image": "img:1", "command": "python3 -m buildsys.runtime --context '/etc/run ctx.json'"}, template))
    validate_manifest(manifest)
    (c,) = manifest["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["python3", "-m", "buildsys.runtime", "--context", "/etc/run ctx.json"]
    assert c["env"][0] == {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"key": "password", "name": "db"}}}
    assert c["env"][1] == {"name": "LOG_LEVEL", "value": "INFO"}


def test_missing_image_and_wrong_kind_are_clear_errors() -> None:
    with pytest.raises(InfrastructureError) as info:
        build_job(k8s_job({}))
    assert (info.value.message, info.value.hint) == ("the kubernetes pool needs an image", "set the job variable `image`")
    template = default_job_template("kubernetes")
    template["job_configuration"]["job_manifest"]["kind"] = "CronJob"
    with pytest.raises(InfrastructureError) as info:
        build_job(k8s_job({"image": "x:1"}, template))
    assert info.value.message == "the job manifest must be a batch/v1 Job, not batch/v1 CronJob"


def test_offline_validation_rejects_a_bad_manifest() -> None:
    manifest = build_job(k8s_job({"image": "img:1"}))
    manifest["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "eighty"}]
    with pytest.raises(InfrastructureError) as info:
        validate_manifest(manifest)
    assert info.value.message.startswith("the Job manifest is not valid for Kubernetes ")
    assert "eighty" in info.value.message


# --- through a worker, against the fake API server --------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "flows").mkdir(parents=True)
    (root / "flows" / "demo.py").write_text(FLOWS)
    return root


def k8s_setup(store: StateStore, project: Path, function: str, image: str = "img:1", pod_timeout: int = 20) -> str:
    template = base_job_template("kubernetes", {"image": image, "pod_watch_timeout_seconds": pod_timeout})
    store.apply(
        [
            Change("create", "pool", "k8s", spec={"type": "kubernetes", "base_job_template": template, "queues": []}),
            Change(
                "create",
                "deployment",
                f"{function}/k8s",
                spec={
                    "flow_name": function,
                    "name": "k8s",
                    "entrypoint": "flows/demo.py:" + function,
                    "work_pool_name": "k8s",
                    "job_variables": {},
                    "pull_steps": [{"set_working_directory": {"directory": str(project)}}],
                },
            ),
        ],
        expected_serial=None,
    )
    return f"{function}/k8s"


def start_worker(workers: Workers, api: FakeKubernetes) -> None:
    workers.start("--name", "kw", pool="k8s", env={"KUBECONFIG": str(api.kubeconfig), "PATH": os.environ["PATH"]})


def test_kubernetes_run_end_to_end(store: StateStore, project: Path, workers: Workers, k8s_api: FakeKubernetes) -> None:
    deployment = k8s_setup(store, project, "hello")
    start_worker(workers, k8s_api)
    run = store.create_run(deployment, parameters={"name": "cluster"})
    done = final(store, run, timeout=60)
    assert (done.state, done.state_message, done.exit_code) == ("COMPLETED", None, 0)
    (job_name,) = k8s_api.jobs
    assert done.infrastructure_pid == f"default:{job_name}"
    assert log_lines(store, run)[1:] == [
        ("stdout", "Running pull step pull[0: set_working_directory]"),
        ("stdout", "hello cluster"),
    ]
    body = k8s_api.jobs[job_name]
    validate_manifest({k: v for k, v in body.items() if k != "status"})
    assert body["metadata"]["labels"]["buildsys.dev/run-id"] == run.id


def test_kubernetes_flow_failure_reads_the_merged_log(
    store: StateStore, project: Path, workers: Workers, k8s_api: FakeKubernetes
) -> None:
    deployment = k8s_setup(store, project, "fail")
    start_worker(workers, k8s_api)
    run = store.create_run(deployment)
    done = final(store, run, timeout=60)
    assert (done.state, done.state_message) == ("FAILED", "Flow run failed: ValueError: the data is bad"), log_lines(store, run)


def test_kubernetes_cancel_deletes_the_job(
    store: StateStore, project: Path, workers: Workers, k8s_api: FakeKubernetes, tmp_path: Path
) -> None:
    deployment = k8s_setup(store, project, "wait_for_file")
    start_worker(workers, k8s_api)
    run = store.create_run(deployment, parameters={"path": str(tmp_path / "never")})
    wait_for(lambda: store.get_run(run.id).state == "RUNNING", 30, "the pod to run the flow")
    store.request_cancel(run.id)
    done = final(store, run, timeout=30)
    assert (done.state, done.state_message) == ("CANCELLED", "Cancelled on request: the flow-run infrastructure was stopped.")
    assert k8s_api.deleted == [done.infrastructure_pid.split(":", 1)[1]]  # type: ignore[union-attr]
    assert k8s_api.pods == {}


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (
            "fake/missing:1",
            "Flow run infrastructure failed: the image could not be pulled (ErrImagePull): pull access denied for "
            "fake/missing.",
        ),
        (
            "fake/oom:1",
            "Flow run infrastructure exited with non-zero status code 137 (the container was killed for using more "
            "memory than its limit (OOMKilled)).",
        ),
        ("fake/evicted:1", "Flow run infrastructure failed: the pod was evicted: The node was low on resource: memory."),
    ],
)
def test_pod_failures_are_clear_crashes(
    store: StateStore, project: Path, workers: Workers, k8s_api: FakeKubernetes, image: str, message: str
) -> None:
    deployment = k8s_setup(store, project, "hello", image=image)
    start_worker(workers, k8s_api)
    done = final(store, store.create_run(deployment), timeout=60)
    assert (done.state, done.state_message) == ("CRASHED", message)


def test_cluster_config_job_variable_selects_the_cluster(
    k8s_api: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from buildsys.infra.kubernetes import KubernetesInfrastructure

    monkeypatch.delenv("KUBECONFIG", raising=False)  # only the job variable can lead to the fake
    (tmp_path / "flow.py").write_text("def f():\n    print('via cluster_config')\n")
    cluster = {"config": json.loads(k8s_api.kubeconfig.read_text()), "context_name": "fake"}
    config = job_configuration(
        default_job_template("kubernetes"), {"image": "img:1", "cluster_config": cluster}, None, env={}
    )
    job = Job("r2", "calm-bay", "f", "f/k8s", "k8s", "w", config, {"entrypoint": "flow.py:f", "root": str(tmp_path)})
    lines: list[tuple[str, str]] = []
    execution = KubernetesInfrastructure().start(job, lambda stream, line: lines.append((stream, line)))
    outcome = execution.wait(30)
    assert outcome is not None and (outcome.exit_code, outcome.message) == (0, None)
    assert ("stdout", "via cluster_config") in lines
    assert execution.identifier.startswith("default:calm-bay-")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("fake/pending:1", "Flow run infrastructure failed: the pod did not start within 2 s (pod_watch_timeout_seconds)."),
        ("fake/nopod:1", "Flow run infrastructure failed: no pod was created within 2 s (pod_watch_timeout_seconds)."),
    ],
)
def test_pods_that_never_start_time_out(
    store: StateStore, project: Path, workers: Workers, k8s_api: FakeKubernetes, image: str, message: str
) -> None:
    deployment = k8s_setup(store, project, "hello", image=image, pod_timeout=2)
    start_worker(workers, k8s_api)
    done = final(store, store.create_run(deployment), timeout=30)
    assert (done.state, done.state_message) == ("CRASHED", message)
    assert k8s_api.jobs == {}  # the Job was deleted


def _execution(url: str, lines: list[tuple[str, str]]) -> Any:
    from kubernetes import client

    from buildsys.infra.kubernetes import KubernetesExecution

    config = client.Configuration()
    config.host = url
    config.retries = 0
    return KubernetesExecution(
        client.ApiClient(config), "default", "gone", lambda s, line: lines.append((s, line)),
        stream=True, pod_timeout=1, poll_seconds=0.05,
    )


def test_stopping_a_job_that_is_already_gone_says_nothing(k8s_api: FakeKubernetes) -> None:
    lines: list[tuple[str, str]] = []
    execution = _execution(k8s_api.url, lines)
    execution.terminate()  # the fake answers 404: the Job is gone, nothing to stop
    assert execution.wait(30) is not None
    assert lines == []


def test_a_job_that_cannot_be_deleted_is_said_in_the_run_log() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: the API is unreachable
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    lines: list[tuple[str, str]] = []
    execution = _execution(url, lines)
    execution.terminate()
    assert execution.wait(30) is not None
    said = [line for stream, line in lines if stream == "stderr"]
    assert len(said) == 1 and said[0].startswith("buildsys: could not delete the Kubernetes Job default:gone: "), lines
    assert "Connection refused" in said[0] or "MaxRetryError" in said[0], said
