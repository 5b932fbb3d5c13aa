"""The public step API: what a plugin author writes against.

A step is a function decorated with :func:`step`. It receives a :class:`Context` first and its
inputs as keyword arguments, and returns a mapping of outputs. It never prints, never changes the
process's working directory and never installs packages: it logs through the context, works in
``ctx.cwd`` and runs commands with :meth:`Context.run`.

This module uses only the standard library, so it (and the steps built on it) can run inside any
image that has a Python, as the worker's in-run runtime needs.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

from buildsys.errors import StepError
from buildsys.records import Record
from buildsys.sensitive import MASK

if TYPE_CHECKING:
    import logging

    class _EmitHandler(logging.Handler):  # what `_emit_handler` makes
        ctx: Context

        def __init__(self, ctx: Context) -> None: ...

__all__ = ["MASK", "BuildScope", "Completed", "Context", "StepDef", "StepError", "step"]

Outputs = Mapping[str, Any]
Inputs = Mapping[str, Any]
FilesHook = Callable[[Inputs, "Context"], Sequence[str]]
CheckHook = Callable[[Outputs, Inputs, "Context"], bool]
FingerprintHook = Callable[[Inputs, "Context"], str]
T = TypeVar("T")

_set = object.__setattr__


class Completed(Record):
    """The result of :meth:`Context.run`."""

    __slots__ = __match_args__ = ("args", "returncode", "stdout", "stderr")
    args: Sequence[str] | str
    returncode: int
    stdout: str
    stderr: str

    def __init__(
        self,
        args: Sequence[str] | str,
        returncode: int,
        stdout: str,
        stderr: str,
    ) -> None:
        _set(self, "args", args)
        _set(self, "returncode", returncode)
        _set(self, "stdout", stdout)
        _set(self, "stderr", stderr)


class BuildScope:
    """What the steps and hooks of one build share, for that build only: the engine makes one per
    build and hands it to every step's context (``ctx.build``). A step keeps here an answer that
    holds for the rest of the build (a registry's manifest, asked by an image build's check and
    again by its push's check) and nowhere longer-lived: a process may run many builds (``watch``,
    the server), and what an answer describes can change between them. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Hashable, Any] = {}
        self._pending: dict[Hashable, threading.Event] = {}
        self._forgotten: set[Hashable] = set()  # forgotten while being computed: that answer is not kept

    def once(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()`` for `key`, computed once in this build: a caller that comes while it is
        being computed waits for that answer; an error is not kept (the next caller tries again)."""
        while True:
            with self._lock:
                if key in self._values:
                    return self._values[key]  # type: ignore[no-any-return]
                pending = self._pending.get(key)
                if pending is None:
                    self._pending[key] = threading.Event()
                    break
            pending.wait()
        try:
            value = compute()
            with self._lock:
                if key not in self._forgotten:
                    self._values[key] = value
        finally:
            with self._lock:
                self._forgotten.discard(key)
                self._pending.pop(key).set()
        return value

    def forget(self, key: Hashable) -> None:
        """Drop the answer for `key` (one being computed is not kept either): the step changed
        what it described (pushed that tag)."""
        with self._lock:
            self._values.pop(key, None)
            if key in self._pending:
                self._forgotten.add(key)


@dataclass
class Context:
    """What a step gets besides its inputs: where it runs, how to log, how to run commands, and
    what the steps of its build share (`build`; a context made outside a build has its own)."""

    root: Path
    cwd: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    step_id: str | None = None
    step_name: str = ""
    secrets: set[str] = field(default_factory=set)
    emit: Callable[[str], None] | None = None  # receives each (masked) log line
    phase: str = "build"  # "build" | "push" | "pull"
    build: BuildScope = field(default_factory=BuildScope)

    @property
    def logger(self) -> logging.Logger:
        import logging  # here: a build whose steps never ask for a logger does not import logging

        name = f"buildsys.step.{self.step_id or self.step_name or 'anonymous'}"
        logger = logging.getLogger(name)
        handler = _emit_handler()
        if not any(isinstance(h, handler) and h.ctx is self for h in logger.handlers):
            for h in [h for h in logger.handlers if isinstance(h, handler)]:
                logger.removeHandler(h)
            logger.addHandler(handler(self))
            logger.setLevel(logging.DEBUG)
            logger.propagate = False
        return logger

    def mask(self, text: str) -> str:
        """Replace every known secret value in ``text`` by ``****``."""
        from buildsys.sensitive import mask_url_text, mask_values

        return mask_url_text(mask_values(text, self.secrets))

    def log(self, line: str) -> None:
        if self.emit is not None:
            self.emit(self.mask(line.rstrip("\n")))

    def path(self, relative: str | os.PathLike[str]) -> Path:
        """Resolve a path the way a step should: relative to the step's working directory."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.cwd / p

    def run(
        self,
        args: Sequence[str] | str,
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        shell: bool = False,
        stream: bool = True,
        check: bool = True,
        stdin: str | None = None,
    ) -> Completed:
        """Run a command, streaming its output lines to the step log while capturing them.

        ``check`` raises :class:`StepError` with the exit code and the captured stderr.
        """
        import subprocess  # only for a step that runs a command: a build of plain functions never does

        run_env = dict(self.env if env is None else env)
        workdir = self.path(cwd) if cwd is not None else self.cwd
        try:
            proc = subprocess.Popen(
                args,
                cwd=workdir,
                env=run_env,
                shell=shell,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
        except FileNotFoundError as exc:
            shown = args if isinstance(args, str) else " ".join(args)
            raise StepError(f"command not found: {self.mask(shown)}", hint=str(exc)) from None
        out: list[str] = []
        err: list[str] = []
        readers = [
            threading.Thread(target=self._pump, args=(proc.stdout, out, stream), daemon=True),
            threading.Thread(target=self._pump, args=(proc.stderr, err, stream), daemon=True),
        ]
        for t in readers:
            t.start()
        if stdin is not None and proc.stdin is not None:
            proc.stdin.write(stdin)
            proc.stdin.close()
        code = proc.wait()
        for t in readers:
            t.join()
        result = Completed(args, code, "".join(out), "".join(err))
        if check and code != 0:
            shown = args if isinstance(args, str) else " ".join(str(a) for a in args)
            detail = self.mask(result.stderr.strip() or result.stdout.strip())
            raise StepError(
                f"command exited with status {code}: {self.mask(shown)}"
                + (f"\n{detail}" if detail else "")
            )
        return result

    def _pump(self, pipe: IO[str] | None, sink: list[str], stream: bool) -> None:
        if pipe is None:
            return
        for line in pipe:
            sink.append(line)
            if stream:
                self.log(line)
        pipe.close()


@cache
def _emit_handler() -> type[_EmitHandler]:
    """The logging handler that sends a step's records to its context's log, made once, when a
    step first asks for its logger."""
    import logging

    class EmitHandler(logging.Handler):
        def __init__(self, ctx: Context) -> None:
            super().__init__()
            self.ctx = ctx

        def emit(self, record: logging.LogRecord) -> None:
            self.ctx.log(self.format(record))

    return cast("type[_EmitHandler]", EmitHandler)


class StepDef:
    """A registered step: the function plus what the engine needs to cache and check it."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str,
        aliases: Sequence[str] = (),
        version: str = "1",
        schema: Mapping[str, Any] | None = None,
        outputs: Sequence[str] = (),
        description: str = "",
        example: str = "",
        cacheable: bool = True,
        sets_cwd: bool = False,
        takes_context: bool = True,
        source: str = "",
        held: Sequence[str] = (),
    ) -> None:
        self.func = func
        self.name = name
        self.aliases = tuple(aliases)
        self.version = version
        self._schema = dict(schema) if schema is not None else None
        self.outputs = tuple(outputs)
        self.description = description or inspect.cleandoc(func.__doc__ or "").split("\n\n")[0]
        self.example = example
        self.cacheable = cacheable
        self.sets_cwd = sets_cwd
        self.takes_context = takes_context
        self.source = source or (func.__module__ or "")
        # Text inputs the step structures itself (a script's lines and words): it gets them as
        # HeldText, each placeholder held out, so that no rendered value changes the structure.
        self.held = tuple(held)
        self.files_hook: FilesHook | None = None
        self.check_hook: CheckHook | None = None
        self.fingerprint_hook: FingerprintHook | None = None
        self.shared_hook: CheckHook | None = None

    def __repr__(self) -> str:
        return f"<step {self.name} v{self.version} from {self.source}>"

    # Hooks, used as decorators: @my_step.files / .check / .shared / .fingerprint
    def files(self, fn: FilesHook) -> FilesHook:
        """Declare the files (globs relative to the step's cwd) the step reads."""
        self.files_hook = fn
        return fn

    def check(self, fn: CheckHook) -> CheckHook:
        """Confirm that a cached result still exists (e.g. the image is still in the engine)."""
        self.check_hook = fn
        return fn

    def shared(self, fn: CheckHook) -> CheckHook:
        """Confirm that a result another runner wrote to a shared cache can be used on this machine
        (e.g. the image is in the registry). Only steps with this hook are shared: without it a
        result may live only where it was made (a file written, a package installed)."""
        self.shared_hook = fn
        return fn

    def fingerprint(self, fn: FingerprintHook) -> FingerprintHook:
        """Extra cache-key material computed before running (e.g. a remote branch's commit)."""
        self.fingerprint_hook = fn
        return fn

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON Schema of the step's inputs (built-ins ship one in schemas/steps/)."""
        if self._schema is None:
            self._schema = _builtin_schema(self.name, self.source) or _schema_from_signature(
                self.func, self.takes_context
            )
        return self._schema

    def __call__(self, ctx: Context, **inputs: Any) -> dict[str, Any]:
        result = self.func(ctx, **inputs) if self.takes_context else self.func(**inputs)
        if inspect.isawaitable(result):
            import asyncio

            async def _await() -> Any:
                return await result

            result = asyncio.run(_await())
        return dict(result) if isinstance(result, Mapping) else {}

    @classmethod
    def from_callable(cls, func: Callable[..., Any], name: str) -> StepDef:
        """Wrap a plain Prefect-style step function (kwargs only, no context)."""
        if isinstance(func, StepDef):
            return func
        return cls(func, name=name, version=_source_version(func), takes_context=False, source=name)


def step(
    name: str,
    *,
    aliases: Sequence[str] = (),
    version: str = "1",
    schema: Mapping[str, Any] | None = None,
    outputs: Sequence[str] = (),
    description: str = "",
    example: str = "",
    cacheable: bool = True,
    sets_cwd: bool = False,
    held: Sequence[str] = (),
) -> Callable[[Callable[..., Any]], StepDef]:
    """Declare a step. The decorated function is called as ``func(ctx, **inputs)``; the inputs named
    in ``held`` arrive as :class:`buildsys.templating.HeldText` (see there)."""

    def wrap(func: Callable[..., Any]) -> StepDef:
        return StepDef(
            func,
            name=name,
            aliases=aliases,
            version=version,
            schema=schema,
            outputs=outputs,
            description=description,
            example=example,
            cacheable=cacheable,
            sets_cwd=sets_cwd,
            held=held,
        )

    return wrap


def _schema_from_signature(func: Callable[..., Any], takes_context: bool) -> dict[str, Any]:
    try:
        sig = inspect.signature(func, eval_str=True)
    except (TypeError, ValueError, NameError):
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            return {"type": "object"}
    params = list(sig.parameters.values())
    if takes_context and params:
        params = params[1:]
    props: dict[str, Any] = {}
    required: list[str] = []
    open_ended = False
    for p in params:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        prop = _json_type(p.annotation)
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        elif _jsonable(p.default):
            prop["default"] = p.default
        props[p.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    if not open_ended:
        schema["additionalProperties"] = False
    return schema


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def _json_type(annotation: Any) -> dict[str, Any]:
    """A JSON type from a simple annotation (str, int, list[str], X | None…); templates
    ("{{ step.key }}") stay allowed for non-string types, as they are rendered before the call."""
    import types
    import typing

    if annotation is inspect.Parameter.empty:
        return {}
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    names: list[str] = []
    for candidate in args if origin in (typing.Union, types.UnionType) else (annotation,):
        if candidate is type(None):
            names.append("null")
            continue
        base = typing.get_origin(candidate) or candidate
        if base in _JSON_TYPES:
            names.append(_JSON_TYPES[base])
        elif isinstance(base, type) and issubclass(base, Mapping):
            names.append("object")
        else:
            return {}
    if names and "string" not in names:
        names.append("string")  # a template
    return {"type": names[0] if len(names) == 1 else names} if names else {}


def _builtin_schema(name: str, source: str) -> dict[str, Any] | None:
    """Built-in steps ship their input schema as schemas/steps/<name>.json."""
    if not source.startswith("buildsys.steps"):
        return None
    import json

    from buildsys.shipped import schema_text

    try:
        text = schema_text("steps", f"{name}.json")
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        return None
    data: dict[str, Any] = json.loads(text)
    return data


def _jsonable(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _source_version(func: Callable[..., Any]) -> str:
    """A plain function's version is a digest of its source, so editing it reruns it."""
    key = version_key(func)
    if key is not None and key in proven_versions:
        return proven_versions[key]
    try:
        src = inspect.getsource(func)
    except (OSError, TypeError):
        return "0"
    version = hashlib.sha256(src.encode()).hexdigest()[:16]
    if key is not None:
        computed_versions[key] = version
    return version


VersionKey = tuple[str, int, str]  # a plain function's source file, first line and qualified name
# Versions this process computed from source (`inspect.getsource` tokenizes the module: ~5 ms),
# and versions a reused compiled build vouches for while it loads its steps: it recorded them
# with the digest of their source file and has just found that file unchanged
# (`buildsys.caches.compiled_build`); empty otherwise.
computed_versions: dict[VersionKey, str] = {}
proven_versions: dict[VersionKey, str] = {}


def version_key(func: Callable[..., Any]) -> VersionKey | None:
    """Where a plain function's source is (None for anything getsource would look further into)."""
    code = getattr(func, "__code__", None)
    if code is None or hasattr(func, "__wrapped__") or not isinstance(code.co_filename, str):
        return None
    return (os.path.abspath(code.co_filename), code.co_firstlineno, str(getattr(func, "__qualname__", "")))
