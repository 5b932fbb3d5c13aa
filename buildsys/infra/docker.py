"""The docker pool type: one container per run, through the Docker SDK (prefect-docker's variables).

The container runs ``python3 -m buildsys.runtime`` unless the job sets ``command``. The runtime is
pure Python, so the worker bind-mounts its own copy (read-only, on ``PYTHONPATH``) into the
container: any image with a Python 3.11+ can run flows, and the runtime always matches the worker.
Output is streamed from the container's logs; ``auto_remove`` removes the container after its
output has been read (removing it earlier could lose the last lines).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from buildsys import shutdown
from buildsys.infra import InfrastructureError, Job, Outcome, Sink, decoded_lines, shipped_job_template
from buildsys.shutdown import join_within

__all__ = ["RUNTIME_MOUNT", "DockerExecution", "DockerInfrastructure", "prepare_runtime_dir", "pull_policy"]

RUNTIME_MOUNT = "/opt/buildsys-runtime"
DEFAULT_COMMAND = ["python3", "-m", "buildsys.runtime"]
_NAME_CHARS = r"[^a-zA-Z0-9_.-]+"  # compiled when a container is named (re's cache), not when a plan loads the pool type


def pull_policy(image: str, configured: str | None) -> str:
    """Prefect's rule: no policy means Always for `latest`/untagged images, else IfNotPresent."""
    if configured:
        return configured
    name = image.rsplit("/", 1)[-1]
    if "@" in name:
        return "IfNotPresent"
    tag = name.split(":", 1)[1] if ":" in name else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def is_loopback_url(url: str) -> bool:
    if not url.startswith(("http://", "https://")):
        return False
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def prepare_runtime_dir(target: Path) -> Path:
    """Copy buildsys's Python modules (and the built-in steps, with their entry points) to
    ``target`` so that a container can import them from a read-only mount."""
    import importlib
    import shutil  # bz2, lzma…: only where a run mounts the runtime (a plan loads this module for its template)
    from importlib import metadata  # email, zipfile, csv…: only where a run mounts the runtime

    import buildsys

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    package = Path(buildsys.__file__).parent
    shutil.copytree(package, target / "buildsys", ignore=ignore, dirs_exist_ok=True)
    steps = Path(str(importlib.import_module("buildsys.steps").__file__)).parent
    if steps.resolve() != (package / "steps").resolve():
        shutil.copytree(steps, target / "buildsys" / "steps", ignore=ignore, dirs_exist_ok=True)
    try:
        dist = metadata.distribution("buildsys")
        version, entry_points = dist.version, dist.read_text("entry_points.txt") or ""
    except metadata.PackageNotFoundError:
        version, entry_points = "0", ""
    info = target / f"buildsys-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: buildsys\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)
    return target


