"""Step keys before a build: the engine's own key function (`Engine.key_for`) evaluated for every
node of a compiled graph without running anything, for comparing two revisions (buildsys.affected).

A step's outputs are not known before it runs, so each output a later step names stands for itself
as a symbol naming its step's key: the cache gives one result per key, so equal upstream keys mean
equal outputs, and a step whose inputs render the same around equal symbols has the key a real
build would give it. Where a symbol would decide which files a step reads (its files hook, or the
working directory another step's output gave it), the key cannot be known before a build. Fingerprint
hooks (a remote branch's commit, a base image's id) are left out: they are read when a build runs,
the same for both revisions.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from buildsys.compiled import Compiled
from buildsys.errors import BuildsysError
from buildsys.model import Project
from buildsys.records import Record
from buildsys.step import StepDef
from buildsys.templating import placeholders

if TYPE_CHECKING:
    from buildsys.graph import StepNode

SYMBOL = "\u27e6output "  # opens every symbol that stands for a step output not known before a build


class StepKey(Record):
    """A step's cache key on one side, or why it cannot be known before a build."""

    __slots__ = __match_args__ = ("label", "key", "components", "deps", "deployments", "section", "step", "unknown")
    label: str
    key: str
    components: Mapping[str, Any]
    deps: tuple[str, ...]  # labels of the steps it waits for
    deployments: tuple[str, ...]
    section: str
    step: str
    unknown: str

    def __init__(
        self, label: str, key: str, components: Mapping[str, Any], deps: tuple[str, ...], deployments: tuple[str, ...],
        section: str, step: str, unknown: str = "",
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "label", label)
        setattr_(self, "key", key)
        setattr_(self, "components", components)
        setattr_(self, "deps", deps)
        setattr_(self, "deployments", deployments)
        setattr_(self, "section", section)
        setattr_(self, "step", step)
        setattr_(self, "unknown", unknown)


def keying_env(project: Project, env: Mapping[str, str]) -> tuple[dict[str, str], set[str]]:
    """The environment keys are computed with: a variable a step names but the environment lacks is
    empty (the key holds the digest of "" for it, as a build's would), so that a CI job without the
    registry password can still say what a change affects."""
    names = {
        str(p.keypath[0])
        for spec in (*project.build, *project.push, *(s for d in project.deployments for s in (*d.build, *d.push)))
        for p in placeholders(spec.inputs)
        if p.kind == "env"
    }
    return {**{n: "" for n in names}, **env}, names


class _Outputs(Mapping[str, Any]):
    """A step's outputs before it has run: each is a symbol naming the step's key and the output.
    A step that declares its outputs has exactly those; one that does not may have any."""

    def __init__(self, key: str, declared: Sequence[str]) -> None:
        self.key = key
        self.declared = tuple(declared)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (not self.declared or name in self.declared)

    def __getitem__(self, name: str) -> str:
        if name not in self:
            raise KeyError(name)
        return f"{SYMBOL}{name} of {self.key}\u27e7"

    def __iter__(self) -> Iterator[str]:
        return iter(self.declared)

    def __len__(self) -> int:
        return len(self.declared)


