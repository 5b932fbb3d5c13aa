"""Infrastructure a run executes on: one module per pool type (process, docker, kubernetes).

Each type turns a :class:`Job` (the run's rendered job configuration plus the runtime's context)
into a running :class:`Execution` whose output lines go to a sink, and which can be waited on,
terminated and killed. The worker does the rest (states, logs, leases).

Pool types register like steps: the built-in ones through the entry-point group
``buildsys.pool_types`` that a plugin uses to add its own (name = the pool type, value = the class).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from functools import cache, lru_cache
from typing import IO, TYPE_CHECKING, Any, Protocol

from buildsys.errors import BuildsysError
from buildsys.records import NEW_DICT, Record
from buildsys.suggest import did_you_mean

if TYPE_CHECKING:
    from buildsys.plugins import Entry

__all__ = [
    "Execution",
    "Infrastructure",
    "InfrastructureError",
    "Job",
    "Outcome",
    "Sink",
    "get_infrastructure",
    "pool_type",
    "pool_types",
    "pump_lines",
    "shipped_job_template",
    "unknown_pool_type",
]

GROUP = "buildsys.pool_types"

# (stream, line) — stream is "stdout" or "stderr"; the line has no trailing newline.
Sink = Callable[[str, str], None]

_set = object.__setattr__


class InfrastructureError(BuildsysError):
    """The infrastructure for a run could not be created (bad image, API refused, ...)."""


class Job(Record):
    """Everything a pool type needs to start one run."""

    __slots__ = __match_args__ = (
        "run_id", "run_name", "flow_name", "deployment", "pool", "worker", "configuration", "context",
        "env", "store_url", "owned_env",
    )
    run_id: str
    run_name: str
    flow_name: str
    deployment: str
    pool: str
    worker: str
    configuration: Mapping[str, Any]  # the rendered job configuration (pools.job_configuration)
    context: Mapping[str, Any]  # the runtime's run context (runtime.RunContext.to_dict())
    env: Mapping[str, str]  # attribution vars, merged under config env
    store_url: str
    # what the worker owns and the job's env cannot change: the Prefect API of the run, its key
    owned_env: Mapping[str, str]

    def __init__(
        self,
        run_id: str,
        run_name: str,
        flow_name: str,
        deployment: str,
        pool: str,
        worker: str,
        configuration: Mapping[str, Any],
        context: Mapping[str, Any],
        env: Mapping[str, str] = NEW_DICT,
        store_url: str = "",
        owned_env: Mapping[str, str] = NEW_DICT,
    ) -> None:
        _set(self, "run_id", run_id)
        _set(self, "run_name", run_name)
        _set(self, "flow_name", flow_name)
        _set(self, "deployment", deployment)
        _set(self, "pool", pool)
        _set(self, "worker", worker)
        _set(self, "configuration", configuration)
        _set(self, "context", context)
        _set(self, "env", {} if env is NEW_DICT else env)
        _set(self, "store_url", store_url)
        _set(self, "owned_env", {} if owned_env is NEW_DICT else owned_env)

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


class Outcome(Record):
    """How the infrastructure ended: an exit code, and a message when it crashed for a known reason."""

    __slots__ = __match_args__ = ("exit_code", "message")
    exit_code: int
    message: str | None

    def __init__(
        self,
        exit_code: int,
        message: str | None = None,
    ) -> None:
        _set(self, "exit_code", exit_code)
        _set(self, "message", message)


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
    """A pool type: the class registered under its name in the ``buildsys.pool_types`` group."""

    type: str

    @staticmethod
    def default_job_template() -> dict[str, Any]:
        """The type's base job template (Prefect's shape: job_configuration + variables)."""
        ...

    def start(self, job: Job, sink: Sink) -> Execution: ...


@lru_cache(maxsize=1)
def _registered() -> dict[str, list[Entry]]:
    """Every entry point of the group by name (two values for one name: a conflict, said when used)."""
    from buildsys import plugins

    found: dict[str, list[Entry]] = {}
    for ep in plugins.group(GROUP):
        claims = found.setdefault(ep.name, [])
        if not any(c.value == ep.value for c in claims):
            claims.append(ep)
    return found


def pool_types() -> tuple[str, ...]:
    """The names of the registered pool types, sorted."""
    return tuple(sorted(_registered()))


def unknown_pool_type(name: str) -> tuple[str, str] | None:
    """(message, hint) when no pool type has this name: the one rule for the loader, pools and the worker."""
    known = pool_types()
    if name in known:
        return None
    if not known:
        return f"unknown work pool type {name!r}", (
            f"no pool type is registered (the entry-point group {GROUP} is empty): "
            "reinstall buildsys so that its entry points are written (pip install -e . in a checkout)"
        )
    suggestion = did_you_mean(name, known)
    return f"unknown work pool type {name!r}", f"use one of: {', '.join(known)}" + (f"; {suggestion}" if suggestion else "")


@cache
def pool_type(name: str) -> type[Infrastructure]:
    """The class of a pool type (importing only that type's module)."""
    problem = unknown_pool_type(name)
    if problem is not None:
        raise InfrastructureError(problem[0], hint=problem[1])
    claims = _registered()[name]
    if len(claims) > 1:
        raise InfrastructureError(
            f"work pool type {name!r} is registered twice: {' and '.join(sorted(c.value for c in claims))}",
            hint="uninstall one of the packages that register it",
        )
    loaded: type[Infrastructure] = claims[0].load()
    return loaded


def get_infrastructure(name: str, **options: Any) -> Infrastructure:
    """An instance of the pool type `name`, made with its options."""
    return pool_type(name)(**options)


def shipped_job_template(name: str) -> dict[str, Any]:
    """A built-in type's default template, as shipped in `schemas/job-templates/` (a fresh copy)."""
    from buildsys.shipped import schema_text

    text = schema_text("job-templates", f"{name}.json")
    template: dict[str, Any] = json.loads(text)
    return template


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