class DockerInfrastructure:
    type = "docker"

    @staticmethod
    def default_job_template() -> dict[str, Any]:
        return shipped_job_template("docker")

    def __init__(self, *, store_url: str = "", client: Any = None, mount_runtime: bool = True) -> None:
        self.store_url = store_url
        self._client = client
        self.mount_runtime = mount_runtime
        self._runtime_dir: Path | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env()
                self._client.ping()
            except docker.errors.DockerException as exc:
                raise InfrastructureError(
                    f"cannot reach the Docker engine: {exc}", hint="start dockerd, or set DOCKER_HOST"
                ) from None
        return self._client

    def runtime_dir(self) -> Path:
        with self._lock:
            if self._runtime_dir is None:
                import tempfile

                self._runtime_dir = prepare_runtime_dir(Path(tempfile.mkdtemp(prefix="buildsys-runtime-")))
            return self._runtime_dir

    def close(self) -> None:
        if self._runtime_dir is not None:
            import shutil

            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def start(self, job: Job, sink: Sink) -> DockerExecution:
        import docker

        config = job.configuration
        image = config.get("image")
        if not image:
            raise InfrastructureError(
                "the docker pool needs an image", hint="set the job variable `image` on the pool or the deployment"
            )
        self._ensure_image(str(image), config)
        kwargs = self.container_kwargs(job)
        try:
            container = self.client.containers.create(**kwargs)
            container.start()
        except docker.errors.APIError as exc:
            raise InfrastructureError(f"cannot start a container from {image}: {exc.explanation or exc}") from None
        stream = config.get("stream_output", True) is not False
        return DockerExecution(container, sink, stream=stream, auto_remove=bool(config.get("auto_remove")),
                               image=str(image), command=list(kwargs["command"]))

    def container_kwargs(self, job: Job) -> dict[str, Any]:
        """The keyword arguments of ``containers.create`` for a job (pure apart from the mount dir)."""
        config = job.configuration
        env = job.environment()
        volumes = [str(v) for v in config.get("volumes") or []]
        if self.mount_runtime:
            volumes.append(f"{self.runtime_dir()}:{RUNTIME_MOUNT}:ro")
            env["PYTHONPATH"] = RUNTIME_MOUNT + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else "")
        command = config.get("command")
        import shlex

        kwargs: dict[str, Any] = {
            "image": str(config["image"]),
            "command": shlex.split(command) if isinstance(command, str) and command.strip() else DEFAULT_COMMAND,
            "environment": env,
            "labels": {_label_key(k): v for k, v in job.labels().items()},
            "volumes": volumes,
            "detach": True,
            "init": True,
        }
        name = config.get("name")
        if name:
            kwargs["name"] = re.sub(_NAME_CHARS, "-", str(name)).strip("-.") or None
        networks = list(config.get("networks") or [])
        network_mode = config.get("network_mode")
        if not network_mode and not networks and (is_loopback_url(self.store_url) or is_loopback_url(job.api_url)):
            # a store, or the Prefect API the worker serves, on the host's loopback is only reachable
            # from the container with host networking
            network_mode = "host"
        if network_mode:
            kwargs["network_mode"] = network_mode
        elif networks:
            kwargs["network"] = networks[0]
        for key in ("mem_limit", "memswap_limit"):
            if config.get(key):
                kwargs[key] = config[key]
        if config.get("privileged"):
            kwargs["privileged"] = True
        kwargs.update(config.get("container_create_kwargs") or {})
        return kwargs

    def _ensure_image(self, image: str, config: Mapping[str, Any]) -> None:
        import docker

        policy = pull_policy(image, config.get("image_pull_policy"))
        present = True
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            present = False
        if policy == "Never" and not present:
            raise InfrastructureError(f"image {image} is not on this Docker engine and the pull policy is Never")
        if policy == "IfNotPresent" and present:
            return
        if policy == "Never":
            return
        self._login(config.get("registry_credentials"))
        try:
            self.client.images.pull(image)
        except docker.errors.APIError as exc:
            if policy == "IfPossible" and present:
                return
            raise InfrastructureError(
                f"cannot pull image {image} (pull policy {policy}): {exc.explanation or exc}",
                hint="build it locally and set image_pull_policy: IfNotPresent, or check the registry and credentials",
            ) from None

    def _login(self, credentials: Any) -> None:
        if not isinstance(credentials, Mapping) or not credentials.get("username"):
            return
        import docker

        try:
            self.client.login(
                username=credentials["username"],
                password=credentials.get("password"),
                registry=credentials.get("registry_url"),
                reauth=bool(credentials.get("reauth", True)),
            )
        except docker.errors.APIError as exc:
            raise InfrastructureError(f"registry login failed: {exc.explanation or exc}") from None


def not_found(code: int, image: str, command: Sequence[str]) -> str | None:
    """Exit 126/127 of the container's command said for people (the shell's "cannot run" / "not found")."""
    if code not in (126, 127) or not command:
        return None
    program = command[0]
    if list(command) == DEFAULT_COMMAND:
        return (
            f"the image {image} has no `{program}`; the docker pool runs "
            f"`{' '.join(DEFAULT_COMMAND)}` in the container: use an image with Python 3.11 or later, "
            "or set the job variable `command`"
        )
    what = "cannot be executed" if code == 126 else "was not found"
    return f"the command `{program}` {what} in the image {image}; check the job variable `command`"


def _label_key(key: str) -> str:
    """Prefect's rule: `prefect.io/flow-run-id` becomes Docker's reverse-DNS `io.prefect.flow-run-id`."""
    if "/" not in key:
        return key
    domain, _, rest = key.partition("/")
    return ".".join(reversed(domain.split("."))) + "." + rest


