"""The in-run runtime: what executes inside a run's process or container.

``python -m buildsys.runtime`` reads the run context (JSON), runs the deployment's pull steps with
Prefect's namespace semantics, changes into the resulting ``directory``, imports the entrypoint and
calls it with the run's parameters. Standard library and buildsys's pure-Python modules only, so it
runs in any image that has a Python.

The context comes from ``--context FILE`` or the environment variable ``BUILDSYS_RUN_CONTEXT``
(inline JSON, or a path to a JSON file)::

    {"run": {"id", "name", "deployment", "flow_name", "attempt"}, "entrypoint": "flows/x.py:f",
     "parameters": {...}, "pull_steps": [...], "variables": {...}, "root": "/optional/start/dir"}

A Prefect ``@flow`` is not called here: after the pull steps it is handed to Prefect's own engine
(``buildsys.prefectengine``), which reads the flow run ``PREFECT__FLOW_RUN_ID`` names from the API
``PREFECT_API_URL`` names and sets its states there. Anything else (a plain function) is called
with the run's parameters by this module.

Exit codes: 0 the flow completed, 1 the flow raised, 2 the context is invalid, 3 a pull step failed,
4 the entrypoint could not be loaded, 5 the installed Prefect cannot run the flow. Progress goes to
stdout as control lines that start with ``::buildsys::`` followed by JSON (the worker turns them
into state changes and strips them).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from buildsys.step import StepDef

CONTEXT_ENV = "BUILDSYS_RUN_CONTEXT"
CONTROL_PREFIX = "::buildsys::"
PARENT_ENV = "BUILDSYS_PARENT_PID"  # set by the process pool: stop the run if that process dies
STANDBY_FLAG = "--standby"  # start now, take the run's env, directory and context from stdin later
PRELOAD_PREFECT_FLAG = "--preload-prefect"  # with --standby: import Prefect's engine while waiting

EXIT_OK = 0
EXIT_FLOW_FAILED = 1
EXIT_BAD_CONTEXT = 2
EXIT_PULL_FAILED = 3
EXIT_ENTRYPOINT = 4
EXIT_PREFECT = 5

EXIT_MEANINGS = {
    EXIT_FLOW_FAILED: "the flow raised an exception",
    EXIT_BAD_CONTEXT: "the run context given to the runtime is invalid",
    EXIT_PULL_FAILED: "a pull step failed before the flow started",
    EXIT_ENTRYPOINT: "the flow's entrypoint could not be loaded",
    EXIT_PREFECT: "the run's Python has no Prefect that can run this Prefect flow",
}


class RuntimeFailure(Exception):
    """A failure before the flow ran; carries the exit code to use."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class RunContext:
    """What the worker hands the runtime."""

    entrypoint: str
    run_id: str = ""
    run_name: str = ""
    deployment: str = ""
    flow_name: str = ""
    attempt: int = 1
    parameters: Mapping[str, Any] = field(default_factory=dict)
    pull_steps: Sequence[Mapping[str, Any]] = ()
    variables: Mapping[str, Any] = field(default_factory=dict)
    root: str | None = None
    # step name → "module:attr" for registered steps, resolved by the worker so that the run does
    # not have to scan every installed distribution's entry points again
    step_targets: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": {
                "id": self.run_id,
                "name": self.run_name,
                "deployment": self.deployment,
                "flow_name": self.flow_name,
                "attempt": self.attempt,
            },
            "entrypoint": self.entrypoint,
            "parameters": dict(self.parameters),
            "pull_steps": [dict(s) for s in self.pull_steps],
            "variables": dict(self.variables),
            "root": self.root,
            "step_targets": dict(self.step_targets),
        }

    @classmethod
    def from_dict(cls, data: Any) -> RunContext:
        if not isinstance(data, Mapping):
            raise RuntimeFailure("the run context must be a JSON object", EXIT_BAD_CONTEXT)
        entrypoint = data.get("entrypoint")
        if not isinstance(entrypoint, str) or not _split_entrypoint(entrypoint)[0]:
            raise RuntimeFailure(
                f"the run context has no valid entrypoint (got {entrypoint!r}; expected "
                "'path/to/file.py:function', 'package.module:function' or 'package.module.function')",
                EXIT_BAD_CONTEXT,
            )
        run = data.get("run") or {}
        params, steps, variables = data.get("parameters") or {}, data.get("pull_steps") or [], data.get("variables") or {}
        if not isinstance(params, Mapping) or not isinstance(steps, list) or not isinstance(variables, Mapping):
            raise RuntimeFailure(
                "the run context's parameters/variables must be objects and pull_steps a list", EXIT_BAD_CONTEXT
            )
        return cls(
            entrypoint=entrypoint,
            run_id=str(run.get("id", "")),
            run_name=str(run.get("name", "")),
            deployment=str(run.get("deployment", "")),
            flow_name=str(run.get("flow_name", "")),
            attempt=int(run.get("attempt", 1)),
            parameters=dict(params),
            pull_steps=list(steps),
            variables=dict(variables),
            root=data.get("root"),
            step_targets={str(k): str(v) for k, v in (data.get("step_targets") or {}).items()},
        )


