"""Watch mode: file changes → one build cycle (build, re-validate, plan, apply, run) per burst.

The engine's cache decides what reruns, so a cycle costs only the steps a change affects. Changes
that are not the user's never start a cycle: `.git`, `.buildsys/`, virtualenvs, caches, and what
the steps themselves wrote (the paths they return as outputs, and files written while they ran).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.errors import BuildsysError
from buildsys.reporter import NullReporter, Reporter

__all__ = ["IGNORED_DIRS", "Cycle", "StepRun", "WatchFilter", "Watcher", "output_paths", "redirected_outputs",
           "render_cycle", "store_files"]

IGNORED_DIRS = frozenset({
    ".git", ".hg", ".svn", ".buildsys", "__pycache__", ".venv", ".tox", ".nox", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", ".hypothesis", ".idea", "node_modules",
})
_IGNORED_NAMES = re.compile(r"(\.py[cod]|\.sw.|~|\.DS_Store|\.___jb_...___)$|^\.#|^4913$")
# Output keys whose values are paths a step created (git_clone's directory, a written file…).
PATH_KEYS = frozenset({"path", "paths", "directory", "dir", "file", "files", "output", "outputs"})
_CHANGE_MARK = {1: "+", 2: "~", 3: "-"}  # watchfiles.Change: added, modified, deleted
BULK_CHANGES = 20  # a batch this big is a bulk operation whose tail may lag behind
BULK_TAIL_MS = 250


@dataclass(frozen=True)
class StepRun:
    label: str
    status: str  # ran | cached | failed | skipped
    reason: str
    duration: float


@dataclass(frozen=True)
class Cycle:
    """What one cycle saw and did."""

    number: int
    changed: tuple[str, ...]  # "~ src/app.py", "+ new.py", "- old.py"
    revalidated: bool = False
    problems: tuple[str, ...] = ()
    steps: tuple[StepRun, ...] = ()
    plan: str | None = None  # "2 to add, 0 to change, 0 to destroy"
    applied: int | None = None
    run: str | None = None
    duration: float = 0.0
    warnings: tuple[str, ...] = ()  # when the project file was (re)read: as `validate` and `plan` say them

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def reran(self) -> tuple[StepRun, ...]:
        return tuple(s for s in self.steps if s.status != "cached")


class WatchFilter:
    """Decides which paths may start a cycle; callable as a watchfiles `watch_filter`."""

    def __init__(self, root: Path, *, own_files: Iterable[tuple[int, int]] = (), ignore: Iterable[Path] = ()) -> None:
        self.root = root.resolve()
        self.own_files = frozenset(own_files)  # (st_dev, st_ino) of files this process writes (a log)
        self.ignore = tuple(p.resolve() for p in ignore)  # e.g. the state store file and its journals
        self._venvs: set[Path] = set()
        self._outputs: set[str] = set()  # relative paths (files or folders) steps produced
        self._written: dict[str, tuple[int, int]] = {}  # path → (mtime_ns, size) a step left it with
        self._window: tuple[int, int] | None = None  # wall-clock ns bounds of the last build
        self._inputs: Any = None  # a pathspec of the files the build reads
        self._lock = threading.Lock()

    def __call__(self, change: Any, path: str) -> bool:
        return self.reason(Path(path)) is None

    def reason(self, path: Path) -> str | None:
        """Why a change to ``path`` is not the user's, or None when it should start a cycle."""
        try:
            rel = path.resolve().relative_to(self.root) if path.is_absolute() else path
        except ValueError:
            return "outside the project"
        parts = rel.parts
        if any(p in IGNORED_DIRS for p in parts[:-1]) or (parts and parts[-1] in IGNORED_DIRS):
            return "ignored folder"
        if parts and _IGNORED_NAMES.search(parts[-1]):
            return "editor or bytecode file"
        if self._in_virtualenv(parts):
            return "virtualenv"
        if self.own_files and _inode(self.root / rel) in self.own_files:
            return "buildsys's own output"
        if self.ignore and any(str(self.root / rel).startswith(str(i)) for i in self.ignore):
            return "the state store"
        return self._step_written(rel.as_posix())

    def _in_virtualenv(self, parts: tuple[str, ...]) -> bool:
        current = self.root
        for part in parts:  # the last part too: a virtualenv folder being created is one
            current = current / part
            if current in self._venvs:
                return True
            if (current / "pyvenv.cfg").is_file():  # only positives are remembered: a venv appears later
                self._venvs.add(current)
                return True
        return False

    def _step_written(self, rel: str) -> str | None:
        with self._lock:
            if any(rel == out or rel.startswith(out + "/") for out in self._outputs):
                return "a step's output"
            stat = _stat(self.root / rel)
            if stat is not None and self._written.get(rel) == stat:
                return "written by a step"
            window = self._window
        if (stat is not None and window is not None and window[0] <= _mtime(self.root / rel) < window[1]
                and not self._is_input(rel)):
            with self._lock:
                self._written[rel] = stat
            return "written by a step"
        return None

    def _is_input(self, rel: str) -> bool:
        """Files the build reads (declared step inputs, the project file, flow entrypoints) are the
        user's even when saved while a build ran: such a save must start the next cycle."""
        spec = self._inputs
        return spec is not None and bool(spec.match_file(rel))

    def build_started(self) -> None:
        with self._lock:
            self._window = (_file_clock_ns(), 2**63)

    def build_finished(self, outputs: Iterable[str], inputs: Iterable[str] = ()) -> None:
        """Remember what the build produced; files changed during it are attributed to its steps,
        except those matching ``inputs`` (gitignore-style patterns relative to the root)."""
        import pathspec

        patterns = list(inputs)
        self._inputs = pathspec.GitIgnoreSpec.from_lines(patterns) if patterns else None
        with self._lock:
            start = self._window[0] if self._window else _file_clock_ns()
            # strictly before the end: a save in the build's last clock tick is the user's, not a step's
            self._window = (start, _file_clock_ns())
            self._outputs = {o for o in outputs if o not in ("", ".")}

    def forget_window(self) -> None:
        with self._lock:
            self._window = None


