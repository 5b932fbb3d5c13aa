"""The kubernetes pool type: one batch/v1 Job per run (prefect-kubernetes's template and variables).

The rendered ``job_manifest`` is completed the way Prefect's worker does it (namespace, env list,
labels, image, args, generateName) and turned into the official client's ``V1Job`` model, then
checked against the Kubernetes OpenAPI schemas offline with ``kubernetes-validate``. The worker submits it (kubeconfig, the job's ``cluster_config``, or in-cluster config),
watches the pod, streams its log, deletes the Job on cancel and turns pod failures (image pulls,
OOM kills, evictions) into clear messages.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import shlex
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from buildsys.infra import InfrastructureError, Job, Outcome, Sink, decoded_lines, shipped_job_template

__all__ = ["KubernetesExecution", "KubernetesInfrastructure", "build_job", "validate_manifest"]

DEFAULT_ARGS = ["python3", "-m", "buildsys.runtime"]
CONTAINER = "prefect-job"
IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]+")
NO_POD: Any = object()  # a watch round found no pod for the Job (yet)


def _slug(value: str, limit: int = 63) -> str:
    """A valid label value / name part: alphanumerics, '-', '_', '.', alphanumeric at both ends."""
    return _LABEL_VALUE.sub("-", value)[:limit].strip("-_.")


def _dns_name(value: str, limit: int = 50) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", value.lower())[:limit].strip("-") or "buildsys-run"


def build_job(job: Job) -> dict[str, Any]:
    """The complete Job manifest for a run (Prefect's ``prepare_for_flow_run``, then our env)."""
    config = job.configuration
    manifest = copy.deepcopy(dict(config.get("job_manifest") or {}))
    for key in ("apiVersion", "kind", "metadata", "spec"):
        if key not in manifest:
            raise InfrastructureError(f"the job manifest has no {key!r}", hint="check the pool's base job template")
    if manifest["apiVersion"] != "batch/v1" or manifest["kind"] != "Job":
        raise InfrastructureError(f"the job manifest must be a batch/v1 Job, not {manifest['apiVersion']} {manifest['kind']}")
    spec = manifest["spec"]
    pod_spec = spec.setdefault("template", {}).setdefault("spec", {})
    # Prefect's template puts these in the pod spec, where Kubernetes ignores them; they are Job fields.
    for key in ("parallelism", "completions"):
        if key in pod_spec:
            spec.setdefault(key, pod_spec.pop(key))
    pod_spec.setdefault("restartPolicy", "Never")
    if _loopback(job.api_url) and "hostNetwork" not in pod_spec:
        # the worker serves the run's Prefect API on its loopback: only a pod on the host's network
        # (a single-node cluster beside the worker) reaches it; a server store is reached by URL
        pod_spec["hostNetwork"] = True
        pod_spec.setdefault("dnsPolicy", "ClusterFirstWithHostNet")
    containers = pod_spec.setdefault("containers", [{}])
    container = next((c for c in containers if c.get("name") == CONTAINER), containers[0])
    container.setdefault("name", CONTAINER)
    image = container.get("image") or config.get("image")
    if not image:
        raise InfrastructureError("the kubernetes pool needs an image", hint="set the job variable `image`")
    container["image"] = image
    command = config.get("command")
    if isinstance(command, str) and command.strip():
        container["args"] = shlex.split(command)
    elif isinstance(container.get("args"), str):
        container["args"] = shlex.split(container["args"])
    elif not container.get("args"):
        container["args"] = list(DEFAULT_ARGS)
    container["env"] = _env_list(container.get("env"), job.environment())
    _clean_resources(container)
    metadata = manifest["metadata"]
    namespace = metadata.get("namespace") or config.get("namespace") or "default"
    metadata["namespace"] = namespace
    labels = {**{_label_key(k): _slug(str(v)) for k, v in job.labels().items()}, **(metadata.get("labels") or {})}
    metadata["labels"] = labels
    name = metadata.get("generateName", "").rstrip("-") or config.get("name") or job.run_name
    metadata["generateName"] = _dns_name(str(name)) + "-"
    metadata.pop("name", None)
    template_meta = spec["template"].setdefault("metadata", {})
    template_meta["labels"] = {**labels, **(template_meta.get("labels") or {})}
    if metadata.get("annotations"):
        template_meta["annotations"] = {**metadata["annotations"], **(template_meta.get("annotations") or {})}
    return _through_models(manifest)


def _loopback(url: str) -> bool:
    from buildsys.infra.docker import is_loopback_url

    return is_loopback_url(url)


def _label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if not prefix and name.startswith("buildsys."):
        prefix, name = "buildsys.dev", name[len("buildsys.") :]
    return f"{prefix}/{_slug(name)}" if prefix else _slug(name)


def _env_list(template_env: Any, job_env: Mapping[str, str]) -> list[dict[str, Any]]:
    """Hard-coded env entries of the template are kept; the run's values win by name."""
    entries: list[dict[str, Any]] = []
    if isinstance(template_env, list):
        entries = [dict(e) for e in template_env if isinstance(e, Mapping) and "name" in e]
    elif isinstance(template_env, Mapping):
        entries = [{"name": str(k), "value": str(v)} for k, v in template_env.items() if v is not None]
    ours = {k: v for k, v in job_env.items()}
    kept = [e for e in entries if e["name"] not in ours]
    return kept + [{"name": k, "value": str(v)} for k, v in ours.items()]


def _clean_resources(container: dict[str, Any]) -> None:
    resources = container.get("resources") or {}
    cleaned = {k: v for k, v in resources.items() if isinstance(v, Mapping) and v}
    if cleaned:
        container["resources"] = cleaned
    else:
        container.pop("resources", None)


def _through_models(manifest: dict[str, Any]) -> dict[str, Any]:
    """Round-trip through the official client's V1Job model (which drops what it does not know)."""
    from kubernetes.client import ApiClient

    class _Response:
        data = json.dumps(manifest)

    with ApiClient() as client:
        model = client.deserialize(_Response(), "V1Job")
        body: dict[str, Any] = client.sanitize_for_serialization(model)
    return body


def validate_manifest(manifest: Mapping[str, Any], version: str | None = None) -> None:
    """Check the Job against the Kubernetes schemas, offline (kubernetes-validate, a dependency)."""
    try:
        import kubernetes_validate
    except ImportError:
        raise InfrastructureError(
            "cannot validate the Job manifest: the kubernetes-validate package is missing",
            hint="reinstall buildsys (kubernetes-validate is one of its dependencies)",
        ) from None
    target = version or kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(dict(manifest), target, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in getattr(exc, "path", []) or [])
        raise InfrastructureError(
            f"the Job manifest is not valid for Kubernetes {target}: {getattr(exc, 'message', exc)}"
            + (f" (at {where})" if where else "")
        ) from None


class KubernetesInfrastructure:
    type = "kubernetes"

    @staticmethod
    def default_job_template() -> dict[str, Any]:
        return shipped_job_template("kubernetes")

    def __init__(self, *, api_client: Any = None, validate: bool = True, poll_seconds: float = 0.5) -> None:
        self._api_client = api_client
        self.validate = validate
        self.poll_seconds = poll_seconds

    def _client_for(self, config: Mapping[str, Any]) -> Any:
        if self._api_client is not None:
            return self._api_client
        from kubernetes import client
        from kubernetes import config as kube_config

        cluster = config.get("cluster_config")
        try:
            if isinstance(cluster, Mapping) and cluster.get("config"):
                return kube_config.new_client_from_config_dict(dict(cluster["config"]), context=cluster.get("context_name"))
            try:
                return kube_config.new_client_from_config()
            except kube_config.ConfigException:
                kube_config.load_incluster_config()
                return client.ApiClient()
        except kube_config.ConfigException as exc:
            raise InfrastructureError(
                f"no Kubernetes configuration: {exc}",
                hint="set KUBECONFIG, run the worker in a cluster, or set the job variable cluster_config",
            ) from None

    def start(self, job: Job, sink: Sink) -> KubernetesExecution:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        manifest = build_job(job)
        if self.validate:
            validate_manifest(manifest)
        api = self._client_for(job.configuration)
        namespace = manifest["metadata"]["namespace"]
        try:
            created = client.BatchV1Api(api).create_namespaced_job(namespace, manifest)
        except ApiException as exc:
            raise InfrastructureError(f"Kubernetes refused the Job: {exc.status} {exc.reason}: {_api_message(exc)}") from None
        except Exception as exc:  # connection refused, TLS, DNS
            raise InfrastructureError(f"cannot reach the Kubernetes API: {exc}") from None
        config = job.configuration
        return KubernetesExecution(
            api,
            namespace,
            created.metadata.name,
            sink,
            stream=config.get("stream_output", True) is not False,
            pod_timeout=float(config.get("pod_watch_timeout_seconds") or 60),
            poll_seconds=self.poll_seconds,
        )


def _api_errors() -> tuple[type[BaseException], ...]:
    """What a Kubernetes API call raises: the API's refusals, and the connection's errors."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return (ApiException, HTTPError, OSError)


def _described(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if status is not None:
        return f"{status} {getattr(exc, 'reason', '')}: {_api_message(exc)}"
    return f"{type(exc).__name__}: {exc}"


def _api_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.body)
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")


class KubernetesExecution:
    """Watches the Job's pod: waits for it to start, streams its log, reads how it ended."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        job_name: str,
        sink: Sink,
        *,
        stream: bool,
        pod_timeout: float,
        poll_seconds: float,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.job_name = job_name
        self.sink = sink
        self.stream = stream
        self.pod_timeout = pod_timeout
        self.poll_seconds = poll_seconds
        self._outcome: Outcome | None = None
        self._done = threading.Event()
        self._deleted = threading.Event()
        self._log_thread: threading.Thread | None = None
        self._pod_name = ""
        self._emitted = 0
        self._emit_lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name=f"k8s-{job_name}", daemon=True)
        self._thread.start()

    @property
    def identifier(self) -> str:
        return f"{self.namespace}:{self.job_name}"

    def wait(self, timeout: float | None = None) -> Outcome | None:
        if not self._done.wait(timeout):
            return None
        return self._outcome

    def terminate(self) -> None:
        self._delete()

    def kill(self) -> None:
        self._delete()

    def _delete(self) -> None:
        from kubernetes import client

        if self._deleted.is_set():
            return
        self._deleted.set()
        try:
            client.BatchV1Api(self.api).delete_namespaced_job(
                self.job_name, self.namespace, propagation_policy="Foreground", grace_period_seconds=0
            )
        except _api_errors() as exc:
            if getattr(exc, "status", None) != 404:  # 404: already gone, nothing to stop
                self.sink("stderr", f"buildsys: could not delete the Kubernetes Job {self.identifier}: {_described(exc)}")

    # --- the watch -----------------------------------------------------------------------------

    def _supervise(self) -> None:
        try:
            outcome = self._follow_pod()
        except Exception as exc:
            outcome = Outcome(-1, f"lost track of the Kubernetes Job {self.identifier}: {type(exc).__name__}: {exc}")
        self._finish_logs()
        self._outcome = outcome
        self._done.set()

    def _follow_pod(self) -> Outcome:
        deadline = time.monotonic() + self.pod_timeout
        for pod in self._pod_events():
            if pod is None:  # the pod (and job) were deleted
                return Outcome(143, "the Kubernetes Job was deleted")
            if pod is NO_POD:
                if time.monotonic() > deadline:
                    self._delete()
                    return Outcome(-1, f"no pod was created within {self.pod_timeout:g} s (pod_watch_timeout_seconds)")
                continue
            phase = pod.status.phase if pod.status else None
            failure = _waiting_failure(pod)
            if failure is not None:
                self._delete()
                return Outcome(-1, failure)
            if phase in ("Running", "Succeeded", "Failed") and self._log_thread is None and _container_started(pod):
                self._start_logs(pod.metadata.name)
            if phase in ("Succeeded", "Failed"):
                return _terminal_outcome(pod)
            if phase in (None, "Pending") and time.monotonic() > deadline and not _container_started(pod):
                self._delete()
                return Outcome(-1, f"the pod did not start within {self.pod_timeout:g} s (pod_watch_timeout_seconds)")
        return Outcome(-1, "the pod watch ended unexpectedly")

    def _pod_events(self) -> Iterator[Any]:
        """Pod states from a watch on the Job's pods, re-established when it times out. Yields None
        when the pod is gone (deleted with the Job, or removed) and NO_POD after a watch round in
        which no pod existed yet (so the caller can give up after pod_watch_timeout_seconds)."""
        from kubernetes import client, watch

        core = client.CoreV1Api(self.api)
        selector = f"job-name={self.job_name}"
        seen = False
        round_seconds = max(1, min(30, int(self.pod_timeout)))
        while True:
            got = False
            w = watch.Watch()
            for event in w.stream(
                core.list_namespaced_pod, self.namespace, label_selector=selector, timeout_seconds=round_seconds
            ):
                got = seen = True
                if event["type"] == "DELETED":
                    yield None
                    return
                yield event["object"]
            if not got:  # a new watch lists every existing pod first: none exists now
                if seen or self._deleted.is_set():
                    yield None
                    return
                yield NO_POD
            time.sleep(self.poll_seconds)

    def _start_logs(self, pod_name: str) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        self._pod_name = pod_name

        def run() -> None:
            # a follow stream can end early (API server restarts, proxies): _finish_logs tops up
            with contextlib.suppress(*_api_errors()):
                response = core.read_namespaced_pod_log(
                    pod_name, self.namespace, container=CONTAINER, follow=True, _preload_content=False
                )
                for line in decoded_lines(response.stream(4096)):
                    self._emit(line)

        self._log_thread = threading.Thread(target=run, name=f"k8s-log-{pod_name}", daemon=True)
        self._log_thread.start()

    def _emit(self, line: str) -> None:
        from buildsys.runtime import CONTROL_PREFIX

        with self._emit_lock:
            self._emitted += 1
            if self.stream or line.startswith(CONTROL_PREFIX):
                self.sink("stdout", line)

    def _finish_logs(self) -> None:
        """After the pod ended: the lines the follow stream did not deliver, from the full log."""
        from kubernetes import client

        if self._log_thread is None:
            return
        self._log_thread.join(5)
        if self._log_thread.is_alive():
            return
        try:
            text = client.CoreV1Api(self.api).read_namespaced_pod_log(self._pod_name, self.namespace, container=CONTAINER)
        except _api_errors() as exc:
            self.sink("stderr", f"buildsys: could not read the rest of pod {self._pod_name}'s log: {_described(exc)}")
            return
        for line in str(text).splitlines()[self._emitted :]:
            self._emit(line)