def control(event: str, **payload: Any) -> None:
    """Tell the supervising worker about progress (one stdout line, stripped from the logs)."""
    line = json.dumps({"event": event, **payload}, default=str)
    sys.stdout.write(f"{CONTROL_PREFIX}{line}\n")
    sys.stdout.flush()


def control_event(payload: str) -> str | None:
    """The event of a control line (what follows CONTROL_PREFIX), as `control` wrote it; None for a
    line that is not one (a flow may print anything, the prefix included)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    event = data.get("event") if isinstance(data, dict) else None
    return event if isinstance(event, str) else None


def log(message: str) -> None:
    sys.stdout.write(message.rstrip("\n") + "\n")
    sys.stdout.flush()


# --- pull steps ------------------------------------------------------------------------------------


def run_pull_steps(
    steps: Sequence[Mapping[str, Any]],
    *,
    root: Path,
    env: Mapping[str, str],
    variables: Mapping[str, Any],
    emit: Callable[[str], None] = log,
    step_targets: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the pull steps in order (Prefect §2.3): outputs are kept under each step's id and are
    also visible flat (``{{ directory }}``); returns the outputs by step label.

    A step that sets the working directory moves later steps there; the final ``directory`` is
    left for the caller to change into.
    """
    from buildsys.sensitive import mask_url_text, mask_values, secret_values
    from buildsys.templating import Scope, env_blocks, render_inputs

    outputs: dict[str, dict[str, Any]] = {}
    ids: set[str] = set()
    cwd = root
    for index, raw in enumerate(steps):
        if not raw:
            continue
        name, inputs, step_id = _split_step(raw, index)
        label = step_id or f"{name.rsplit('.', 1)[-1]}#{index}"
        where = f"pull[{index}: {step_id or name}]"
        emit(f"Running pull step {where}")
        scope = Scope(outputs=outputs, ids=frozenset(ids), env=env, variables=variables, blocks=env_blocks(env))
        try:
            definition = _step_definition(name, root, (step_targets or {}).get(name), _requires(raw))
            rendered = render_inputs(inputs, scope, held=definition.held, path=where)
            # the build's secret rule: templated secrets, and what the inputs hold under secret names
            secrets = set(scope.secrets) | secret_values(rendered)
            result, sets_cwd = _call_step(
                definition, rendered, root=root, cwd=cwd, env=env, step_id=step_id, emit=emit, secrets=secrets
            )
        except Exception as exc:
            said = mask_url_text(mask_values(_describe(exc), scope.secrets | secret_values(inputs)))
            raise RuntimeFailure(f"pull step {where} failed: {said}", EXIT_PULL_FAILED) from exc
        if step_id:
            ids.add(step_id)
        outputs[label] = result
        directory = result.get("directory")
        if directory and sets_cwd:
            cwd = (cwd / str(directory)).resolve()
    return outputs