def _file_clock_ns() -> int:
    """Now, on the clock file timestamps come from: Linux stamps files with the coarse real-time
    clock (a few ms behind `time.time_ns()`), so comparing mtimes with the fine clock would put a
    save made just after a build inside the build's window."""
    coarse = getattr(time, "CLOCK_REALTIME_COARSE", None)
    return time.clock_gettime_ns(coarse) if coarse is not None else time.time_ns()


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def store_files(url: str, root: Path) -> tuple[Path, ...]:
    """The files a file-backed state store writes (database, journal, WAL), so they never start a
    cycle — `apply` and `--run` write there every cycle. Server URLs have none."""
    if url.startswith(("http://", "https://", "postgresql://", "postgres://")):
        return ()
    path = Path(url[len("sqlite:///"):] if url.startswith("sqlite:///") else url)
    path = path if path.is_absolute() else root / path
    return (path,)  # a prefix: also state.db-wal, state.db-shm, state.db-journal


def redirected_outputs() -> set[tuple[int, int]]:
    """The files stdout/stderr are redirected to (`buildsys watch > watch.log` must not loop)."""
    import os
    import stat

    found: set[tuple[int, int]] = set()
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.add((st.st_dev, st.st_ino))
    return found


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def output_paths(outputs: Iterable[Mapping[str, Any]], root: Path, cwd: Path | None = None) -> set[str]:
    """Paths inside ``root`` that step outputs name under path-like keys (relative, posix)."""
    found: set[str] = set()
    base = (cwd or root).resolve()
    root = root.resolve()
    for values in outputs:
        for key, value in values.items():
            if key not in PATH_KEYS:
                continue
            for text in _strings(value):
                candidate = (base / text).resolve()
                if candidate != root and candidate.is_relative_to(root) and candidate.exists():
                    found.add(candidate.relative_to(root).as_posix())
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str) and value and "\n" not in value:
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


