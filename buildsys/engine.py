"""The build engine: run a step graph in parallel, each node cached by content with a reason.

Pipeline per node: render inputs with upstream outputs → cache key (step, version, inputs, env
digests, input files, fingerprint, upstream keys) → hit and still real? restore : run → record.
Failures are values: a failed node stops its dependents (and, without --keep-going, the build).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import FrozenInstanceError
from pathlib import Path
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

from buildsys.cache import IGNORE_FILES, Cache, FileSet, is_absolute, key_and_text, secret_digest
from buildsys.errors import BuildsysError, TemplateError
from buildsys.graph import StepGraph, StepNode
from buildsys.model import Project
from buildsys.noop import Previous, Seen
from buildsys.reporter import Event, NullReporter, Reporter, report_all
from buildsys.sensitive import secret_values
from buildsys.step import BuildScope, Context, StepDef
from buildsys.templating import BlockResolver, Scope, env_blocks, placeholders, render, render_inputs

if TYPE_CHECKING:
    from buildsys.cache_prefetch import Prefetch
    from buildsys.sharedcache import SharedCache


# Plain slotted classes, not dataclasses: generating a dataclass's methods costs every build
# ~0.35 ms per class when this module is imported.


class NodeResult:
    __slots__ = __match_args__ = ("key", "label", "status", "reason", "outputs", "error", "duration", "cache_key")

    def __init__(
        self, key: str, label: str, status: str, reason: str = "", outputs: dict[str, Any] | None = None,
        error: str = "", duration: float = 0.0, cache_key: str = "",
    ) -> None:
        self.key = key
        self.label = label
        self.status = status  # ran | cached | failed | skipped
        self.reason = reason
        self.outputs: dict[str, Any] = {} if outputs is None else outputs
        self.error = error
        self.duration = duration
        self.cache_key = cache_key

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, NodeResult)
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # (mutable)

    def __repr__(self) -> str:
        return "NodeResult(" + ", ".join(f"{n}={v!r}" for n, v in zip(self.__slots__, self._fields(), strict=True)) + ")"


class Dependencies:
    """Everything a build's outcome depended on, for the no-op fast path (buildsys.noop)."""

    __slots__ = ("directories", "env", "files", "kept", "loose", "nodes", "previous", "provable", "stats")

    def __init__(self) -> None:
        self.files: set[str] = set()  # absolute paths
        self.directories: set[str] = set()
        self.env: dict[str, str | None] = {}
        self.provable = True  # False: some decision needed a hook, a listing we did not track, …
        # the stat data the decisions rest on: seen while digesting, else recorded by `previous`
        self.stats: Mapping[str, tuple[int, int, int, int]] | Seen = {}
        self.previous: Previous | None = None  # the last build's manifest this build started from
        # label -> (absolute input files, directories listed): what each step's key read
        self.nodes: dict[str, tuple[list[str], list[str]]] = {}
        # the steps settled from `previous` (their key, files and directories: the ones it
        # recorded, in none of the fields above)
        self.kept: list[str] = []
        # files every step depends on that no step's key covers (the ignore files, the steps' code)
        self.loose: set[str] = set()


class BuildResult:
    __slots__ = ("dependencies", "graph", "results")

    def __init__(self, graph: StepGraph, results: dict[str, NodeResult], dependencies: Dependencies | None = None) -> None:
        self.graph = graph
        self.results = results
        self.dependencies = Dependencies() if dependencies is None else dependencies

    @property
    def ok(self) -> bool:
        return all(r.status in ("ran", "cached") for r in self.results.values())

    def namespace(self, deployment: str = "") -> dict[str, Any]:
        """Outputs as Prefect's namespace: by step id, plus every key merged flat (later wins)."""
        return namespace_for(self.graph, self.results, deployment)

    def outputs(self, deployment: str = "") -> dict[str, dict[str, Any]]:
        """Outputs of the deployment's chain by step id (or label for steps without an id)."""
        out: dict[str, dict[str, Any]] = {}
        for key in self.graph.chains.get(deployment, ()):
            node = self.graph.nodes[key]
            res = self.results.get(key)
            if res is not None and res.status in ("ran", "cached"):
                out[node.spec.id or node.label] = res.outputs
        return out


def namespace_for(graph: StepGraph, results: Mapping[str, NodeResult], deployment: str) -> dict[str, Any]:
    ns: dict[str, Any] = {}
    chain = graph.chains.get(deployment) or graph.chains.get("") or ()
    for key in chain:
        res = results.get(key)
        if res is None or res.status not in ("ran", "cached"):
            continue
        node = graph.nodes[key]
        if node.spec.id:
            ns[node.spec.id] = res.outputs
        ns.update(res.outputs)
    return ns


class _Keyed:
    __slots__ = ("cache_key", "components", "ctx", "encoded", "inputs")

    def __init__(self, inputs: dict[str, Any], ctx: Context, components: dict[str, Any], cache_key: str, encoded: str = "") -> None:
        self.inputs = inputs
        self.ctx = ctx
        self.components = components
        self.cache_key = cache_key
        self.encoded = encoded  # the components' JSON text (the cache stores it as the node's last components)