def _split_step(raw: Mapping[str, Any], index: int) -> tuple[str, dict[str, Any], str | None]:
    if len(raw) != 1:
        raise RuntimeFailure(
            f"pull step #{index} must have exactly one key (the step name), got: {', '.join(map(str, raw))}",
            EXIT_PULL_FAILED,
        )
    name, value = next(iter(raw.items()))
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise RuntimeFailure(f"pull step {name!r}: its inputs must be a mapping", EXIT_PULL_FAILED)
    from buildsys.model import RESERVED_STEP_KEYS

    inputs = {k: v for k, v in value.items() if k not in RESERVED_STEP_KEYS}
    step_id = value.get("id")
    return str(name), inputs, str(step_id) if step_id else None


def _requires(raw: Mapping[str, Any]) -> tuple[str, ...]:
    value = next(iter(raw.values()), None)
    found = value.get("requires") if isinstance(value, Mapping) else None
    if isinstance(found, str):
        return (found,)
    return tuple(str(r) for r in found) if isinstance(found, list) else ()


def _step_definition(name: str, root: Path, target: str | None, requires: tuple[str, ...] = ()) -> StepDef:
    """The step: straight from the worker's resolved "module:attr" when given, else the registry."""
    from buildsys.step import StepDef

    if target and ":" in target:
        module, _, attr = target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, StepDef) else StepDef.from_callable(obj, name)
    from buildsys.registry import resolve

    return resolve(name, root, requires=requires)  # never installs: `requires` only shapes the hint


def _call_step(
    definition: StepDef,
    inputs: Mapping[str, Any],
    *,
    root: Path,
    cwd: Path,
    env: Mapping[str, str],
    step_id: str | None,
    emit: Callable[[str], None],
    secrets: set[str],
) -> tuple[dict[str, Any], bool]:
    from buildsys.step import Context

    ctx = Context(
        root=root, cwd=cwd, env=dict(env), step_id=step_id, step_name=definition.name, emit=emit, phase="pull",
        secrets=secrets,
    )
    result = definition(ctx, **inputs)
    return (dict(result) if isinstance(result, Mapping) else {}), bool(definition.sets_cwd)


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    hint = getattr(exc, "hint", None)
    return f"{message} (hint: {hint})" if hint else str(message)


# --- the flow --------------------------------------------------------------------------------------


def _split_entrypoint(entrypoint: str) -> tuple[str, str]:
    """(module or file, attribute path): ``file.py:f``, ``pkg.mod:f`` or Prefect's ``pkg.mod.f``."""
    text = entrypoint.strip()
    if ":" in text:
        target, _, attr_path = text.rpartition(":")
    else:
        target, _, attr_path = text.rpartition(".")
    if not target or not attr_path:
        return "", ""
    return target, attr_path


def load_flow_object(entrypoint: str, directory: Path) -> Any:
    """Import ``path/file.py:func``, ``pkg.mod:func`` or ``pkg.mod.func`` from ``directory`` and
    return the object it names, as defined (a Prefect flow stays a flow)."""
    target, attr_path = _split_entrypoint(entrypoint)
    if not target:
        raise RuntimeFailure(f"invalid entrypoint {entrypoint!r}", EXIT_ENTRYPOINT)
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    try:
        module = _load_file(target, directory) if target.endswith(".py") else importlib.import_module(target)
    except RuntimeFailure:
        raise
    except ModuleNotFoundError as exc:
        if exc.name == "prefect" or (exc.name or "").startswith("prefect."):
            raise RuntimeFailure(_no_prefect(entrypoint), EXIT_PREFECT) from exc
        raise RuntimeFailure(
            f"could not import {target!r} for entrypoint {entrypoint!r}:\n{_format(exc)}", EXIT_ENTRYPOINT
        ) from exc
    except BaseException as exc:
        raise RuntimeFailure(
            f"could not import {target!r} for entrypoint {entrypoint!r}:\n{_format(exc)}", EXIT_ENTRYPOINT
        ) from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise RuntimeFailure(f"entrypoint {entrypoint!r}: {target!r} has no attribute {part!r}", EXIT_ENTRYPOINT)
        obj = getattr(obj, part)
    if not callable(obj):
        raise RuntimeFailure(f"entrypoint {entrypoint!r} is not callable", EXIT_ENTRYPOINT)
    return obj