@dataclass
class Watcher:
    """Runs cycles for a project. `cycle()` is one cycle; `watch()` loops on file changes."""

    project_file: Path
    open_store: Callable[[], Any] | None = None  # needed for plan/apply/run
    apply: bool = False
    run: str | None = None
    reporter: Reporter = field(default_factory=NullReporter)
    debounce_ms: int = 1600
    step_ms: int = 30
    own_files: frozenset[tuple[int, int]] = frozenset()
    ignore: tuple[Path, ...] = ()
    count: int = 0
    on_start: Callable[[int, tuple[str, ...], bool], None] | None = None  # the header, before the build prints

    def __post_init__(self) -> None:
        # kept as given (relative to the cwd) so that messages name it the way the user does
        self.root = self.project_file.resolve().parent
        self.filter = WatchFilter(self.root, own_files=self.own_files, ignore=self.ignore)

    def watch(self, on_cycle: Callable[[Cycle], None], *, stop: threading.Event | None = None,
              initial: bool = True) -> None:
        """An initial cycle, then one per burst of changes until ``stop`` is set (Ctrl-C raises
        KeyboardInterrupt). Watching starts before the initial cycle, so no change is missed."""
        for changes in self._bursts(stop, on_ready=lambda: on_cycle(self.cycle(())) if initial else None):
            mine = sorted(f"{_CHANGE_MARK.get(c, '~')} {self._rel(p)}" for c, p in _lasting(changes))
            if mine:
                on_cycle(self.cycle(tuple(mine)))

    def _bursts(self, stop: threading.Event | None, on_ready: Callable[[], None]) -> Iterator[set[tuple[int, str]]]:
        """watchfiles' watch loop, with a hook once the OS watch is in place (watchfiles.watch only
        starts watching at the first `next()`, after which an initial build could miss changes).
        RustNotify is not watchfiles' public API: pyproject pins the minor version these tests run on."""
        from watchfiles.main import RustNotify  # type: ignore[attr-defined]

        with RustNotify([str(self.root)], False, False, 300, True, False) as notify:
            on_ready()
            while True:
                raw = notify.watch(self.debounce_ms, self.step_ms, 5000, stop)
                if raw == "signal":
                    raise KeyboardInterrupt
                if raw == "stop":
                    return
                if raw == "timeout":
                    continue
                # filtered now, while the last build's window is known: its own writes drop out here
                changes = self._relevant(raw)
                if len(changes) >= BULK_CHANGES:
                    changes |= self._relevant(self._tail(notify, stop))
                self.filter.forget_window()
                if changes:
                    yield changes

    def _relevant(self, raw: set[tuple[int, str]]) -> set[tuple[int, str]]:
        return {(int(c), p) for c, p in raw if self.filter.reason(Path(p)) is None}

    def _tail(self, notify: Any, stop: threading.Event | None) -> set[tuple[int, str]]:
        """A bulk operation (a checkout, an unpacked archive) can pause longer than the quiet step,
        more so on a busy machine: give its tail a little longer, so it stays one cycle. A single
        save never waits for this."""
        merged: set[tuple[int, str]] = set()
        deadline = time.monotonic() + self.debounce_ms / 1000
        while time.monotonic() < deadline:
            more = notify.watch(self.debounce_ms, self.step_ms, BULK_TAIL_MS, stop)
            if not isinstance(more, set):
                if more == "signal":
                    raise KeyboardInterrupt
                break  # "timeout" (the burst is over) or "stop"
            merged |= more
        return merged

    def _rel(self, path: str) -> str:
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return path

    def cycle(self, changed: tuple[str, ...]) -> Cycle:
        """Build (the cache decides what reruns), then plan, apply and run as configured."""
        self.count += 1
        started = time.monotonic()
        name = self._rel(str(self.project_file))
        revalidated = any(c[2:] == name for c in changed) or not changed
        outcome = Cycle(self.count, changed, revalidated)
        if self.on_start is not None:
            self.on_start(self.count, changed, revalidated)
        try:
            outcome = self._build(outcome)
            if outcome.ok and self.open_store is not None:
                outcome = self._deploy(outcome)
        except BuildsysError as exc:
            outcome = _with(outcome, problems=(*outcome.problems, exc.render()))
        return _with(outcome, duration=time.monotonic() - started)

    def _build(self, outcome: Cycle) -> Cycle:
        from buildsys.caches import compiled_build
        from buildsys.engine import build

        self.filter.build_started()
        result = None
        try:
            compiled = compiled_build(self.project_file, sections=("build",), deployments=())
            if outcome.revalidated:  # said once per change of the file, not every cycle
                outcome = _with(outcome, warnings=tuple(w.render() for w in compiled.project.warnings))
            result = build(compiled.project, compiled.graph, compiled.steps, reporter=self.reporter)
        finally:
            produced = [r.outputs for r in result.results.values()] if result is not None else []
            self.filter.build_finished(output_paths(produced, self.root), self._read_by_build())
        steps = tuple(StepRun(r.label, r.status, r.reason or r.error, r.duration)
                      for r in sorted(result.results.values(), key=lambda r: r.label))
        problems = tuple(f"step {r.label} failed: {r.error}" for r in result.results.values()
                         if r.status == "failed")
        return _with(outcome, steps=steps, problems=problems)

    def _read_by_build(self) -> list[str]:
        """Patterns of what the build and plan read: step input globs, the project file, entrypoints."""
        from buildsys.caches import load_project

        patterns = ["/" + self._rel(str(self.project_file))]
        try:
            project = load_project(self.project_file)
        except BuildsysError:
            return patterns
        steps = [*project.build, *project.push, *(s for d in project.deployments for s in (*d.build, *d.push))]
        patterns += ["/" + g.lstrip("/") for s in steps for g in s.input_globs]
        patterns += ["/" + d.entrypoint.split(":", 1)[0] for d in project.deployments
                     if d.entrypoint and ".py:" in d.entrypoint]
        return patterns

    def _deploy(self, outcome: Cycle) -> Cycle:
        from buildsys.caches import load_project
        from buildsys.reconcile import apply_plan, cached_outputs, plan_project

        assert self.open_store is not None
        store = self.open_store()
        try:
            project = load_project(self.project_file)
            planned = plan_project(self.project_file, store, outputs=cached_outputs, project=project, env=os.environ)
            summary = _plan_summary(planned)
            outcome = _with(outcome, plan=summary)
            if outcome.revalidated:
                said = dict.fromkeys((*outcome.warnings, *planned.warnings))  # the plan repeats the file's
                outcome = _with(outcome, warnings=tuple(said))
            if self.apply and planned.has_changes:
                outcome = _with(outcome, applied=apply_plan(store, planned).applied)
            if self.run is not None:
                outcome = _with(outcome, run=_start_run(store, self.run))
        finally:
            store.close()
        return outcome