class DockerExecution:
    def __init__(
        self, container: Any, sink: Sink, *, stream: bool, auto_remove: bool, image: str = "", command: Sequence[str] = ()
    ) -> None:
        self.container = container
        self.auto_remove = auto_remove
        self.image = image
        self.command = list(command)
        self.sink = sink
        self._result: dict[str, Any] | None = None
        self._done = threading.Event()
        self._pumps = [
            self._pump("stdout", sink, stream),
            self._pump("stderr", sink, stream),
        ]
        self._waiter = threading.Thread(target=self._wait, name="docker-wait", daemon=True)
        self._waiter.start()

    @property
    def identifier(self) -> str:
        return f"docker:{self.container.id[:12]}"

    def _pump(self, name: str, sink: Sink, stream: bool) -> threading.Thread:
        from buildsys.runtime import CONTROL_PREFIX

        def run() -> None:
            try:
                chunks = self.container.logs(stdout=name == "stdout", stderr=name == "stderr", stream=True, follow=True)
                for line in decoded_lines(chunks):
                    if stream or line.startswith(CONTROL_PREFIX):
                        sink(name, line)
            except _engine_errors() as exc:  # removed before the stream began, or the engine went away
                if getattr(exc, "status_code", None) != 404:
                    sink("stderr", f"buildsys: the {name} of {self.identifier} could not be read: {exc}")

        thread = threading.Thread(target=run, name=f"docker-{name}", daemon=True)
        thread.start()
        return thread

    def _wait(self) -> None:
        try:
            self._result = self.container.wait()
        except Exception as exc:  # the engine went away: report it as the outcome
            self._result = {"StatusCode": -1, "Error": {"Message": str(exc)}}
        self._done.set()

    def wait(self, timeout: float | None = None) -> Outcome | None:
        if not self._done.wait(timeout):
            return None
        if join_within(self._pumps, shutdown.OUTPUT_GRACE_SECONDS):
            # the engine may keep a follow stream open after the container exited (seen on 20.10
            # when the container ends before the stream attaches); removing the container ends it
            self.sink("stderr", f"buildsys: the output of {self.identifier} did not end within "
                      f"{shutdown.OUTPUT_GRACE_SECONDS:g} s of its exit; lines after this may be missing")
        result = self._result or {}
        code = int(result.get("StatusCode", -1))
        message = self._explain(code, result)
        if self.auto_remove:
            self._call("remove the container", self.container.remove, force=True)
        return Outcome(code, message)

    def _explain(self, code: int, result: Mapping[str, Any]) -> str | None:
        error = (result.get("Error") or {}).get("Message") if isinstance(result.get("Error"), Mapping) else None
        try:
            self.container.reload()
            state = self.container.attrs.get("State", {})
        except _engine_errors():  # gone (auto-removed) or the engine went away: the exit code says enough
            state = {}
        if state.get("OOMKilled"):
            return "the container was killed for using more memory than its limit (OOMKilled)"
        if error:
            return f"docker: {error}"
        if code == 137:
            return "the container was killed (SIGKILL)"
        return not_found(code, self.image, self.command)

    def terminate(self) -> None:
        self._call("stop the container (SIGTERM)", self.container.kill, signal="SIGTERM")

    def kill(self) -> None:
        self._call("kill the container (SIGKILL)", self.container.kill, signal="SIGKILL")

    def _call(self, what: str, method: Callable[..., Any], **kwargs: Any) -> None:
        """A call on a container that may have ended meanwhile (404 gone, 409 not running or being
        removed: nothing to do); any other engine error goes to the run's log."""
        try:
            method(**kwargs)
        except _engine_errors() as exc:
            if getattr(exc, "status_code", None) not in (404, 409):
                self.sink("stderr", f"buildsys: could not {what} {self.identifier}: {exc}")


def _engine_errors() -> tuple[type[BaseException], ...]:
    """What a Docker engine call raises: the SDK's errors, and OSError (requests' connection errors)."""
    import docker.errors

    return (docker.errors.DockerException, OSError)