def _container_status(pod: Any) -> Any:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return next((s for s in statuses if s.name == CONTAINER), statuses[0] if statuses else None)


def _container_started(pod: Any) -> bool:
    status = _container_status(pod)
    return status is not None and status.state is not None and (status.state.running or status.state.terminated) is not None


def _waiting_failure(pod: Any) -> str | None:
    status = _container_status(pod)
    waiting = status.state.waiting if status is not None and status.state is not None else None
    if waiting is None:
        return None
    if waiting.reason in IMAGE_ERRORS:
        return f"the image could not be pulled ({waiting.reason}): {waiting.message or status.image}"
    if waiting.reason in CONFIG_ERRORS:
        return f"the container could not be created ({waiting.reason}): {waiting.message or ''}".rstrip(": ")
    return None


def _terminal_outcome(pod: Any) -> Outcome:
    status = pod.status
    if status.reason == "Evicted":
        return Outcome(-1, f"the pod was evicted: {status.message or 'no reason given'}")
    container = _container_status(pod)
    terminated = container.state.terminated if container is not None and container.state is not None else None
    if terminated is None:
        return Outcome(0 if status.phase == "Succeeded" else -1, None if status.phase == "Succeeded" else status.message)
    code = int(terminated.exit_code)
    if terminated.reason == "OOMKilled":
        return Outcome(code, "the container was killed for using more memory than its limit (OOMKilled)")
    if code == 137:
        return Outcome(code, "the container was killed (SIGKILL)")
    return Outcome(code, None)