def _lasting(changes: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Changes without the files that came and went within the burst: an editor's or `sed -i`'s
    temporary file (`sed7QqnIg`, `.#file`, `4913`) is created, written and renamed away before the
    cycle starts; what it was renamed to is reported as that file's own change."""
    added = {p for c, p in changes if c == 1}
    return {(c, p) for c, p in changes if not (p in added and not os.path.lexists(p))}


def _plan_summary(planned: Any) -> str:
    data = planned.to_dict()["summary"]
    if not planned.has_changes:
        return "no changes"
    return f"{data['add']} to add, {data['change']} to change, {data['destroy']} to destroy"


def _start_run(store: Any, deployment: str) -> str:
    from buildsys.selector import find_deployment

    resource = find_deployment(store, deployment)
    created = store.create_run(resource.name)
    return f"started flow run {created.name} ({created.id}) of {created.deployment}"


def _with(cycle: Cycle, **changes: Any) -> Cycle:
    from dataclasses import replace

    return replace(cycle, **changes)


def render_head(number: int, changed: tuple[str, ...], revalidated: bool) -> str:
    """The cycle's header and what changed: printed when the cycle starts, above the build's output."""
    head = "initial build" if not changed else f"{len(changed)} change(s)"
    lines = [f"── cycle {number}: {head}" + (" (prefect.yaml re-validated)" if changed and revalidated else "")]
    shown = changed[:10]
    lines += [f"   {c}" for c in shown]
    if len(changed) > len(shown):
        lines.append(f"   … and {len(changed) - len(shown)} more")
    return "\n".join(lines)


def render_cycle(cycle: Cycle, *, apply: bool = False, head: bool = True) -> str:
    """The lines a person reads after each cycle: what changed, what reran and why, how long
    (without the header when it was printed as the cycle started)."""
    lines = [render_head(cycle.number, cycle.changed, cycle.revalidated)] if head else []
    lines += [f"   {line}" for w in cycle.warnings for line in w.splitlines()]
    for s in cycle.reran:
        lines.append(f"   {s.status} {s.label}: {s.reason} ({s.duration:.2f}s)")
    cached = len(cycle.steps) - len(cycle.reran)
    if cycle.steps and not cycle.reran:
        lines.append(f"   nothing to rebuild ({cached} step(s) cached)")
    elif cached:
        lines.append(f"   {cached} step(s) cached")
    lines += [f"   {p}" for p in "\n".join(cycle.problems).splitlines()]
    if cycle.plan is not None:
        lines.append(f"   plan: {cycle.plan}")
    if cycle.applied is not None:
        lines.append(f"   applied {cycle.applied} change(s)")
    elif apply and cycle.plan == "no changes":
        lines.append("   nothing to apply")
    if cycle.run:
        lines.append(f"   {cycle.run}")
    status = "ok" if cycle.ok else "failed (still watching)"
    lines.append(f"   {status} in {cycle.duration * 1000:.0f} ms")
    return "\n".join(lines)