class Decision:
    """Whether a step runs, and why: the one status rule behind a build, plan's build outputs,
    `cache explain` and the UI's graph (as doit's runner and `doit info` share `get_status`).

    state: cached (the result is reused) | run | blocked (an upstream step would run first, so the
    inputs are not known yet) | error (its inputs cannot be rendered). Frozen; compared, hashed and
    shown on state, reason, cache key and outputs (not on `keyed` and `error`)."""

    __slots__ = ("cache_key", "error", "keyed", "outputs", "reason", "state")
    state: str
    reason: str
    cache_key: str
    outputs: dict[str, Any] | None
    keyed: _Keyed | None
    error: BuildsysError | None

    def __init__(
        self, state: str, reason: str, cache_key: str = "", outputs: dict[str, Any] | None = None,
        keyed: _Keyed | None = None, error: BuildsysError | None = None,
    ) -> None:
        for name, value in (("state", state), ("reason", reason), ("cache_key", cache_key), ("outputs", outputs),
                            ("keyed", keyed), ("error", error)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def _compared(self) -> tuple[Any, ...]:
        return (self.state, self.reason, self.cache_key, self.outputs)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Decision)
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())

    def __repr__(self) -> str:
        return (f"Decision(state={self.state!r}, reason={self.reason!r}, cache_key={self.cache_key!r}, "
                f"outputs={self.outputs!r})")

    @property
    def cached(self) -> bool:
        return self.state == "cached"


def _error_text(exc: BuildsysError) -> str:
    text = exc.render() if exc.location else exc.message
    if exc.hint and not exc.location:
        text += f"\n  hint: {exc.hint}"
    return text


