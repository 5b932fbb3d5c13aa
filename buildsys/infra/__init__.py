"""Infrastructure a run executes on: one module per pool type (process, docker, kubernetes).

Each type turns a :class:`Job` (the run's rendered job configuration plus the runtime's context)
into a running :class:`Execution` whose output lines go to a sink, and which can be waited on,
terminated and killed. The worker does the rest (states, logs, leases).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from buildsys.errors import BuildsysError

__all__ = [
    "Execution",
    "Infrastructure",
    "InfrastructureError",
    "Job",
    "Outcome",
    "Sink",
    "get_infrastructure",
    "pump_lines",
]

# (stream, line) — stream is "stdout" or "stderr"; the line has no trailing newline.
Sink = Callable[[str, str], None]


class InfrastructureError(BuildsysError):
    """The infrastructure for a run could not be created (bad image, API refused, ...)."""


@dataclass(frozen=True)
class Job:
    """Everything a pool type needs to start one run."""

    run_id: str
    run_name: str
    flow_name: str
    deployment: str
    pool: str
    worker: str
    configuration: Mapping[str, Any]  # the rendered job configuration (pools.job_configuration)
    context: Mapping[str, Any]  # the runtime's run context (runtime.RunContext.to_dict())
    env: Mapping[str, str] = field(default_factory=dict)  # attribution vars, merged under config env
    store_url: str = ""
    # what the worker owns and the job's env cannot change: the Prefect API of the run, its key
    owned_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def context_json(self) -> str:
        return json.dumps(self.context, separators=(",", ":"), default=str)

    def environment(self) -> dict[str, str]:
        """Attribution variables < configured env < the worker's own (the run's Prefect API); the
        runtime's context in BUILDSYS_RUN_CONTEXT."""
        configured = self.configuration.get("env") or {}
        env = {**self.env, **{str(k): str(v) for k, v in configured.items() if v is not None}, **self.owned_env}
        env["BUILDSYS_RUN_CONTEXT"] = self.context_json
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    @property
    def api_url(self) -> str:
        """The Prefect API URL the run's engine calls ("" when none)."""
        return self.owned_env.get("PREFECT_API_URL", "")

    def labels(self) -> dict[str, str]:
        base = {
            "buildsys.run-id": self.run_id,
            "buildsys.run-name": self.run_name,
            "buildsys.flow-name": self.flow_name,
            "buildsys.deployment": self.deployment,
            "buildsys.pool": self.pool,
            "buildsys.worker": self.worker,
        }
        configured = self.configuration.get("labels") or {}
        return {**base, **{str(k): str(v) for k, v in configured.items()}}


@dataclass(frozen=True)
class Outcome:
    """How the infrastructure ended: an exit code, and a message when it crashed for a known reason."""

    exit_code: int
    message: str | None = None


class Execution(Protocol):
    """A started run."""

    @property
    def identifier(self) -> str:
        """The infrastructure id recorded on the run (pid, container id, namespace:job)."""
        ...

    def wait(self, timeout: float | None = None) -> Outcome | None:
        """The outcome once it ended and its output is drained; None if still running at timeout."""
        ...

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM / docker stop / delete the job)."""
        ...

    def kill(self) -> None:
        """Stop it now (SIGKILL)."""
        ...


class Infrastructure(Protocol):
    type: str

    def start(self, job: Job, sink: Sink) -> Execution: ...


def get_infrastructure(pool_type: str, **options: Any) -> Infrastructure:
    """The implementation of a pool type (imports only what that type needs)."""
    if pool_type == "process":
        from buildsys.infra.process import ProcessInfrastructure

        return ProcessInfrastructure(**options)
    if pool_type == "docker":
        from buildsys.infra.docker import DockerInfrastructure

        return DockerInfrastructure(**options)
    if pool_type == "kubernetes":
        from buildsys.infra.kubernetes import KubernetesInfrastructure

        return KubernetesInfrastructure(**options)
    raise InfrastructureError(
        f"unknown work pool type {pool_type!r}", hint="use one of: process, docker, kubernetes"
    )


def pump_lines(stream: IO[bytes] | None, name: str, sink: Sink) -> threading.Thread:
    """Copy a byte stream to the sink line by line, in a daemon thread (returned, started)."""

    def run() -> None:
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            sink(name, raw.decode("utf-8", "replace").rstrip("\r\n"))
        stream.close()

    thread = threading.Thread(target=run, name=f"pump-{name}", daemon=True)
    thread.start()
    return thread


def decoded_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """Text lines from a stream of byte chunks split anywhere (a container's or a pod's log)."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", "replace").rstrip("\r")
    if buffer:
        yield buffer.decode("utf-8", "replace").rstrip("\r")
