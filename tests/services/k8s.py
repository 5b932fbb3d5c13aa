"""A fake Kubernetes API server on 127.0.0.1 for the kubernetes pool type (there is no cluster here).

It speaks the REST paths the official client uses for Jobs: create / get / delete a namespaced Job,
list and watch pods by label selector, read a pod and follow its log. A small "kubelet" plays each
Job's pod: the container's args run as a local process (``python3`` is this interpreter) with the
container's env, so the real in-run runtime executes and its output becomes the pod log. Images
named ``fake/missing…``, ``fake/oom…``, ``fake/evicted…``, ``fake/pending…`` and ``fake/nopod…``
simulate an image pull failure, an OOM kill, an eviction, a pod that never starts and a Job whose
pod is never created.

Fixture ``k8s_api`` yields a `FakeKubernetes` with ``url``, ``kubeconfig`` (a file for KUBECONFIG),
``jobs`` (created bodies by name) and ``pods``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

__all__ = ["FakeKubernetes", "k8s_api"]

JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?(/log)?$")


class FakeKubernetes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, list[str]] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.deleted: list[str] = []
        self.version = 0
        self.changed = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
                    "current-context": "fake",
                }
            )
        )
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        for name in list(self.procs):
            self._kill(name)
        self.server.shutdown()
        self.server.server_close()

    # --- state changes ---------------------------------------------------------------------

    def _touch(self, pod: dict[str, Any]) -> None:
        with self.changed:
            self.version += 1
            pod["metadata"]["resourceVersion"] = str(self.version)
            self.changed.notify_all()

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        job = copy.deepcopy(body)
        meta = job.setdefault("metadata", {})
        name = meta.get("name") or f"{meta.get('generateName', 'job-')}{secrets.token_hex(3)[:5]}"
        meta.update(name=name, namespace=namespace, uid=secrets.token_hex(8))
        job["status"] = {}
        self.jobs[name] = job
        container = job["spec"]["template"]["spec"]["containers"][0]
        if str(container.get("image", "")).startswith("fake/nopod"):
            return job  # e.g. a quota refuses the pod: the Job exists, no pod ever appears
        pod_name = f"{name}-{secrets.token_hex(3)[:5]}"
        template = job["spec"]["template"]
        container = template["spec"]["containers"][0]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": namespace,
                "labels": {**(template.get("metadata", {}).get("labels") or {}), "job-name": name},
                "uid": secrets.token_hex(8),
            },
            "spec": template["spec"],
            "status": {"phase": "Pending", "containerStatuses": [_status(container, waiting={"reason": "ContainerCreating"})]},
        }
        self.pods[pod_name] = pod
        self.logs[pod_name] = []
        self._touch(pod)
        threading.Thread(target=self._kubelet, args=(pod_name, container), daemon=True).start()
        return job

    def delete_job(self, name: str) -> bool:
        if self.jobs.pop(name, None) is None:
            return False
        self.deleted.append(name)
        for pod_name, pod in list(self.pods.items()):
            if pod["metadata"]["labels"].get("job-name") == name:
                self._kill(pod_name)
                with self.changed:
                    pod["deleted"] = True
                    self.pods.pop(pod_name)
                    self._touch(pod)
        return True

    def _kill(self, pod_name: str) -> None:
        proc = self.procs.pop(pod_name, None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def _kubelet(self, pod_name: str, container: dict[str, Any]) -> None:
        pod = self.pods[pod_name]
        image = str(container.get("image", ""))
        statuses = pod["status"]["containerStatuses"]
        if image.startswith("fake/missing"):
            statuses[0] = _status(container, waiting={"reason": "ErrImagePull", "message": f'pull access denied for {image.split(":")[0]}'})
            self._touch(pod)
            return
        if image.startswith("fake/pending"):
            return  # the pod stays Pending (ContainerCreating) forever
        if image.startswith("fake/evicted"):
            pod["status"].update(phase="Failed", reason="Evicted", message="The node was low on resource: memory.")
            self._touch(pod)
            return
        if image.startswith("fake/oom"):
            statuses[0] = _status(container, terminated={"exitCode": 137, "reason": "OOMKilled"})
            pod["status"]["phase"] = "Failed"
            self._touch(pod)
            return
        args = [sys.executable if a in ("python3", "python") else a for a in container.get("args") or container.get("command")]
        env = {**{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}}
        env.update({e["name"]: e.get("value", "") for e in container.get("env") or []})
        cwd = tempfile.mkdtemp(prefix="fake-pod-", dir=self.workdir)
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[pod_name] = proc
        statuses[0] = _status(container, running={"startedAt": _now()})
        pod["status"]["phase"] = "Running"
        self._touch(pod)
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            with self.changed:
                self.logs[pod_name].append(raw.decode("utf-8", "replace"))
                self.changed.notify_all()
        code = proc.wait()
        if pod.get("deleted"):
            return
        statuses[0] = _status(container, terminated={"exitCode": code, "reason": "Completed" if code == 0 else "Error"})
        pod["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
        self._touch(pod)

    # --- reads ---------------------------------------------------------------------------------

    def select(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        return [
            p
            for p in self.pods.values()
            if p["metadata"]["namespace"] == namespace and all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]

    def pod_done(self, pod_name: str) -> bool:
        pod = self.pods.get(pod_name)
        return pod is None or pod["status"]["phase"] in ("Succeeded", "Failed")


def _status(container: dict[str, Any], **state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": container.get("name", "prefect-job"),
        "image": container.get("image", ""),
        "imageID": "",
        "ready": "running" in state,
        "restartCount": 0,
        "state": state,
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _handler(api: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # streams are chunked, as the real API server's are

        def log_message(self, *args: Any) -> None:
            pass

        def send_json(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def not_found(self, what: str) -> None:
            self.send_json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": f"{what} not found", "reason": "NotFound", "code": 404})

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            match = JOBS.match(path)
            if not match or match.group(2):
                return self.not_found(path)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self.send_json(201, api.create_job(match.group(1), body))

        def do_DELETE(self) -> None:
            match = JOBS.match(urlsplit(self.path).path)
            if not match or not match.group(2) or not api.delete_job(match.group(2)):
                return self.not_found(self.path)
            self.send_json(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            job = JOBS.match(url.path)
            if job and job.group(2):
                found = api.jobs.get(job.group(2))
                return self.send_json(200, found) if found else self.not_found(url.path)
            pods = PODS.match(url.path)
            if not pods:
                return self.not_found(url.path)
            namespace, name, log = pods.groups()
            if name and log:
                return self.stream_log(name, query.get("follow", "").lower() in ("true", "1"))
            if name:
                found = api.pods.get(name)
                return self.send_json(200, found) if found else self.not_found(url.path)
            if query.get("watch") in ("true", "True", "1"):
                return self.watch(namespace, query.get("labelSelector", ""), float(query.get("timeoutSeconds", 30)))
            items = api.select(namespace, query.get("labelSelector", ""))
            self.send_json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(api.version)}, "items": items})

        def start_stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.close_connection = True

        def chunk(self, data: bytes) -> None:
            if data:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        def end_stream(self) -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        def watch(self, namespace: str, selector: str, timeout: float) -> None:
            self.start_stream()
            sent: dict[str, str] = {}
            deadline = time.monotonic() + timeout
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                while time.monotonic() < deadline:
                    with api.changed:
                        current = {p["metadata"]["name"]: p for p in api.select(namespace, selector)}
                        events = []
                        for name, pod in current.items():
                            if sent.get(name) != pod["metadata"]["resourceVersion"]:
                                events.append(("ADDED" if name not in sent else "MODIFIED", pod))
                        gone = [n for n in sent if n not in current]
                        if not events and not gone:
                            api.changed.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                            continue
                    for kind, pod in events:
                        sent[pod["metadata"]["name"]] = pod["metadata"]["resourceVersion"]
                        self.chunk((json.dumps({"type": kind, "object": pod}) + "\n").encode())
                    for name in gone:
                        sent.pop(name)
                        stub = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}}
                        self.chunk((json.dumps({"type": "DELETED", "object": stub}) + "\n").encode())
            self.end_stream()

        def stream_log(self, pod_name: str, follow: bool) -> None:
            if pod_name not in api.logs:
                return self.not_found(pod_name)
            self.start_stream()
            index = 0
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                while True:
                    with api.changed:
                        lines = api.logs[pod_name][index:]
                        done = api.pod_done(pod_name)
                        if not lines and follow and not done:
                            api.changed.wait(0.5)
                            continue
                    self.chunk("".join(lines).encode())
                    index += len(lines)
                    if not follow or (done and not lines):
                        break
            self.end_stream()

    return Handler


@pytest.fixture
def k8s_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubernetes]:
    """A fresh fake Kubernetes API server on 127.0.0.1 (stopped, with its pods, afterwards)."""
    api = FakeKubernetes(tmp_path_factory.mktemp("k8s"))
    try:
        yield api
    finally:
        api.close()