class Engine:
    """Runs one build of a project's graph with its resolved steps (`buildsys.compiled`). Create,
    call `run()`, read the BuildResult."""

    def __init__(
        self,
        project: Project,
        graph: StepGraph,
        steps: Mapping[str, StepDef],
        *,
        jobs: int | None = None,
        use_cache: bool = True,
        keep_going: bool = False,
        reporter: Reporter | None = None,
        env: Mapping[str, str] | None = None,
        dry_run: bool = False,
        shared: SharedCache | None = None,
        previous: Previous | None = None,
    ) -> None:
        self.project = project
        self.shared = shared  # a cache shared between machines (buildsys.sharedcache), or None
        self.graph = graph
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        # steps run `jobs` at a time; with a shared cache more threads wait on its answers meanwhile
        self._slots = threading.BoundedSemaphore(self.jobs)
        self.use_cache = use_cache
        self.keep_going = keep_going
        self.reporter = reporter or NullReporter()
        self.env = dict(os.environ if env is None else env)
        self.dry_run = dry_run
        self.cache = Cache(project.root)
        self.files = FileSet(project.root)
        self.results: dict[str, NodeResult] = {}
        self.variables = {v.name: v.value for v in project.variables}
        self.stepdefs = {key: steps[node.spec.name] for key, node in graph.nodes.items()}  # by node key
        self._decided: dict[str, Decision] = {}
        self.dependencies = Dependencies()
        self._unstored: set[str] = set()
        self._recorded: dict[str, str] | None = None  # stored outputs (JSON) by recorded key (`previous`)
        self._prefetch: Prefetch | None = None  # a helper hashing inputs ahead (cold builds)
        self.scope = BuildScope()  # what this build's steps and hooks share (ctx.build), for this build only
        self._blocks: BlockResolver | None = None  # blocks from the environment (`_scopes`), made once
        self._logs: frozenset[str] | None = None  # log files left by earlier builds (`_earlier_logs`)
        self._logs_lock = threading.Lock()
        # Only for a build of this process's environment: the manifest checked os.environ.
        # Not with a shared cache either: a cached step's result may still have to be shared.
        self.previous = previous if use_cache and not dry_run and env is None and shared is None else None
        if self.previous is not None:
            self.cache.sparse = True  # most steps reuse their recorded key: no file rows needed
            self.dependencies.env.update({name: self.env.get(name) for name in self.previous.env})

    # --- execution ------------------------------------------------------------------------------
    def run(self) -> BuildResult:
        """Run the graph. Cache decisions for plain steps are made right here, in topological
        order, without a thread hop; only steps that must run (or whose cache check may be slow:
        fingerprints, existence checks) go to the thread pool."""
        order = self.graph.order()
        stop = False
        # What exists now (the modules, the compiled build: tens of thousands of objects that
        # outlive the build) is left out of the collections the build's own objects cause;
        # given back to them when the build ends.
        gc.freeze()
        try:
            left = self._reuse_unchanged(order)
            nodes = self.graph.nodes
            results = self.results
            waiting = {k: sum(1 for d in nodes[k].deps if d not in results) for k in left}
            children: dict[str, list[str]] = {k: [] for k in left}
            for k in left:
                for d in nodes[k].deps:
                    if d not in results:
                        children[d].append(k)
            position = {k: i for i, k in enumerate(left)}
            ready = [k for k in left if waiting[k] == 0]
            self._start_prefetch(order)
            threads = self.jobs + (SHARED_LOOKUPS if self.shared is not None else 0)
            pool = _Pool(self._run_node, threads)
            try:
                while ready or pool.running:
                    while ready and not stop:
                        ready.sort(key=position.__getitem__, reverse=True)
                        key = ready.pop()
                        res = self._decide_inline(key)
                        if res is None:
                            pool.start(key)
                        else:
                            stop = self._finish(key, res, waiting, children, ready) or stop
                    if not pool.running:
                        break
                    key, res = pool.finished()
                    stop = self._finish(key, res, waiting, children, ready) or stop
            finally:
                pool.close()  # (after an interrupt too: the steps running are waited for)
            for key in order:
                if key not in self.results:
                    label = self.graph.nodes[key].label
                    reason = "the build stopped after a failure"
                    self.results[key] = NodeResult(key, label, "skipped", reason=reason)
                    self.reporter.event(Event("skipped", label, reason=reason))
        finally:
            gc.unfreeze()
            if self._prefetch is not None:
                self._prefetch.close()
            self.cache.close()
        self._note_dependencies()
        return BuildResult(self.graph, self.results, self.dependencies)

    def _start_prefetch(self, order: Sequence[str]) -> None:
        """A forked helper listing and hashing the steps' inputs ahead (buildsys.cache_prefetch),
        when this build computes every key (no previous manifest) of enough steps."""
        if self.previous is not None or not self.use_cache or self.dry_run or self.shared is not None:
            return
        from buildsys.cache_prefetch import Prefetch

        # The order this build decides its steps in when each one runs: those ready at the start
        # at once, then each step once the steps it needs are done, so by depth (the longest
        # chain of steps it waits for), in graph order within a depth.
        nodes = self.graph.nodes
        depth: dict[str, int] = {}
        for k in order:
            depth[k] = 1 + max([depth[d] for d in nodes[k].deps], default=-1)
        likely = sorted(order, key=depth.__getitem__)
        ready = sum(1 for k in order if not depth[k])
        self._prefetch = Prefetch.start(self.cache, self.files, self.project.root,
                                        [(k, nodes[k].spec.input_globs, nodes[k].deps) for k in likely], ready)

    def _note_dependencies(self) -> None:
        from buildsys import registry

        deps = self.dependencies
        deps.directories |= self.files.scanned
        # The ignore files decide what every glob matches: editing, adding or removing one moves
        # no input file and no listed directory (they are at the root), yet changes the keys.
        # Recorded as files (a missing one as missing) that no step owns, so the no-op check
        # falls through and the next build decides every step again.
        deps.loose.update(os.path.join(self.project.root, name) for name in IGNORE_FILES)
        deps.stats = self.cache.observed if self.previous is None else Seen(self.cache.observed, self.previous)
        deps.previous = self.previous
        if self.files.opaque or not self.use_cache:
            deps.provable = False
        for sd in {id(sd): sd for sd in self.stepdefs.values()}.values():  # each step once, not once per node
            if sd.fingerprint_hook is not None or sd.check_hook is not None or not sd.cacheable:
                deps.provable = False
            source = registry.source_file(sd)
            if source:
                deps.loose.add(source)
        deps.files |= deps.loose
        for res in self.results.values():
            if res.status not in ("ran", "cached") or (res.status == "ran" and res.key in self._unstored):
                deps.provable = False

    def _finish(
        self,
        key: str,
        res: NodeResult,
        waiting: dict[str, int],
        children: Mapping[str, list[str]],
        ready: list[str],
    ) -> bool:
        """Record a node's result and release its children; True when the build must stop."""
        self.results[key] = res
        if res.status == "failed":
            self._skip_dependents(key)
            return not self.keep_going
        for child in children[key]:
            waiting[child] -= 1
            if waiting[child] == 0 and child not in self.results:
                ready.append(child)
        return False

    def _skip_dependents(self, key: str) -> None:
        failed = self.graph.nodes[key].label
        for dep in self.graph.dependents(key):
            if dep not in self.results:
                label = self.graph.nodes[dep].label
                reason = f"upstream step {failed} failed"
                self.results[dep] = NodeResult(dep, label, "skipped", reason=reason)
                self.reporter.event(Event("skipped", label, reason=reason))

    def _decide_inline(self, key: str) -> NodeResult | None:
        """A cache hit decided in the calling thread, or None when the node goes to the pool."""
        node, stepdef = self.graph.nodes[key], self.stepdefs[key]
        if stepdef.fingerprint_hook is not None or stepdef.check_hook is not None or self._shares(stepdef):
            return None
        unchanged = self._unchanged_since_previous(node)
        if unchanged is not None:
            return unchanged
        started = time.monotonic()
        try:
            decision = self.decide(key)
        except BuildsysError as exc:
            return self._failed(node, _error_text(exc), started)
        if decision.cached:
            return self._reuse(node, decision)
        self._decided[key] = decision
        return None

    def _reuse_unchanged(self, order: Sequence[str]) -> list[str]:
        """Settle first, in graph order, every step the last build's manifest proves unchanged
        (`_unchanged_since_previous`): after a change most steps are, and none of them needs the
        run's queue, threads or a key. The rest (the steps whose own inputs moved, and those
        after them) are returned in graph order for the run to decide, each again by the same
        rule when its turn comes (an upstream step decided again may keep its recorded key)."""
        if self.previous is None:
            return list(order)
        left = []
        said: list[Event] = []  # their events, reported together (one write, not one per step)
        for key in order:
            stepdef = self.stepdefs[key]
            res = None
            if stepdef.fingerprint_hook is None and stepdef.check_hook is None and not self._shares(stepdef):
                res = self._unchanged_since_previous(self.graph.nodes[key], said)
            if res is None:
                left.append(key)
            else:
                self.results[key] = res
        report_all(self.reporter, said)
        return left

    def _unchanged_since_previous(self, node: StepNode, said: list[Event] | None = None) -> NodeResult | None:
        """The node's result when the last build's manifest proves its key is the one recorded
        then: none of its own files or listed directories moved, nothing else the build read
        moved (`noop.previous_build`), and every step it reads from kept its recorded key. Its
        key would be computed from exactly the same values, so it is not computed again: the
        decision is the one `decide` would give ("unchanged"), for a fraction of the work.
        `said`: where its event goes to be reported later (else it is reported now)."""
        prev = self.previous
        if prev is None:
            return None
        label = node.label
        recorded = prev.keys.get(label)
        if recorded is None or label in prev.changed:
            return None
        nodes = self.graph.nodes
        upstream = [*node.deps, *(k for _, k in node.scope), *((node.cwd_from,) if node.cwd_from else ())]
        for d in upstream:
            res = self.results.get(d)
            if res is None or res.status != "cached" or res.cache_key != prev.keys.get(nodes[d].label):
                return None
        if self._recorded is None:  # the results of every recorded key, in one query
            self._recorded = self.cache.results(prev.keys.values())
        stored = self._recorded.get(recorded)
        if stored is None:
            return None
        outputs: dict[str, Any] = json.loads(stored)
        # Its files, directories and their stat data: the manifest's (noop.write_manifest's `kept`).
        self.dependencies.kept.append(label)
        event = Event("cached", label, reason="unchanged")
        if said is None:
            self.reporter.event(event)
        else:
            said.append(event)
        return NodeResult(node.key, label, "cached", "unchanged", outputs, cache_key=recorded)

    def _run_node(self, key: str) -> NodeResult:
        try:
            return self._run_here(key)
        finally:
            if self._prefetch is not None:  # its writes done: the helper may check the steps after it
                self._prefetch.finished(key)

    def _run_here(self, key: str) -> NodeResult:
        node, stepdef = self.graph.nodes[key], self.stepdefs[key]
        started = time.monotonic()
        try:
            decision = self._decided.pop(key, None) or self.decide(key)
            if decision.cached:
                return self._reuse(node, decision)
            with self._slots:
                return self._perform(node, stepdef, decision, started)
        except BuildsysError as exc:
            return self._failed(node, _error_text(exc), started)
        except Exception as exc:  # a bug in a step: report it as that step's failure
            return self._failed(node, f"{type(exc).__name__}: {exc}", started)

    def _failed(self, node: StepNode, text: str, started: float) -> NodeResult:
        duration = time.monotonic() - started
        self.reporter.event(Event("failed", node.label, text=text, duration=duration))
        return NodeResult(node.key, node.label, "failed", error=text, duration=duration)

    def key_for(self, node: StepNode, stepdef: StepDef) -> _Keyed:
        """Render the node's inputs and compute its cache key (nothing runs)."""
        key_inputs, inputs, ctx = self._rendered(node, stepdef)
        components = self._components(node, stepdef, key_inputs, inputs, ctx)
        key, text = key_and_text(components)
        return _Keyed(inputs, ctx, components, key, text)

    def files_for(self, node: StepNode, stepdef: StepDef) -> tuple[dict[str, Any], Context]:
        """What `key_for` reads of the file system, without digesting it or making the key: the
        node's inputs rendered, its globs expanded and its files hook called just as `key_for`
        does; its files and the directories listed are noted in `dependencies.nodes` as
        `key_for` notes them (buildsys.stepkeys: which steps a change can have reached)."""
        _, inputs, ctx = self._rendered(node, stepdef)
        listed: list[str] = []
        wanted = self._wanted(node, stepdef, inputs, ctx, listed)
        prefix = os.path.join(str(self.project.root), "")
        self.dependencies.nodes[node.label] = ([f if is_absolute(f) else prefix + f for f in wanted], listed)
        return inputs, ctx

    def _rendered(self, node: StepNode, stepdef: StepDef) -> tuple[Any, dict[str, Any], Context]:
        """The node's inputs rendered for its key and to run it, and its context."""
        spec = node.spec
        key_scope, full_scope = self._scopes(node)
        key_inputs = render(spec.inputs, key_scope, missing="error", location=spec.location, path=spec.path)
        inputs = render_inputs(spec.inputs, full_scope, held=stepdef.held, location=spec.location, path=spec.path)
        ctx = Context(
            root=self.project.root,
            cwd=self._cwd(node),
            env=dict(self.env),
            step_id=spec.id,
            step_name=spec.name,
            secrets=set(full_scope.secrets) | secret_values(inputs),
            phase=spec.section,
            build=self.scope,
        )
        return key_inputs, inputs, ctx

    def _wanted(self, node: StepNode, stepdef: StepDef, inputs: Mapping[str, Any], ctx: Context, listed: list[str]) -> list[str]:
        """The node's input files, sorted, each once: its globs and its files hook's answer expanded
        (`listed` receives the directories listed on the way)."""
        files = self.files.expand(list(node.spec.input_globs), self.project.root, listed)
        if stepdef.files_hook is not None:
            files += self.files.expand(stepdef.files_hook(inputs, ctx), ctx.cwd, listed)
        return sorted(set(files))

    def decide(self, key: str, *, verify: bool = True) -> Decision:
        """Would node `key` run now, and why (its upstream results must be in `self.results`).
        Nothing is run or written. `verify`: let the step confirm a cached result still exists
        (a Docker image in the engine); looking ahead without running (plan, explain) skips it."""
        node, stepdef = self.graph.nodes[key], self.stepdefs[key]
        keyed = self.key_for(node, stepdef)
        cache_key = keyed.cache_key
        if not self.use_cache:
            return Decision("run", "caching disabled (--no-cache)", cache_key, keyed=keyed)
        if not stepdef.cacheable:
            return Decision("run", "the step is never cached", cache_key, keyed=keyed)
        previous = self.cache.entry(node.label)
        hit = self.cache.result(cache_key)
        if hit is None:
            shared = self._from_shared(node, stepdef, keyed) if verify else None
            if shared is not None:
                return shared
            reason = explain_change(previous.components if previous else None, keyed.components)
            return Decision("run", reason, cache_key, keyed=keyed)
        gone = verify and stepdef.check_hook is not None and not stepdef.check_hook(hit, keyed.inputs, keyed.ctx)
        if gone and not self._shared_still(stepdef, hit, keyed):
            return Decision("run", STALE, cache_key, keyed=keyed)
        reason = "unchanged" if previous is not None and previous.key == cache_key else "restored from cache"
        return Decision("cached", reason, cache_key, hit, keyed)

    def _shares(self, stepdef: StepDef) -> bool:
        return self.shared is not None and stepdef.shared_hook is not None and stepdef.cacheable

    def _shared_still(self, stepdef: StepDef, outputs: dict[str, Any], keyed: _Keyed) -> bool:
        """With a shared cache, a result not here (an image restored from it, never pulled) stands
        while the step's shared hook confirms it where other machines get it."""
        if not self._shares(stepdef) or stepdef.shared_hook is None:
            return False
        try:
            return stepdef.shared_hook(outputs, keyed.inputs, keyed.ctx)
        except BuildsysError:
            return False

    def _from_shared(self, node: StepNode, stepdef: StepDef, keyed: _Keyed) -> Decision | None:
        """A result another runner wrote for this very key, once the step confirms that its
        artifact exists where this machine can get it; a decision to run when it does not."""
        if self.shared is None or not self._shares(stepdef) or stepdef.shared_hook is None:
            return None
        entry = self.shared.get(keyed.cache_key, node.label)
        if entry is None:
            return None
        try:
            there = stepdef.shared_hook(entry.outputs, keyed.inputs, keyed.ctx)
        except BuildsysError as exc:
            return Decision("run", f"{SHARED_STALE} (checking it failed: {exc.message})", keyed.cache_key, keyed=keyed)
        if not there:
            return Decision("run", SHARED_STALE, keyed.cache_key, keyed=keyed)
        return Decision("cached", SHARED_HIT, keyed.cache_key, entry.outputs, keyed)

    def _share(self, node: StepNode, stepdef: StepDef, key: str, outputs: Mapping[str, Any], duration: float,
               *, if_absent: bool = False) -> None:
        if self.shared is not None and self.shared.write and self._shares(stepdef):
            from buildsys.sharedcache import entry_for

            self.shared.put(entry_for(key, stepdef.name, stepdef.version, node.label, outputs, duration),
                            if_absent=if_absent)

    def foresee(self) -> dict[str, Decision]:
        """Every node's decision in graph order without running anything: a node after one that
        would run is blocked (its inputs are not known yet). Cached results become `self.results`
        so the nodes after them render with their outputs."""
        decisions: dict[str, Decision] = {}
        for key in self.graph.order():
            node = self.graph.nodes[key]
            blocked = [self.graph.nodes[d].label for d in node.deps if not decisions[d].cached]
            if blocked:
                decisions[key] = Decision("blocked", f"upstream step {blocked[0]} would run first")
                continue
            try:
                decision = decisions[key] = self.decide(key, verify=False)
            except (BuildsysError, TemplateError) as exc:
                decisions[key] = Decision("error", exc.message, error=exc)
                continue
            if decision.cached:
                outputs = decision.outputs or {}
                self.results[key] = NodeResult(key, node.label, "cached", decision.reason, outputs, cache_key=decision.cache_key)
        return decisions

    def _reuse(self, node: StepNode, decision: Decision) -> NodeResult:
        keyed, outputs = decision.keyed, decision.outputs or {}
        stepdef = self.stepdefs[node.key]
        if decision.reason == SHARED_HIT and keyed is not None:  # kept here: the next build is local
            self.cache.record(node.label, node.label, decision.cache_key, keyed.components, outputs, 0.0, stepdef.name,
                              keyed.encoded)
        elif decision.reason != "unchanged" and keyed is not None:
            self.cache.touch(node.label, node.label, decision.cache_key, keyed.components, keyed.encoded)
        if decision.reason != SHARED_HIT:  # a result built here before: share it if nobody has
            self._share(node, stepdef, decision.cache_key, outputs, 0.0, if_absent=True)
        self.reporter.event(Event("cached", node.label, reason=decision.reason))
        return NodeResult(node.key, node.label, "cached", decision.reason, outputs, cache_key=decision.cache_key)

    def _perform(self, node: StepNode, stepdef: StepDef, todo: Decision, started: float) -> NodeResult:
        keyed, reason = todo.keyed, todo.reason
        assert keyed is not None  # a decision to run carries its key
        if reason == STALE:
            self.cache.forget(todo.cache_key)
        self.reporter.event(Event("start", node.label, reason=reason))
        if self.dry_run:
            return NodeResult(node.key, node.label, "ran", reason, {}, cache_key=keyed.cache_key)
        outputs, text = self._call(node, stepdef, keyed.ctx, keyed.inputs)
        duration = time.monotonic() - started
        # Outputs that carry a secret value are never written to the cache (the step reruns).
        storable = None if _holds_secret(text, keyed.ctx.secrets) or not stepdef.cacheable else outputs
        self.cache.record(node.label, node.label, keyed.cache_key, keyed.components, storable, duration, stepdef.name,
                          keyed.encoded, outputs_text=text)
        if storable is None:
            self._unstored.add(node.key)
        else:
            self._share(node, stepdef, keyed.cache_key, storable, duration)
        self.reporter.event(Event("done", node.label, reason=reason, duration=duration))
        return NodeResult(node.key, node.label, "ran", reason, outputs, duration=duration, cache_key=keyed.cache_key)

    def _call(self, node: StepNode, stepdef: StepDef, ctx: Context, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """Run the step; its outputs as JSON gives them back (and that JSON text, which the secret
        check and the cache row use as they are: encoding them again gives the same text)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node.label)
        name = f"{safe}.log"
        path = os.path.join(self.project.root, ".buildsys", "logs", name)
        # Opened when the step first prints: a silent step costs no file (and leaves none).
        opened: list[Any] = []
        opening = threading.Lock()  # a step's output pipes are read by two threads

        def emit(line: str) -> None:
            with opening:
                if not opened:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    opened.append(open(path, "w", encoding="utf-8"))  # noqa: SIM115 - closed below
            log = opened[0]
            log.write(line + "\n")
            log.flush()
            self.reporter.event(Event("log", node.label, text=line))

        ctx.emit = emit
        try:
            outputs = stepdef(ctx, **inputs)
        finally:
            if opened:
                opened[0].close()
            elif name in self._earlier_logs():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # an earlier run's log is not this run's
        text = json.dumps(outputs, default=str)
        normalised: dict[str, Any] = json.loads(text)
        return normalised, text

    def _earlier_logs(self) -> frozenset[str]:
        """The log files earlier builds left (listed once per build: a silent step removes its
        earlier log, and most steps have none, so no failed unlink per step)."""
        logs = self._logs
        if logs is None:
            with self._logs_lock:
                logs = self._logs
                if logs is None:
                    try:
                        logs = frozenset(os.listdir(os.path.join(self.project.root, ".buildsys", "logs")))
                    except OSError:  # none yet (or not a folder: then no log was left there either)
                        logs = frozenset()
                    self._logs = logs
        return logs

    def _scopes(self, node: StepNode) -> tuple[Scope, Scope]:
        """What the node's inputs render against: for its key (upstream outputs only), and to run
        it (the environment, variables and blocks too); the outputs gathered once for both."""
        outputs: dict[str, Mapping[str, Any]] = {}
        ids: set[str] = set()
        results, nodes = self.results, self.graph.nodes
        for label, key in node.scope:
            res = results.get(key)
            if res is not None:
                outputs[label] = res.outputs
            if nodes[key].spec.id:
                ids.add(label)
        known = frozenset(ids)
        if self._blocks is None:
            self._blocks = env_blocks(self.env)
        return Scope(outputs=outputs, ids=known), Scope(
            outputs=outputs, ids=known, env=self.env, variables=self.variables, blocks=self._blocks
        )

    def _cwd(self, node: StepNode) -> Path:
        if node.cwd_from is not None:
            res = self.results.get(node.cwd_from)
            directory = res.outputs.get("directory") if res else None
            if isinstance(directory, str) and directory:
                p = Path(directory)
                return p if p.is_absolute() else self.project.root / p
        return self.project.root

    def _components(
        self,
        node: StepNode,
        stepdef: StepDef,
        key_inputs: Any,
        inputs: Mapping[str, Any],
        ctx: Context,
    ) -> dict[str, Any]:
        env_used = sorted({str(p.keypath[0]) for p in placeholders(node.spec.inputs) if p.kind == "env"})
        listed: list[str] = []
        prefetch = self._prefetch
        ahead = prefetch.take(node.key) if prefetch is not None else None
        digests: dict[str, str]
        if prefetch is not None and ahead is not None:  # the helper's expansion and digests, checked still true
            listed += ahead.listed
            self.files.scanned.update(ahead.listed)
            prefetch.apply(ahead, self.cache)
        if ahead is not None and stepdef.files_hook is None:
            # its files sorted, each once, every one digested: what the lines below would make of them
            digests, absolute = ahead.digests, ahead.fulls
        else:
            if ahead is not None:
                files = list(ahead.files)
                if stepdef.files_hook is not None:
                    files += self.files.expand(stepdef.files_hook(inputs, ctx), ctx.cwd, listed)
                wanted = sorted(set(files))
            else:
                wanted = self._wanted(node, stepdef, inputs, ctx, listed)
            if ahead is not None:
                rest = self.cache.digests([f for f in wanted if f not in ahead.digests])
                found = {f: ahead.digests[f] if f in ahead.digests else rest[f] for f in wanted}
            else:
                found = self.cache.digests(wanted)
            digests = {f: d or "(missing)" for f, d in found.items()}
            prefix = os.path.join(str(self.project.root), "")
            absolute = [f if is_absolute(f) else prefix + f for f in digests]
        self.dependencies.files.update(absolute)
        self.dependencies.nodes[node.label] = (absolute, listed)
        for name in env_used:
            self.dependencies.env[name] = self.env.get(name)
        upstream = {
            self.graph.nodes[d].label: self.results[d].cache_key for d in node.deps if d in self.results
        }
        fingerprint = stepdef.fingerprint_hook(inputs, ctx) if stepdef.fingerprint_hook else None
        return {
            "step": stepdef.name,
            "version": stepdef.version,
            "inputs": key_inputs,
            "env": {name: secret_digest(self.env.get(name, "")) for name in env_used},
            "files": digests,
            "upstream": upstream,
            "fingerprint": fingerprint,
            "cwd": os.path.relpath(ctx.cwd, self.project.root) if ctx.cwd != self.project.root else ".",
        }


class _Pool:
    """The threads that run the steps the engine's thread hands them (`start`), each result handed
    back as its step finishes (`finished`). A thread is started when more steps run at once than
    there are threads, up to `size` (a rebuild of 20 steps starts two). Plain threads and queues:
    `concurrent.futures` imports `logging`, which no build needs."""

    def __init__(self, work: Callable[[str], NodeResult], size: int) -> None:
        self._work = work
        self._size = size
        self._todo: SimpleQueue[str | None] = SimpleQueue()
        self._done: SimpleQueue[tuple[str, NodeResult | BaseException]] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.running = 0  # started and not yet handed back

    def start(self, key: str) -> None:
        self.running += 1
        if len(self._threads) < min(self._size, self.running):
            thread = threading.Thread(target=self._serve, name=f"step_{len(self._threads)}")
            thread.start()
            self._threads.append(thread)
        self._todo.put(key)

    def _serve(self) -> None:
        while (key := self._todo.get()) is not None:
            try:
                out: NodeResult | BaseException = self._work(key)
            except BaseException as exc:  # handed to the engine's thread, which raises it
                out = exc
            self._done.put((key, out))

    def finished(self) -> tuple[str, NodeResult]:
        """The next step to finish and its result (waiting for one)."""
        key, out = self._done.get()
        self.running -= 1
        if isinstance(out, BaseException):
            raise out
        return key, out

    def close(self) -> None:
        """Stop the threads once they have run every step handed to them, and wait for them."""
        for _ in self._threads:
            self._todo.put(None)
        for thread in self._threads:
            thread.join()


STALE = "the cached result no longer exists"
SHARED_LOOKUPS = 8  # threads beyond --jobs that only look results up in a shared cache (network waits)
SHARED_HIT = "restored from the shared cache"
SHARED_STALE = "the shared cache's result no longer exists"


def _holds_secret(text: str, secrets: set[str]) -> bool:
    """Whether outputs (their JSON text) carry one of the secret values."""
    return any(len(s) >= 3 and s in text for s in secrets)


def explain_change(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """Why a step must run: the first difference between its last key's components and now."""
    if not old:
        return "no previous run"
    if old.get("step") != new.get("step"):
        return f"the step changed ({old.get('step')} → {new.get('step')})"
    if old.get("version") != new.get("version"):
        return f"step version changed ({old.get('version')} → {new.get('version')})"
    reasons: list[str] = []
    old_files, new_files = old.get("files") or {}, new.get("files") or {}
    for f in sorted(set(old_files) | set(new_files)):
        if f not in old_files:
            reasons.append(f"input file {f} added")
        elif f not in new_files:
            reasons.append(f"input file {f} no longer an input")
        elif old_files[f] != new_files[f]:
            reasons.append(f"input file {f} {'removed' if new_files[f] == '(missing)' else 'changed'}")
    if old.get("inputs") != new.get("inputs"):
        changed = _changed_keys(old.get("inputs"), new.get("inputs"))
        reasons.append(f"inputs changed: {', '.join(changed)}" if changed else "inputs changed")
    for name in sorted(set(old.get("env") or {}) | set(new.get("env") or {})):
        if (old.get("env") or {}).get(name) != (new.get("env") or {}).get(name):
            reasons.append(f"environment variable {name} changed")
    for label in sorted(set(old.get("upstream") or {}) | set(new.get("upstream") or {})):
        if (old.get("upstream") or {}).get(label) != (new.get("upstream") or {}).get(label):
            reasons.append(f"upstream step {label} changed")
    if old.get("fingerprint") != new.get("fingerprint"):
        reasons.append("its fingerprint changed (e.g. the remote commit moved)")
    if old.get("cwd") != new.get("cwd"):
        reasons.append("working directory changed")
    if not reasons:
        return "no cached result for these inputs"
    return "; ".join(reasons[:3]) + (f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else "")


def _changed_keys(old: Any, new: Any) -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return []


def build(
    project: Project,
    graph: StepGraph,
    steps: Mapping[str, StepDef],
    *,
    jobs: int | None = None,
    use_cache: bool = True,
    keep_going: bool = False,
    reporter: Reporter | None = None,
    env: Mapping[str, str] | None = None,
    shared: SharedCache | None = None,
    previous: Previous | None = None,
) -> BuildResult:
    """Build a compiled project (`buildsys.compiled.compile_project`, or the cached form
    `buildsys.caches.compiled_build`: the command chooses). `previous`: the last build's manifest,
    checked (`noop.previous_build`), so steps whose inputs did not move skip computing their key."""
    engine = Engine(project, graph, steps, jobs=jobs, use_cache=use_cache, keep_going=keep_going, reporter=reporter,
                    env=env, shared=shared, previous=previous)
    return engine.run()


def cached_namespace(
    project: Project, deployment: str, *, sections: Sequence[str] = ("build", "push"), env: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], set[str]]:
    """Outputs the cache holds for the deployment's current inputs, without running anything.

    Returns (namespace, pending_ids): the namespace as `BuildResult.namespace` would give it for
    steps whose current cache key has a result, and the ids of steps whose outputs are not known
    (not built for these inputs yet) — for plan's "(known after build)".
    """
    import glob

    from buildsys.compiled import compile_project

    # the name as the -d pattern that selects it alone (`etl[prod]` is no bracket expression)
    compiled = compile_project(project, sections=sections, deployments=[glob.escape(deployment)] if deployment else [])
    engine = Engine(project, compiled.graph, compiled.steps, env=env, dry_run=True)
    try:
        decisions = engine.foresee()
    finally:
        engine.cache.close()
    nodes = compiled.graph.nodes
    pending = {nodes[k].spec.id or nodes[k].label for k, d in decisions.items() if not d.cached}
    return namespace_for(compiled.graph, engine.results, deployment), pending


def foresee(project: Project, *, env: Mapping[str, str] | None = None) -> tuple[StepGraph, dict[str, Decision]]:
    """The build and push graph with every step's decision, computed without running anything."""
    from buildsys.compiled import compile_project

    compiled = compile_project(project, sections=("build", "push"))
    engine = Engine(project, compiled.graph, compiled.steps, env=env, dry_run=True)
    try:
        return compiled.graph, engine.foresee()
    finally:
        engine.cache.close()


def explain_step(project: Project, step: str, *, env: Mapping[str, str] | None = None) -> str:
    """Would `step` (label or id) run now, and why — computed without running anything."""
    graph, decisions = foresee(project, env=env)
    target = next((k for k, n in graph.nodes.items() if step in (n.label, n.spec.id)), None)
    if target is None:
        from buildsys.suggest import did_you_mean

        labels = [n.label for n in graph.nodes.values()]
        raise BuildsysError(f"no step {step!r} in the graph", hint=did_you_mean(step, labels) or ", ".join(labels))
    decision = decisions[target]
    if decision.error is not None:
        raise decision.error
    return ("cached: " if decision.cached else "would run: ") + decision.reason