class Reads:
    """What keying one step read (absolute, normalised paths): the files its key digests, the
    directories listed and the files opened on the way (its files hook's own reads included)."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.listed: set[str] = set()
        self.opened: set[str] = set()
        self.hooked: set[str] = set()  # what its files hook itself opened or listed
        self.targets: set[str] = set()  # files it digests through a link (also in `files`)


def step_keys(
    compiled: Compiled,
    env: Mapping[str, str],
    *,
    reads: dict[str, Reads] | None = None,
    only: Collection[str] | None = None,
    given: Mapping[str, StepKey] | None = None,
    needed: Callable[[StepNode], bool] | None = None,
) -> dict[str, StepKey]:
    """Every step's cache key by label, computed by the engine's key function without running.

    `reads`: filled with what keying each step read (`Reads`), for proving that a change cannot
    have moved its key (buildsys.affected). `only`: key just these labels and take every other
    step's key from `given` (as a step after them sees it).

    `needed` (with `reads`): asked in graph order, once a step's reads are known and noted in
    `reads`, whether its key is needed. Its files are listed (its globs expanded, its files hook
    called: all that keying reads but the files' contents) and digested only when it is; a step
    that is not gets the key `UNKEYED` and its label in place of its key, which stands for "the
    same on both sides" (its outputs' symbols name that too): `needed` must answer True for every
    step whose key can differ between the sides compared."""
    from buildsys.engine import Engine, NodeResult

    steps = {name: _unfingerprinted(sd, traced=reads is not None) for name, sd in compiled.steps.items()}
    graph = compiled.graph
    engine = Engine(compiled.project, graph, steps, env=env, dry_run=True)
    lazy = needed is not None and reads is not None and _cache_readable(engine)
    real = _Realpaths()
    out: dict[str, StepKey] = {}
    try:
        for key in graph.order():
            node, stepdef = graph.nodes[key], engine.stepdefs[key]
            if only is not None and node.label not in only:
                known = (given or {})[node.label]
                engine.results[key] = NodeResult(
                    key, node.label, "cached", outputs=_Outputs(known.key, stepdef.outputs), cache_key=known.key  # type: ignore[arg-type]
                )
                out[node.label] = known
                continue
            unknown, components, cache_key = "", {}, ""
            seen = Reads() if reads is not None else None
            listing, inputs, ctx = lazy, None, None
            try:
                with _tracing(seen):
                    if listing:
                        inputs, ctx = engine.files_for(node, stepdef)
                    else:
                        keyed = engine.key_for(node, stepdef)
                        components, cache_key, inputs, ctx = keyed.components, keyed.cache_key, keyed.inputs, keyed.ctx
            except Exception as exc:  # any failure to key (a step's own hook too) means "cannot know"
                unknown = _cannot(exc)
            if seen is not None and reads is not None:
                _note(seen, engine.dependencies.nodes.get(node.label, ((), ())), real)
                reads[node.label] = seen
            wanted = needed is not None and reads is not None and needed(node)  # asked of every step, in graph order
            if listing and not unknown and (wanted or _unreadable(engine.dependencies.nodes[node.label][0])):
                try:  # keyed as without `needed` (what it reads again is what it read)
                    with _tracing(seen):
                        keyed = engine.key_for(node, stepdef)
                    components, cache_key, listing = keyed.components, keyed.cache_key, False
                except Exception as exc:
                    unknown = _cannot(exc)
                if seen is not None:
                    _note(seen, engine.dependencies.nodes.get(node.label, ((), ())), real)
            if not unknown and ctx is not None and stepdef.files_hook is not None and (SYMBOL in str(ctx.cwd) or _symbolic(inputs)):
                unknown = "the files it reads depend on another step's outputs, known only after a build"
            if unknown:
                cache_key = f"unknown:{key}"
            elif listing:
                cache_key = f"{UNKEYED}{node.label}"
            engine.results[key] = NodeResult(
                key, node.label, "cached", outputs=_Outputs(cache_key, stepdef.outputs), cache_key=cache_key  # type: ignore[arg-type]
            )
            out[node.label] = StepKey(
                label=node.label,
                key=cache_key,
                components=components,
                deps=tuple(graph.nodes[d].label for d in node.deps),
                deployments=node.deployments,
                section=node.section,
                step=node.spec.name,
                unknown=unknown,
            )
    finally:
        engine.cache.close()
    return out


def _cannot(exc: Exception) -> str:
    text = exc.message if isinstance(exc, BuildsysError) else f"{type(exc).__name__}: {exc}"
    return f"its key cannot be computed before a build ({text})"


UNKEYED = "unkeyed:"  # opens the key of a step `step_keys` did not key (`needed`): the same on both sides


def _note(seen: Reads, noted: tuple[Sequence[str], Sequence[str]], real: _Realpaths) -> None:
    """Add the files and listed directories the engine noted for a step to what keying it read."""
    files, listed = noted
    for f in files:
        name = os.path.normpath(f)
        seen.files.add(name)
        target = real(name)  # a link's digest is its target's content
        if target != name:
            seen.files.add(target)
            seen.targets.add(target)
    seen.listed.update(os.path.normpath(d) for d in listed)


class _Realpaths:
    """`os.path.realpath` of a step's files (absolute, normalised), one `lstat` per file and per
    folder met, not one per component of each: a path that is not itself a link is its folder's
    real path joined with its name (a missing one too, as `realpath` keeps it)."""

    def __init__(self) -> None:
        self.folders: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        folder, name = os.path.split(path)
        if not name or name in (".", ".."):
            return os.path.realpath(path)
        try:
            link = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:
            link = False  # missing (or not to be looked at): realpath keeps the name as it is too
        if link:
            return os.path.realpath(path)
        real = self.folders.get(folder)
        if real is None:
            real = self.folders[folder] = self(folder)
        return os.path.join(real, name)


def _cache_readable(engine: Any) -> bool:
    """Whether the build cache's file rows can be read: when they cannot, keying any step fails
    (its key is then unknown, which only keying every step says)."""
    try:
        engine.cache.file_rows()
    except Exception:
        return False
    return True


def _unreadable(files: Sequence[str]) -> bool:
    """Whether digesting would fail on some regular file among `files` (it cannot be opened for
    reading): keying the step then fails, and says why."""
    access, R_OK = os.access, os.R_OK
    for f in files:
        if not access(f, R_OK):
            try:
                st = os.stat(f)
            except OSError:
                continue  # missing: its digest says so, no failure
            if stat.S_ISREG(st.st_mode):
                return True
    return False


# --- what keying a step read: Python's audit events for opened files and listed directories ----------

_TRACE = threading.local()  # .reads: the Reads being filled in this thread, or None
_HOOKED = False
_LISTINGS = ("os.scandir", "os.listdir")


class _tracing:
    """Within the block, every file this thread opens (`open`, `os.open`) and every directory it
    lists (`os.scandir`, `os.listdir`, so also `os.walk`, `glob`, `Path.iterdir`) is noted in
    `reads`. Python's audit hooks cannot be removed, so one is added the first time and does
    nothing outside such a block. Tests of existence alone (`os.stat`) raise no audit event."""

    def __init__(self, reads: Reads | None) -> None:
        self.reads = reads

    def __enter__(self) -> None:
        global _HOOKED
        if self.reads is None:
            return
        if not _HOOKED:
            sys.addaudithook(_audit)
            _HOOKED = True
        _TRACE.reads = self.reads

    def __exit__(self, *exc: object) -> None:
        if self.reads is not None:
            _TRACE.reads = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    reads: Reads | None = getattr(_TRACE, "reads", None)
    if reads is None or (event != "open" and event not in _LISTINGS):
        return
    path = args[0] if args else None
    if path is None and event in _LISTINGS:
        path = "."
    if not isinstance(path, (str, bytes, os.PathLike)):
        return  # an open file descriptor
    _TRACE.reads = None  # what the bookkeeping itself does is not the step's
    try:
        name = os.path.normpath(os.path.abspath(os.fsdecode(path)))
        (reads.opened if event == "open" else reads.listed).add(name)
        if getattr(_TRACE, "in_hook", False):
            reads.hooked.add(name)
    finally:
        _TRACE.reads = reads


def _unfingerprinted(stepdef: StepDef, *, traced: bool = False) -> StepDef:
    """The step without its fingerprint hook; `traced`: its files hook's reads noted as its own."""
    hook = stepdef.files_hook
    if stepdef.fingerprint_hook is None and (hook is None or not traced):
        return stepdef
    clone = copy.copy(stepdef)
    clone.fingerprint_hook = None
    if hook is not None and traced:
        def files(inputs: Mapping[str, Any], ctx: Any, hook: Any = hook) -> Any:
            _TRACE.in_hook = True
            try:
                return hook(inputs, ctx)
            finally:
                _TRACE.in_hook = False

        clone.files_hook = files
    return clone


_KEYED_SYMBOL = SYMBOL + r"(\S+) of [^\u27e7]*\u27e7"


def unsymbolised(components: Mapping[str, Any]) -> dict[str, Any]:
    """Components with each output symbol's key left out, for the explanation only: a changed
    upstream step is said once ("upstream step X changed"), not again as changed inputs."""
    text = re.sub(_KEYED_SYMBOL, lambda m: f"{SYMBOL}{m.group(1)}\u27e7", json.dumps(components, default=str, ensure_ascii=False))
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _symbolic(value: Any) -> bool:
    return SYMBOL in json.dumps(value, default=str, ensure_ascii=False)