def _no_prefect(entrypoint: str) -> str:
    return (
        f"the flow {entrypoint!r} imports prefect, but prefect is not installed for the run's Python "
        f"{sys.executable} (Python {sys.version.split()[0]}); install it there (`{sys.executable} -m pip "
        "install 'prefect>=3,<4'`), add it to the image, or set the job variable `command` to an "
        "interpreter that has it"
    )


def _load_file(target: str, directory: Path) -> ModuleType:
    path = (directory / target).resolve()
    if not path.is_file():
        raise RuntimeFailure(f"entrypoint file {target} does not exist in {directory}", EXIT_ENTRYPOINT)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    module_name = "__buildsys_flow__" + path.stem.replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RuntimeFailure(f"cannot load {path} as a module", EXIT_ENTRYPOINT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def call_flow(func: Callable[..., Any], parameters: Mapping[str, Any]) -> Any:
    result = func(**parameters)
    if hasattr(result, "__await__"):
        import asyncio

        async def _await() -> Any:
            return await result

        result = asyncio.run(_await())
    return result


def _format(exc: BaseException) -> str:
    """The traceback without the runtime's own frames (the user's code starts the story)."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


# --- main ------------------------------------------------------------------------------------------


def read_context(path: str | None, env: Mapping[str, str]) -> RunContext:
    raw = path if path is not None else env.get(CONTEXT_ENV)
    if not raw:
        raise RuntimeFailure(f"no run context: pass --context FILE or set {CONTEXT_ENV}", EXIT_BAD_CONTEXT)
    try:
        text = raw if raw.lstrip().startswith("{") else Path(raw).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"cannot read the run context: {exc}", EXIT_BAD_CONTEXT) from exc
    return RunContext.from_dict(data)


def watch_parent(expected: int, interval: float = 0.5) -> None:
    """End the run (its whole process group) when the supervising worker dies, so that a run the
    store hands to another worker after the lease expires never executes twice at once."""
    import signal
    import threading
    import time

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(interval)
        with contextlib.suppress(OSError, ValueError):  # the worker's end of the pipe is gone
            sys.stderr.write("buildsys runtime: the worker supervising this run died; stopping the run\n")
            sys.stderr.flush()
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def execute(context: RunContext, env: Mapping[str, str]) -> int:
    """Pull steps, chdir, import, then Prefect's engine (a Prefect flow) or a plain call. Returns the
    process exit code."""
    parent = env.get(PARENT_ENV)
    if parent and parent.isdigit() and os.getpgrp() == os.getpid():
        watch_parent(int(parent))
    root = Path(context.root).resolve() if context.root else Path.cwd()
    try:
        if context.root:
            os.chdir(root)
        outputs = run_pull_steps(
            context.pull_steps, root=root, env=env, variables=context.variables, step_targets=context.step_targets
        )
        directory = _final_directory(outputs)
        if directory:
            os.chdir(root / directory)
        target = load_flow_object(context.entrypoint, Path.cwd())
        if _is_prefect_flow(target):
            return _run_with_engine(target, context, env)
    except RuntimeFailure as exc:
        sys.stderr.write(f"buildsys runtime: {exc}\n")
        sys.stderr.flush()
        return exc.code
    return _call_plain(target, context)


def _is_prefect_flow(target: Any) -> bool:
    from buildsys.prefectengine import is_prefect_flow

    return is_prefect_flow(target)


def _run_with_engine(flow: Any, context: RunContext, env: Mapping[str, str]) -> int:
    """Hand the flow to Prefect's engine; the engine's own exit (SystemExit) ends the process."""
    from buildsys.prefectengine import API_URL_ENV, RUN_ID_ENV, EngineUnavailable, engine_calls, run_flow_run

    run_id = env.get(RUN_ID_ENV) or context.run_id
    if not env.get(API_URL_ENV) or not run_id:
        raise RuntimeFailure(
            f"{context.entrypoint!r} is a Prefect flow, but no Prefect API was given to the run "
            f"({API_URL_ENV} and {RUN_ID_ENV} are set by `buildsys worker`)",
            EXIT_BAD_CONTEXT,
        )
    try:
        engine_calls()
    except EngineUnavailable as exc:
        raise RuntimeFailure(str(exc), EXIT_PREFECT) from None
    control("engine", pid=os.getpid(), cwd=os.getcwd())
    run_flow_run(flow, run_id)
    sys.stdout.flush()
    return EXIT_OK


def _call_plain(func: Any, context: RunContext) -> int:
    control("running", pid=os.getpid(), cwd=os.getcwd())
    try:
        result = call_flow(getattr(func, "fn", func), context.parameters)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit) and not _is_failure(exc):
            raise
        sys.stdout.flush()
        sys.stderr.write(f"Flow run {context.run_name or context.run_id} failed:\n{_format(exc)}\n")
        sys.stderr.flush()
        return EXIT_FLOW_FAILED
    sys.stdout.flush()
    control("completed", result=_short_repr(result))
    return EXIT_OK


def _is_failure(exc: BaseException) -> bool:
    return isinstance(exc, SystemExit) and exc.code not in (0, None)


def _final_directory(outputs: Mapping[str, Mapping[str, Any]]) -> str | None:
    directory = None
    for result in outputs.values():  # insertion order: the last step that returned a directory wins
        if result.get("directory"):
            directory = str(result["directory"])
    return directory


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 2000 else text[:1997] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m buildsys.runtime",
        description="Run one flow run: pull steps, then the flow (used by buildsys workers).",
    )
    parser.add_argument("--context", metavar="FILE", help=f"run context JSON (default: ${CONTEXT_ENV})")
    parser.add_argument(
        STANDBY_FLAG, action="store_true", help="import what runs take, then read the run from stdin (process pool)"
    )
    parser.add_argument(PRELOAD_PREFECT_FLAG, action="store_true", help="with --standby: import Prefect's engine too")
    args = parser.parse_args(argv)
    if args.standby:
        return standby(args.preload_prefect)
    try:
        context = read_context(args.context, os.environ)
    except RuntimeFailure as exc:
        sys.stderr.write(f"buildsys runtime: {exc}\n")
        return exc.code
    return execute(context, os.environ)


def standby(preload_prefect: bool) -> int:
    """Import what runs need, then wait for one: a JSON line on stdin, {"env", "cwd"}, then the run
    exactly as a freshly started runtime with that environment in that directory would run it."""
    started_in = os.getcwd()
    _preload(preload_prefect)
    line = sys.stdin.readline()
    if not line.strip():  # the worker let it go unused
        return EXIT_OK
    try:
        order = json.loads(line)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in order["env"].items()})
        os.chdir(order["cwd"])
    except (ValueError, KeyError, TypeError, OSError) as exc:
        sys.stderr.write(f"buildsys runtime: the worker's hand-over could not be used: {exc}\n")
        return EXIT_BAD_CONTEXT
    if sys.path and sys.path[0] == started_in:  # `python -m` put the start directory first
        sys.path[0] = os.getcwd()
    if "prefect" in sys.modules:
        # Prefect read its settings from the environment at import: make it read the run's
        refresh = getattr(importlib.import_module("prefect.context"), "refresh_global_settings_context", None)
        if refresh is None:  # a Prefect that cannot: start afresh, same process, this environment
            sys.stdout.flush()
            os.execv(sys.executable, [sys.executable, "-m", "buildsys.runtime"])
        refresh()
    try:
        context = read_context(None, os.environ)
    except RuntimeFailure as exc:
        sys.stderr.write(f"buildsys runtime: {exc}\n")
        return exc.code
    return execute(context, os.environ)


def _preload(prefect: bool) -> None:
    """What every run imports anyway; with ``prefect``, Prefect's engine (when a Prefect that
    buildsys supports is installed)."""
    importlib.import_module("buildsys.templating")
    importlib.import_module("buildsys.step")
    if not prefect:
        return
    from buildsys.prefectengine import ENGINE_CALLS, installed_version, version_problem

    version = installed_version()
    if version is None or version_problem(version):
        return
    with contextlib.suppress(ImportError):
        for module, _attr in ENGINE_CALLS:
            importlib.import_module(module)


if __name__ == "__main__":
    sys.exit(main())
