"""The cache layer: what buildsys keeps under a project's `.buildsys/` only to go faster — where each
cache lives, the key they all share, and the one way a cached object is read back from a folder a
project (a recipe, a repository) can write into. `buildsys help caches` describes it for users.

    .buildsys/cache.db    step results (JSON) by content key, file digests by stat data  buildsys.cache
    .buildsys/projects/   loaded projects, for commands that need no graph               here
    .buildsys/compiled/   compiled builds: project, graph, where each step comes from    here
    .buildsys/noop/       no-op manifests, read before the engine is imported           buildsys.noop
    .buildsys/affected/   a base revision's step keys and specs, for `affected`          buildsys.affected
    a shared cache        step results other runners wrote (JSON, signed: `seal`)       buildsys.sharedcache

Every cache depends on `code_key()` (Python, buildsys's own code, the installed packages). Objects
are pickled (a 1,000-deployment model unpickles in ~0.05 s, against ~0.6 s to parse and validate)
and every pickle is authenticated with HMAC-SHA256 under a key kept outside the project, in the
user's cache directory: a file nobody with the key wrote is never unpickled, only ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import io
import operator
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys import __version__, noop
from buildsys.collector import gc_paused
from buildsys.model import Project, StepSpec
from buildsys.records import Record

if TYPE_CHECKING:  # a plan loads projects only: the compiled build's modules cost it ~30 ms to import
    from buildsys.compiled import Compiled
    from buildsys.graph import StepGraph
    from buildsys.step import StepDef

FORMAT = 4
DIRECTORY = noop.DIRECTORY  # ".buildsys", beside the project file
STEP_RESULTS = noop.STEP_RESULTS  # "cache.db": buildsys.cache
PROJECTS = "projects"
COMPILED = "compiled"
MAGIC = b"buildsys-cache 1\n"
KEY_BYTES = 32


def directory(root: Path) -> Path:
    return root / DIRECTORY


def code_key() -> str:
    """What every cache depends on besides its own inputs: the record format, Python, buildsys's
    own files (any edit, noop.code_stamp) and the installed packages, step plugins among them (an
    install or uninstall moves their directory's mtime, noop.environment_fingerprint)."""
    parts = [str(FORMAT), __version__, sys.version, noop.code_stamp()]
    parts += [f"{entry}:{mtime}" for entry, mtime in noop.environment_fingerprint()]
    return "\0".join(parts)


def clear(root: Path) -> None:
    """Delete the model caches and the no-op manifests (the step results are `Cache.clear`'s)."""
    import shutil

    for name in (PROJECTS, COMPILED, noop.SUBDIRECTORY, "affected"):
        shutil.rmtree(directory(root) / name, ignore_errors=True)


# --- authenticated records ------------------------------------------------------------------------


def read_record(path: Path) -> object | None:
    """The object stored at `path` when this user's key authenticates it (as stored under this very
    name); None for anything else: missing, foreign, tampered, moved, or from an older layout."""
    key = _secret()
    if key is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head = len(MAGIC) + hashlib.sha256().digest_size
    if not data.startswith(MAGIC) or len(data) < head:
        return None
    if not hmac.compare_digest(data[len(MAGIC) : head], _mac(key, path.name, data[head:])):
        return None
    try:
        with gc_paused():  # ~10,000 new objects, no cycle among them: no collection pass while they arrive
            obj: object = pickle.loads(data[head:])
    except Exception:  # ours, but no longer loadable (a renamed class): simply not cached
        return None
    return obj


def write_record(path: Path, obj: object, *, max_age: float, defer_specs: bool = False) -> None:
    """Store `obj` at `path` atomically (best effort: no key or a read-only folder caches nothing),
    sweeping the records beside it older than `max_age` seconds. `defer_specs`: its step specs are
    read back as `_DeferredSpec`s."""
    key = _secret()
    if key is None:
        return
    buffer = io.BytesIO()
    (_DeferringPickler if defer_specs else _Pickler)(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    payload = buffer.getvalue()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.iterdir():
            if old != path and old.stat().st_mtime < time.time() - max_age:
                old.unlink(missing_ok=True)
        tmp.write_bytes(MAGIC + _mac(key, path.name, payload) + payload)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


class _Pickler(pickle.Pickler):
    """Frozen slotted dataclasses (the model's: ~9,000 objects in a 1,000-step build) stored as a
    call of the class with their field values: loading one then costs its `__init__`, not
    dataclasses' generic `__setstate__` (which looks the fields up again for every object)."""

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls is _DeferredSpec:  # a spec read back from a compiled build: stored as the StepSpec it is
            obj, cls = _read_spec(obj), StepSpec
        try:
            values = _positional[cls]
        except KeyError:  # a class met for the first time (the answer None is remembered too)
            values = _positional[cls] = _values_of(_init_fields(cls))
        if values is None:
            return NotImplemented
        return (cls, values(obj))


# class -> its objects' field values read as a tuple, or None: pickled the usual way
_positional: dict[type, Callable[[Any], tuple[Any, ...]] | None] = {}


class _DeferringPickler(_Pickler):
    """`_Pickler` storing each step spec as a `_DeferredSpec`: its name and id, and the spec
    pickled apart (once however many nodes and deployments share it: the memo holds it)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is StepSpec:
            buffer = io.BytesIO()
            _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
            return (_DeferredSpec, (obj.name, obj.id, buffer.getvalue()))
        return super().reducer_override(obj)


_set = object.__setattr__
_get = object.__getattribute__
_reading = threading.Lock()  # one thread reads a deferred spec; another asking meanwhile waits for it


class _DeferredSpec(Record):
    """A step spec of a compiled build read back: its name and id at once (all a step the last
    build's manifest settles needs: `noop.previous_build`), the rest unpickled when anything else
    is first asked of it, which makes it the StepSpec it was (the same slots: its class is then
    StepSpec's, whose reads are plain slot reads). A build after a change to a few steps' inputs
    unpickles the specs of those, not of all 1,000. Until read, `raw` holds the pickled spec."""

    __slots__ = __match_args__ = StepSpec.__match_args__  # StepSpec's layout: it can become one

    def __init__(self, name: str, id: str | None, pickled: bytes) -> None:
        _set(self, "name", name)
        _set(self, "id", id)
        _set(self, "raw", pickled)

    def __getattribute__(self, name: str) -> Any:
        if name == "name" or name == "id":
            return _get(self, name)
        return getattr(_read_spec(self), name)

    def __eq__(self, other: object) -> bool:
        return bool(_read_spec(self) == other)

    def __hash__(self) -> int:
        return hash(_read_spec(self))

    def __repr__(self) -> str:
        return repr(_read_spec(self))

    def __reduce__(self) -> Any:
        return _read_spec(self).__reduce__()


def _read_spec(spec: StepSpec | _DeferredSpec) -> StepSpec:
    """The StepSpec a deferred spec was (`spec` itself, read now if it was not yet)."""
    with _reading:
        if type(spec) is _DeferredSpec:  # (else it was read meanwhile)
            read = pickle.loads(_get(spec, "raw"))
            for field in StepSpec.__match_args__:
                _set(spec, field, getattr(read, field))
            _set(spec, "__class__", StepSpec)
    return spec  # type: ignore[return-value]  # (a StepSpec by now)


def _values_of(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]] | None:
    """The field values of an object as a tuple, read in C (`operator.attrgetter`); None for ()."""
    if not names:
        return None
    get = operator.attrgetter(*names)
    if len(names) == 1:
        return lambda obj: (get(obj),)
    return get


def _init_fields(cls: type) -> tuple[str, ...]:
    """The field names of a slotted dataclass that `cls(*values)` rebuilds exactly (every field
    positional in `__init__`, no `__post_init__`, no class or init-only pseudo-fields), or of a
    `Record` (its `__match_args__`, so made); () for any other class."""
    if issubclass(cls, Record):
        return cls.__match_args__
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__ or hasattr(cls, "__post_init__"):
        return ()
    fields = dataclasses.fields(cls)
    if len(fields) != len(cls.__dataclass_fields__) or any(not f.init or f.kw_only for f in fields):
        return ()
    return tuple(f.name for f in fields)


def _mac(key: bytes, name: str, payload: bytes) -> bytes:
    return hmac.new(key, MAGIC + name.encode() + b"\0" + payload, hashlib.sha256).digest()


_secrets: dict[str, bytes] = {}


def key_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "buildsys" / "cache-key"


def _secret() -> bytes | None:
    """This user's cache key, made on first use (0600 in a 0700 folder). None when it cannot be
    read or made, or when others could read or replace it: then nothing is cached."""
    path = key_file()
    known = _secrets.get(str(path))
    if known is not None:
        return known
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            if not _make_key(path):
                return None
            continue
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            key = os.read(fd, KEY_BYTES + 1)
        finally:
            os.close(fd)
        private = st.st_uid == os.getuid() and not st.st_mode & 0o077 if hasattr(os, "getuid") else True
        if len(key) != KEY_BYTES or not private:
            return None
        _secrets[str(path)] = key
        return key
    return None


def _make_key(path: Path) -> bool:
    """Create the key file atomically: a concurrent first use keeps whichever was linked first."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(KEY_BYTES))  # (what secrets.token_bytes reads; `secrets` imports `random`)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(tmp, path)
        return True
    except OSError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:24]


# --- shared entries ---------------------------------------------------------------------------------
# A shared cache (buildsys.sharedcache) holds JSON, never pickles, and every entry is authenticated
# with HMAC-SHA256 under the writer's key (BUILDSYS_CACHE_KEY, shared by the runners that may read
# what trusted runners wrote), bound to the content key it is stored under: an entry nobody with
# the key wrote, or one moved to another key, is refused. The domain differs from local records'.

SHARED_MAGIC = b"buildsys-shared 1\n"


def seal(key: bytes, name: str, payload: bytes) -> str:
    """The hex MAC of a shared entry's `payload` stored under `name`."""
    return hmac.new(key, SHARED_MAGIC + name.encode() + b"\0" + payload, hashlib.sha256).hexdigest()


def sealed_by(key: bytes, name: str, payload: bytes, mac: str) -> bool:
    """Whether `mac` is `seal(key, name, payload)` (compared in constant time)."""
    return hmac.compare_digest(seal(key, name, payload), mac)


def key_id(key: bytes) -> str:
    """A short public name of a writer's key (entries carry it so a refusal can say which)."""
    return hashlib.sha256(b"buildsys-key-id\0" + key).hexdigest()[:12]


# --- loaded projects --------------------------------------------------------------------------------


class _LoadedProject(Record):
    __slots__ = __match_args__ = ("project", "entrypoints")
    project: Project
    entrypoints: list[tuple[str, bool]]  # files the loader's warnings depended on, and whether they existed

    def __init__(self, project: Project, entrypoints: list[tuple[str, bool]]) -> None:
        _set(self, "project", project)
        _set(self, "entrypoints", entrypoints)


def load_project(path: Path, *, strict: bool = False) -> Project:
    """The project file loaded and validated, from `.buildsys/projects/` when this exact content was
    loaded before by this code and the entrypoint files its warnings mention still exist (or not)
    as they did. A fresh load is remembered only in a project that already has a `.buildsys/`."""
    from buildsys.project import parse_project, read_source

    raw, text = read_source(path)
    # The path as given and the cwd too: locations in messages show the path as the user wrote it.
    record = _record_path(path, PROJECTS, code_key(), str(path), os.getcwd(), str(strict), raw)
    hit = read_record(record)
    if isinstance(hit, _LoadedProject) and all(os.path.isfile(f) == existed for f, existed in hit.entrypoints):
        return hit.project
    project = parse_project(text, file=str(path), root=path.resolve().parent, strict=strict)
    if record.parent.parent.is_dir():  # never create .buildsys/ beside a bare file
        files = [
            str(project.root / d.entrypoint.rsplit(":", 1)[0])
            for d in project.deployments
            if d.entrypoint and ".py:" in d.entrypoint
        ]
        write_record(record, _LoadedProject(project, [(f, os.path.isfile(f)) for f in files]), max_age=86400)
    return project


def _record_path(path: Path, kind: str, *parts: str | bytes) -> Path:
    return directory(path.resolve().parent) / kind / _digest(*parts)


# --- compiled builds --------------------------------------------------------------------------------


class _CompiledBuild(Record):
    __slots__ = __match_args__ = ("project", "graph", "values", "sources", "versions")
    project: Project
    graph: StepGraph
    values: dict[str, str | None]  # step name → "module:attr" of its entry point (None: an import path)
    sources: dict[str, str]  # each step's source file → its digest when compiled
    # plain functions' versions (digests of their source) by where they are, in those files
    versions: dict[tuple[str, int, str], str]

    def __init__(
        self, project: Project, graph: StepGraph, values: dict[str, str | None], sources: dict[str, str],
        versions: dict[tuple[str, int, str], str],
    ) -> None:
        _set(self, "project", project)
        _set(self, "graph", graph)
        _set(self, "values", values)
        _set(self, "sources", sources)
        _set(self, "versions", versions)


def compiled_build(
    path: Path, *, sections: Sequence[str], deployments: Sequence[str], install_missing: bool = False,
    loaded: Project | None = None,
) -> Compiled:
    """The compiled build of `sections` of `deployments` (all when empty), reused while nothing it
    depends on changed: the project file, the code of the steps it uses, `code_key()`. A no-op
    build then neither parses YAML, validates schemas, scans entry points nor builds the graph.
    `loaded`: the project the caller loaded from this file (`load_project`), not read again."""
    from buildsys.compiled import Compiled, compile_project
    from buildsys.sourcefiles import read_source

    raw, _ = read_source(path)
    record = _record_path(path, COMPILED, code_key(), str(path), os.getcwd(), ",".join(sections), ",".join(deployments), raw)
    hit = read_record(record)
    if isinstance(hit, _CompiledBuild):
        steps = _steps_of(hit)
        if steps is not None:
            return Compiled(hit.project, hit.graph, steps)
    compiled = compile_project(
        loaded if loaded is not None else load_project(path), sections=sections, deployments=deployments,
        install_missing=install_missing,
    )
    write_record(record, _compiled_record(compiled), max_age=7 * 86400, defer_specs=True)
    return compiled


def _compiled_record(compiled: Compiled) -> _CompiledBuild:
    from buildsys import registry

    values = {name: registry.value_of(name) for name in compiled.steps}
    from buildsys import step

    sources = {}
    versions = {}
    for stepdef in compiled.steps.values():
        source = registry.source_file(stepdef)
        if source is not None:
            sources[source] = _file_digest(source)
        key = step.version_key(stepdef.func)
        if key is not None and key[0] in sources and step.computed_versions.get(key) == stepdef.version:
            versions[key] = stepdef.version
    return _CompiledBuild(compiled.project, compiled.graph, values, sources, versions)


def _steps_of(record: _CompiledBuild) -> dict[str, StepDef] | None:
    """Import the steps a compiled build uses; None when one's source changed since (compile
    again: its declared outputs or input schema may have changed the graph or the checks)."""
    from buildsys import registry, step

    root = record.project.root
    try:
        if any(_file_digest(f) != digest for f, digest in record.sources.items()):
            return None
        step.proven_versions.update(record.versions)  # their files are the ones digested then
        return {
            # an import path: no plugin claimed the name when compiled, and the key covers installs
            name: registry.load_value(value, name) if value is not None else registry.resolve_import_path(name, root)
            for name, value in record.values.items()
        }
    except Exception:  # anything odd: compile again, which reports it properly
        return None
    finally:
        step.proven_versions.clear()


def _file_digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()
