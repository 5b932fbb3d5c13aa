"""Compiled projects: the loaded model, its step graph (with its order) and where each step comes
from, pickled under `.buildsys/compiled/` and keyed by everything they depend on.

A no-op build then skips YAML parsing, schema validation, entry-point scanning and graph building;
any change to the project file, to a project-local step file, to buildsys or to the installed
packages (site-packages directories' mtimes) compiles again.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildsys import __version__
from buildsys.graph import StepGraph
from buildsys.model import Project
from buildsys.noop import environment_fingerprint
from buildsys.step import StepDef

FORMAT = 2


@dataclass
class Compiled:
    project: Project
    graph: StepGraph
    values: dict[str, str | None]  # step name → "module:attr" (entry point) or None (import path)
    local_files: dict[str, str] = field(default_factory=dict)  # project-local step files → digest
    stepdefs: dict[str, StepDef] = field(default_factory=dict)  # filled after loading (not pickled)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["stepdefs"] = {}
        return state


def compile_project(path: Path, *, sections: Sequence[str], deployments: Sequence[str]) -> Compiled:
    """The compiled project for a build of `sections` of `deployments` (all when empty)."""
    try:
        data = path.read_bytes()
    except OSError:
        from buildsys.project import load_project

        load_project(path)  # raises the proper "no project file" error
        raise
    key = _key(path, data, sections, deployments)
    cache = path.resolve().parent / ".buildsys" / "compiled" / f"{key}.pickle"
    compiled = _load(cache)
    if compiled is not None and _resolve(compiled):
        return compiled
    compiled = _compile(path, sections, deployments)
    _save(cache, compiled)
    return compiled


def _key(path: Path, data: bytes, sections: Sequence[str], deployments: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in (str(FORMAT), __version__, sys.version, str(path), ",".join(sections), ",".join(deployments)):
        h.update(part.encode() + b"\0")
    h.update(data)
    for entry, mtime in environment_fingerprint():
        h.update(f"{entry}:{mtime}".encode())
    return h.hexdigest()[:24]


def _load(cache: Path) -> Compiled | None:
    obj = _read_pickle(cache)
    return obj if isinstance(obj, Compiled) else None


def _save(cache: Path, compiled: Compiled) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    _write_pickle(cache, compiled, max_age=7 * 86400)


def _read_pickle(cache: Path) -> object:
    try:
        with cache.open("rb") as fh:
            return pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError):
        return None


def _write_pickle(cache: Path, obj: object, *, max_age: float) -> None:
    """Atomically replace `cache`, sweeping its siblings older than `max_age` seconds."""
    for old in cache.parent.glob("*.pickle"):
        if old != cache and old.stat().st_mtime < time.time() - max_age:
            old.unlink(missing_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, cache)


def _resolve(compiled: Compiled) -> bool:
    """Import the steps the compiled graph needs; False when a local step file changed."""
    from buildsys import registry

    root = compiled.project.root
    for file, digest in compiled.local_files.items():
        try:
            if _digest(root / file) != digest:
                return False
        except OSError:
            return False
    try:
        for name, value in compiled.values.items():
            if value is not None:
                compiled.stepdefs[name] = registry.load_value(value, name)
            else:  # no plugin claimed it when compiled; the key covers installed packages
                compiled.stepdefs[name] = registry.resolve_import_path(name, root)
    except Exception:
        return False  # anything odd: compile again, which reports it properly
    return True


def _compile(path: Path, sections: Sequence[str], deployments: Sequence[str]) -> Compiled:
    from buildsys import registry
    from buildsys.engine import Engine, graph_for
    from buildsys.project import load_project

    project = load_project(path)
    graph = graph_for(project, sections=sections, deployments=deployments)
    graph.order()  # computed now, pickled with the graph
    engine = Engine(project, graph)
    engine.prepare()  # resolves every step and checks inputs; raises ProjectError
    values: dict[str, str | None] = {}
    local: dict[str, str] = {}
    for prep in engine.prepared.values():
        name = prep.node.spec.name
        values[name] = registry.value_of(name)
        if ".py:" in name:
            file = name.rpartition(":")[0]
            local[file] = _digest(project.root / file)
    compiled = Compiled(project, graph, values, local)
    compiled.stepdefs = {p.node.spec.name: p.stepdef for p in engine.prepared.values()}
    return compiled


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --- loaded projects ---------------------------------------------------------------------------------
# The model alone, for commands that need no graph (plan, apply, run, pool…): a 1,000-deployment file
# takes ~0.6 s to parse and validate and ~0.05 s to unpickle.


@dataclass
class _LoadedProject:
    project: Project
    entrypoints: list[tuple[str, bool]]  # files the loader's warnings depended on, and whether they existed


def cached_project(path: Path, data: bytes, strict: bool) -> Project | None:
    """The loaded project for exactly these bytes, if a previous load cached it and the entrypoint
    files its warnings mention still exist (or not) as they did."""
    obj = _read_pickle(_project_cache_path(path, data, strict))
    if not isinstance(obj, _LoadedProject):
        return None
    if any(os.path.isfile(f) != existed for f, existed in obj.entrypoints):
        return None
    return obj.project


def remember_project(path: Path, data: bytes, strict: bool, project: Project) -> None:
    """Cache a freshly loaded project (best effort: a read-only directory simply is not used)."""
    files = [
        str(project.root / d.entrypoint.rsplit(":", 1)[0])
        for d in project.deployments
        if d.entrypoint and ".py:" in d.entrypoint
    ]
    record = _LoadedProject(project, [(f, os.path.isfile(f)) for f in files])
    cache = _project_cache_path(path, data, strict)
    if not cache.parent.parent.is_dir():
        return  # only projects that already have a .buildsys/ (never write beside a bare file)
    try:
        cache.parent.mkdir(exist_ok=True)
        _write_pickle(cache, record, max_age=86400)
    except OSError:
        return


def _project_cache_path(path: Path, data: bytes, strict: bool) -> Path:
    h = hashlib.sha256()
    # The path as given and the cwd too: locations in messages show the path as the user wrote it.
    for part in (str(FORMAT), __version__, sys.version, str(path), os.getcwd(), str(strict), _code_stamp()):
        h.update(part.encode() + b"\0")
    h.update(data)
    return path.resolve().parent / ".buildsys" / "projects" / f"{h.hexdigest()[:24]}.pickle"


def _code_stamp() -> str:
    """The loader's own code and schema: editing either (in a development checkout) loads afresh."""
    import buildsys.project as loader

    here = Path(loader.__file__).parent
    parts = []
    for f in (Path(loader.__file__), here / "schema.py", here / "yamlsource.py", here / "model.py", here / "errors.py"):
        try:
            parts.append(str(f.stat().st_mtime_ns))
        except OSError:
            parts.append("-")
    try:
        from importlib.resources import files

        schema = files("buildsys.schemas").joinpath("project.schema.json")
        parts.append(hashlib.sha256(schema.read_bytes()).hexdigest()[:16])
    except (OSError, ModuleNotFoundError):
        parts.append("-")
    return ",".join(parts)
