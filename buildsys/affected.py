"""What a change affects: the steps whose cache keys and the deployments whose specs differ between
a git revision (the base) and the working tree, each with its reason.

The keys are the engine's own, evaluated on both sides without running anything (buildsys.stepkeys):
the base's files are written to a temporary directory (`revision.export_tree`) and keyed there, and
that side is kept in `.buildsys/affected/` (a commit never changes).

Deployment specs are the desired state plan computes (`desired.desired_state`), with build outputs
left unknown on both sides; a deployment is affected when its spec differs or a step of its chain is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.cache import secret_digest
from buildsys.compiled import Compiled
from buildsys.desired import DesiredResource, DesiredState
from buildsys.errors import BuildsysError
from buildsys.model import Deployment, Project
from buildsys.records import Record
from buildsys.stepkeys import Reads, StepKey, keying_env, step_keys, unsymbolised
from buildsys.templating import UNKNOWN

if TYPE_CHECKING:
    from buildsys.entrypoints import FlowInfo
    from buildsys.graph import StepNode
    from buildsys.revision import Revision
    from buildsys.step import StepDef

AFFECTED = "affected"  # .buildsys/affected/: the base side of earlier comparisons (buildsys.caches)


class AffectedStep(Record):
    __slots__ = __match_args__ = ("label", "step", "section", "deployments", "reason")
    label: str
    step: str
    section: str
    deployments: tuple[str, ...]
    reason: str

    def __init__(self, label: str, step: str, section: str, deployments: tuple[str, ...], reason: str) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "label", label)
        setattr_(self, "step", step)
        setattr_(self, "section", section)
        setattr_(self, "deployments", deployments)
        setattr_(self, "reason", reason)


class AffectedDeployment(Record):
    __slots__ = __match_args__ = ("name", "identity", "reasons", "steps", "fields")
    name: str  # the deployment's name in the project file
    identity: str  # FLOW/NAME, as the store knows it
    reasons: tuple[str, ...]
    steps: tuple[str, ...]  # labels of its affected steps
    fields: tuple[str, ...]  # spec fields that differ

    def __init__(
        self, name: str, identity: str, reasons: tuple[str, ...], steps: tuple[str, ...] = (), fields: tuple[str, ...] = ()
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "name", name)
        setattr_(self, "identity", identity)
        setattr_(self, "reasons", reasons)
        setattr_(self, "steps", steps)
        setattr_(self, "fields", fields)


class Affected(Record):
    __slots__ = __match_args__ = (
        "base", "commit", "said", "steps", "deployments", "removed", "total_steps", "total_deployments",
        "project_has_deployments", "notes", "proved",
    )
    base: str  # as given (or the merge base found)
    commit: str
    said: str  # the base for people: "main", "the merge base with origin/main"
    steps: tuple[AffectedStep, ...]
    deployments: tuple[AffectedDeployment, ...]
    removed: tuple[str, ...]  # deployments (FLOW/NAME) at the base that the working tree no longer has
    total_steps: int
    total_deployments: int
    project_has_deployments: bool
    notes: tuple[str, ...]
    proved: bool  # the base side proved from git's changed paths (not in to_dict: the answer is the same)

    def __init__(
        self, base: str, commit: str, said: str, steps: tuple[AffectedStep, ...],
        deployments: tuple[AffectedDeployment, ...], removed: tuple[str, ...] = (), total_steps: int = 0,
        total_deployments: int = 0, project_has_deployments: bool = True, notes: tuple[str, ...] = (),
        proved: bool = False,
    ) -> None:
        setattr_ = object.__setattr__
        for name, value in zip(self.__match_args__, (
            base, commit, said, steps, deployments, removed, total_steps, total_deployments, project_has_deployments,
            notes, proved,
        ), strict=True):
            setattr_(self, name, value)

    @property
    def names(self) -> list[str]:
        """The affected deployments' names, in file order: what `--affected` selects."""
        return [d.name for d in self.deployments]

    @property
    def anything(self) -> bool:
        return bool(self.steps or self.deployments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "commit": self.commit,
            "steps": [
                {"step": s.label, "uses": s.step, "section": s.section, "deployments": list(s.deployments), "reason": s.reason}
                for s in self.steps
            ],
            "deployments": [
                {"name": d.name, "identity": d.identity, "reasons": list(d.reasons), "steps": list(d.steps),
                 "fields": list(d.fields)}
                for d in self.deployments
            ],
            "removed": list(self.removed),
            "counts": {
                "steps": len(self.steps), "total_steps": self.total_steps,
                "deployments": len(self.deployments), "total_deployments": self.total_deployments,
            },
            "notes": list(self.notes),
        }


# --- the analysis -------------------------------------------------------------------------------------


def affected(
    project_file: Path, base: str | None = None, *, env: Mapping[str, str] | None = None, prove: bool = True,
    flows: dict[str, FlowInfo] | None = None, loaded: Project | None = None,
) -> Affected:
    """Steps and deployments that differ between `base` (default: the merge base of HEAD with the
    default branch) and the working tree of the project file's repository.

    `prove`: first try to prove from what git says changed that most keys and specs are the
    working tree's (`_proved`); False computes the whole base side, as `_proved` falls back to.
    `flows`: filled with what the working tree's entrypoints say (`desired.desired_state`), for a
    plan of the same working tree that follows (its affected deployments' flows are parsed once).
    `loaded`: the working tree's project as the caller loaded it (`caches.load_project`)."""
    from buildsys import caches
    from buildsys.revision import compare_working_tree, default_base, open_revision, resolve_commit

    changed = None
    quick = compare_working_tree(project_file, base or None) if prove else None
    if quick is not None:  # the same answers in fewer git processes; git diffs while the project loads
        now_rev, commit, changed = quick.revision, quick.commit, quick.changed
        repo_root = now_rev.repo_root
        base_ref, said = (base, base) if base else (commit, f"the merge base with {quick.branch}")
    else:
        now_rev = open_revision(project_file)  # first: its repository's top directory serves the others
        repo_root = now_rev.repo_root if now_rev.commit else None  # else each finds (and explains) it again
        if base:
            base_ref, said, commit = base, base, resolve_commit(project_file, base, repo_root=repo_root)
        else:
            commit, branch = default_base(project_file, repo_root=repo_root)
            base_ref, said = commit, f"the merge base with {branch}"
        if prove and repo_root is not None:
            from buildsys.revision import start_changed_paths

            changed = start_changed_paths(repo_root, commit)  # git works while the project loads
    environ = dict(os.environ if env is None else env)
    try:
        now_compiled = caches.compiled_build(project_file, sections=("build", "push"), deployments=(), loaded=loaded)
    except BaseException:
        if changed is not None:  # wait for git; the project's error is the one to say
            with contextlib.suppress(BuildsysError):
                changed()
        raise
    paths = changed() if changed is not None else None
    sides = None
    flows = {} if flows is None else flows
    if paths is not None and repo_root is not None:
        sides = _proved(project_file, now_rev, now_compiled, base_ref, commit, repo_root, environ, paths, flows)
    if sides is None:
        then = base_side(project_file, now_compiled.project.root, base_ref, commit, now_rev.file_in_repo, environ,
                         repo_root=repo_root)
        now_keys = step_keys(now_compiled, keying_env(now_compiled.project, environ)[0])
        now_state = _desired(now_compiled.project, now_rev.source(), now_rev.read, flows=flows)
    else:
        then, now_keys, now_state = sides
    steps = compare_steps(then.keys, now_keys, base_ref, then.problem)
    deployments, removed = compare_deployments(
        then.state, now_state, now_compiled, steps, base_ref, then.problem,
        entrypoints=then.entrypoints, read_now=now_rev.read, chosen=then.chosen,
    )
    return Affected(
        base=base_ref,
        said=said,
        commit=commit,
        steps=tuple(steps),
        deployments=tuple(deployments),
        removed=tuple(removed),
        total_steps=len(now_keys),
        total_deployments=len(now_compiled.project.deployments),
        project_has_deployments=bool(now_compiled.project.deployments),
        notes=(then.problem,) if then.problem else (),
        proved=sides is not None,
    )


# --- the base side proved from git's list of changed paths --------------------------------------------


def _proved(
    project_file: Path, now_rev: Revision, now: Compiled, ref: str, commit: str, repo_root: Path,
    environ: Mapping[str, str], changed: Mapping[str, str], flows: dict[str, FlowInfo],
) -> tuple[BaseSide, dict[str, StepKey], DesiredState] | None:
    """The base's side without computing most of it, or None when that cannot be proved (then the
    whole base side is computed).

    `changed`: the paths git says differ (`revision.changed_paths`). The project file is the same
    at both revisions (else None), so both sides have the same
    steps, inputs, environment and deployments. A step's key is then a function of the files
    its key reads and of the keys before it: a step none of whose reads (the files it digests,
    the directories listed and the files opened while keying it, its files hook's included) is a
    changed path, and after no such step, has the working tree's key at the base. Only the other
    steps are keyed on the base's files. A deployment's spec reads only its entrypoint's files
    and the commit: each entrypoint file that did not change is parsed once for both sides.
    `flows` is filled with the working tree's entrypoints read (those of the deployments read)."""
    from buildsys.cache import IGNORE_FILES
    from buildsys.registry import source_file
    from buildsys.revision import export_tree

    project = now.project
    top = os.path.normpath(str(repo_root))
    changes = _Changes(top, changed)
    root = os.path.normpath(str(project.root.resolve()))
    # the project file (as named, and the file a link names) and the ignore files every step's file set honours
    defining = [os.path.normpath(str(project_file.resolve())), os.path.normpath(os.path.abspath(project_file))]
    defining += [os.path.join(root, name) for name in IGNORE_FILES]
    if any(changes.hit(path) for path in defining):
        return None
    if any(_inside(source_file(sd) or "", top) for sd in now.steps.values()):
        return None  # a step whose code is in the repository: its code may differ at the base
    if _sparse(repo_root):
        return None  # files a sparse checkout leaves out are in neither `git diff` nor `git status`
    key_env, names = keying_env(project, environ)
    reads: dict[str, Reads] = {}
    touched: set[str] = set()
    nodes = now.graph.nodes

    def needed(node: StepNode) -> bool:
        """Whether the step is touched: asked in graph order (a step's upstream steps come before
        it) once its reads are known; only touched steps are digested and keyed (`step_keys`)."""
        label = node.label
        if changed and not _own_hook(now.steps[node.spec.name]):
            reads.pop(label, None)  # what a plugin's files hook read is not known (a test of existence leaves no trace)
        upstream = [*node.deps, *(k for _, k in node.scope), *((node.cwd_from,) if node.cwd_from else ())]
        if any(nodes[k].label in touched for k in upstream) or changes.touches(reads.get(label), top):
            touched.add(label)
        return label in touched

    now_keys = step_keys(now, key_env, reads=reads, needed=needed)
    # the deployments whose spec can differ (an entrypoint file changed, a version that follows the
    # commit) or that a step may affect (for their identity): only these are read on either side
    maybe: set[str] = set()  # steps compare_steps may find affected: touched, unknown, or after such a step
    for label, k in now_keys.items():
        if label in touched or k.unknown or any(dep in maybe for dep in k.deps):
            maybe.add(label)
    steps_of = {d for label in maybe for d in now_keys[label].deployments}
    chosen = {d.name for d in project.deployments
              if d.name in steps_of or _follows_commit(d) or _entrypoint_moved(d.entrypoint, root, changes)}
    # and those sharing a name with one of them: two deployments may not share an identity
    chosen |= {d.name for d in project.deployments if d.name in chosen}
    now_state = _desired(project, now_rev.source(), now_rev.read, flows=flows, only=chosen)
    moved = {ep for ep in flows if _entrypoint_moved(ep, root, changes)}
    source = {"commit": commit, "ref": ref, "file": now_rev.file_in_repo, "dirty": False}
    unchanged = {ep: info for ep, info in flows.items() if ep not in moved}
    env_digests = {n: secret_digest(environ.get(n, "")) for n in names}
    if not touched and not moved:
        then_state = _desired(project, source, now_rev.read, flows=unchanged, only=chosen)
        side = BaseSide(now_keys, then_state, "", _SameDigests(now_rev.read, {}), env_digests, frozenset(chosen))
        return side, now_keys, now_state
    # a touched step whose changed reads are only files it digests, changed in content (and not
    # read by its files hook to choose its files): its base key is its working-tree key with those
    # files' base digests (and the base keys of the steps before it), so only those files of the
    # base are written; otherwise every file of the base is written and the touched steps keyed there
    plan = _edits(now_keys, reads, touched, changes, changed, top, root)
    wanted: list[str] | None = None
    if plan is not None:
        wanted = sorted({os.path.relpath(f, top) for files in plan.values() for f in files}
                        | _entrypoint_files_at_base(moved, root, top, changes, changed))
    with _scratch(project.root) as tmp:
        _, base_file = export_tree(project_file, commit, tmp, repo_root=repo_root, paths=wanted)
        then_keys = now_keys
        if touched and plan is not None:
            edited = _edited_keys(now_keys, plan, tmp / "tree", top, root)
            if edited is None:
                return None
            then_keys = edited
        elif touched:
            at_base = Compiled(project.with_root(base_file.resolve().parent), now.graph, now.steps)
            then_keys = step_keys(at_base, key_env, only=touched, given=now_keys)
        read = _reader(base_file)
        try:
            then_state = _desired(project, source, read, flows=unchanged, only=chosen)
        except BuildsysError:
            return None  # the base cannot be read (two deployments' identities clash there): say it as before
        moved_files: dict[str, str | None] = {path: None for path in _entrypoint_files(moved)}
        for path in moved_files:
            try:
                moved_files[path] = _digest(read(path))
            except BuildsysError:
                moved_files[path] = None
        side = BaseSide(then_keys, then_state, "", _SameDigests(now_rev.read, moved_files), env_digests,
                        frozenset(chosen))
    return side, now_keys, now_state


@contextlib.contextmanager
def _scratch(root: Path) -> Iterator[Path]:
    """A new empty folder for some of the base's files, removed afterwards: in the project's
    `.buildsys/affected/` (no `tempfile` to import on `plan --affected`'s path), else, when that
    cannot be made, in the system's temporary directory."""
    import shutil

    from buildsys import caches

    path = caches.directory(root) / AFFECTED / f"base-{os.getpid()}-{os.urandom(6).hex()}"
    try:
        path.mkdir(mode=0o700, parents=True)
    except OSError:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="buildsys-affected-") as tmp:
            yield Path(tmp)
        return
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _edits(
    now_keys: Mapping[str, StepKey], reads: Mapping[str, Reads], touched: Collection[str], changes: _Changes,
    kinds: Mapping[str, str], top: str, root: str,
) -> dict[str, set[str]] | None:
    """For each touched step (graph order), the changed files whose base digests its base key
    needs; None when some touched step's base key cannot be had that way: a changed path it
    lists or reads is not a file modified in place that its key digests (a file added, deleted
    or in a new folder changes what a listing gives), its files hook read a changed file (its
    choice of files may differ), or its key is not known before a build."""
    from buildsys.revision import MODIFIED

    out: dict[str, set[str]] = {}
    for label in now_keys:
        if label not in touched:
            continue
        got = reads.get(label)
        if got is None or now_keys[label].unknown or any(not _inside(f, top) for f in got.files):
            return None
        files: set[str] = set()
        for path in changes.hits(got, top):
            if kinds.get(os.path.relpath(path, top).replace(os.sep, "/")) != MODIFIED or path in got.hooked:
                return None
            if path in got.targets:
                return None  # digested through a link too: that entry's digest moves with it
            if any(f.startswith(path + os.sep) for f in (*got.files, *got.opened)):
                return None  # a path holding what it reads (a submodule): its files are not git's changed paths
            if path in got.files and not os.path.islink(path):
                files.add(path)
            elif path in got.opened or path in got.files:
                return None  # read, but not as a digested file (or through a link)
            # else: in a listed folder, never read: a content change changes no listing
        if any(os.path.relpath(f, root) not in (now_keys[label].components.get("files") or {}) for f in files):
            return None
        out[label] = files
    return out


def _edited_keys(
    now_keys: Mapping[str, StepKey], plan: Mapping[str, set[str]], tree: Path, top: str, root: str
) -> dict[str, StepKey] | None:
    """The base's keys: each touched step's working-tree key components with its changed files'
    digests at the base (read from `tree`, where those files were written) and the base's keys
    of the steps before it in place of theirs (their keys also stand in its inputs' output
    symbols). None when a working-tree key does not come out of its own components."""
    from buildsys.cache import file_digests, key_and_text

    out = dict(now_keys)
    moved: dict[str, str] = {}  # a working-tree key -> the base's key of the same step
    for label, files in plan.items():  # graph order
        k = now_keys[label]
        key, text = key_and_text(k.components)
        if key != k.key:
            return None
        components: dict[str, Any] = json.loads(text)
        rels = [os.path.relpath(f, root) for f in files]
        fulls = [str(tree / os.path.relpath(f, top)) for f in files]
        digests, _ = file_digests(rels, fulls, {}, {})
        components["files"].update({rel: d or "(missing)" for rel, d in digests.items()})
        text = json.dumps(components, sort_keys=True, default=str)
        for old, new in moved.items():
            text = text.replace(old, new)
        components = json.loads(text)
        key = key_and_text(components)[0]
        if key != k.key:
            moved[k.key] = key
        out[label] = StepKey(k.label, key, components, k.deps, k.deployments, k.section, k.step)
    return out


def _entrypoint_files_at_base(
    entrypoints: Collection[str], root: str, top: str, changes: _Changes, kinds: Mapping[str, str]
) -> set[str]:
    """The files the base's specs of these entrypoints may read (relative to the repository):
    each candidate file that is at the base (changed, but not added; or unchanged and here)."""
    from buildsys.entrypoints import parse_entrypoint

    out: set[str] = set()
    for ep in entrypoints:
        try:
            candidates = parse_entrypoint(ep).candidates
        except ValueError:
            continue
        for c in candidates:
            path = os.path.normpath(os.path.join(root, c))
            rel = os.path.relpath(path, top).replace(os.sep, "/")
            if not _inside(path, top):
                continue
            if changes.hit(path):
                if kinds.get(rel) in ("M", "D", "T"):
                    out.add(rel)
            elif os.path.isfile(path):
                out.add(rel)
    return out


def _sparse(repo_root: Path) -> bool:
    """The checkout may be sparse: its git directory holds `info/sparse-checkout`."""
    git = repo_root / ".git"
    try:
        if git.is_file():  # a linked worktree or a submodule: "gitdir: <path>"
            text = git.read_text(errors="replace").strip()
            git = (repo_root / text.removeprefix("gitdir:").strip()).resolve()
        return (git / "info" / "sparse-checkout").exists()
    except OSError:
        return True


def _follows_commit(d: Deployment) -> bool:
    """A deployment whose version is the commit's (`version_type: vcs:*` without `version:`)."""
    return d.version is None and str(d.version_type or "").startswith("vcs:")


class _Changes:
    """The paths git says changed (absolute, normalised; untracked folders as folders), and the
    question whether a path one side reads may be one of them."""

    def __init__(self, top: str, changed: Collection[str]) -> None:
        self.paths: set[str] = set()
        self.folders: set[str] = set()  # untracked or ignored folders: everything under them is new
        self.above: set[str] = set()  # every folder that holds a changed path
        self._under: dict[str, str | None] = {}  # `under` of each folder asked about (the reads share a few)
        for rel in changed:
            path = os.path.normpath(os.path.join(top, rel))
            (self.folders if rel.endswith("/") else self.paths).add(path)
            parent = os.path.dirname(path)
            while parent.startswith(top) and parent not in self.above:
                self.above.add(parent)
                parent = os.path.dirname(parent)

    def hit(self, path: str) -> bool:
        """`path` (a file or a folder) changed, holds a changed path, or is in a new folder or
        under a changed path (a submodule git names as one path)."""
        if path in self.above:
            return True
        return self.under(path) is not None

    def under(self, path: str) -> str | None:
        """The changed path or new folder that is `path` or holds it, if any."""
        if path in self.paths or path in self.folders:
            return path
        up = os.path.dirname(path)
        if up == path:
            return None
        if up not in self._under:
            self._under[up] = self.under(up)
        return self._under[up]

    def hits(self, reads: Reads, top: str) -> set[str]:
        """The changed paths (and new folders) that what keying a step read may depend on: each
        read path that changed or lies in a new folder, and each changed path in a folder read."""
        # buildsys's and git's own state is never an input (`_kept_out`): asked of the few read
        # paths that would count, not of every one (a step reads hundreds)
        read = {p for p in (*reads.files, *reads.listed, *reads.opened) if _inside(p, top)}
        out: set[str] = set()
        for path in (*self.paths, *self.folders):
            parent = path
            while _inside(parent, top):
                if parent in read and not _kept_out(parent, top):
                    out.add(path)
                    break
                parent = os.path.dirname(parent)
        for p in read:  # a read path under a changed one: in a new folder, or in a submodule that moved
            changed = self.under(p)
            if changed is not None and not _kept_out(p, top):
                out.add(changed)
        return out

    def touches(self, reads: Reads | None, top: str) -> bool:
        """Whether what keying a step read may differ at the base: a read changed path, a listed
        folder that holds one (a file added or deleted there), or a file its key digests outside
        the repository (the base's side resolves it from the base's files, as before)."""
        if reads is None:
            return True
        if any(not _inside(f, top) for f in reads.files):
            return True
        return bool(self.hits(reads, top))


def _own_hook(stepdef: StepDef) -> bool:
    """Whether the step has no files hook or buildsys's own (its modules, the built-in steps among
    them as `buildsys.steps.*`): those read only through what the audit events show (opening,
    listing). Another hook may choose its files by testing existence, which no event shows: such a
    step is keyed on the base's files whenever anything changed."""
    hook = stepdef.files_hook
    if hook is None:
        return True
    module = getattr(hook, "__module__", None) or ""
    return module.startswith("buildsys.")


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top + os.sep)


def _kept_out(path: str, top: str) -> bool:
    """buildsys's own state and git's: never a step's input (buildsys.cache.ALWAYS_IGNORED)."""
    from buildsys.cache import ALWAYS_IGNORED

    return any(part in ALWAYS_IGNORED for part in os.path.relpath(path, top).split(os.sep))


def _entrypoint_moved(entrypoint: str | None, root: str, changes: _Changes) -> bool:
    from buildsys.entrypoints import parse_entrypoint

    if not entrypoint:
        return False  # the working tree's spec says so, as the base's would
    try:
        files = parse_entrypoint(entrypoint).candidates
    except ValueError:
        return True
    return any(changes.hit(os.path.normpath(os.path.join(root, f))) for f in files)


def _entrypoint_files(entrypoints: Collection[str]) -> list[str]:
    """The `.py` files of these entrypoints, as `_entrypoint_digests` names them."""
    return sorted({p for ep in entrypoints if (p := ep.rsplit(":", 1)[0]).endswith(".py")})


class _SameDigests(Mapping[str, "str | None"]):
    """The base's entrypoint digests when only `moved` files can differ: every other file's is the
    working tree's, read only when a reason asks for it."""

    def __init__(self, read: Any, moved: Mapping[str, str | None]) -> None:
        self.read = read
        self.moved = dict(moved)

    def __getitem__(self, path: str) -> str | None:
        if path in self.moved:
            return self.moved[path]
        try:
            return _digest(self.read(path))
        except BuildsysError:
            return None

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and path.endswith(".py")

    def __iter__(self) -> Iterator[str]:
        return iter(self.moved)

    def __len__(self) -> int:
        return len(self.moved)


class BaseSide:
    """What the base contributes: its step keys and desired state (None, with `problem` saying why,
    when the project cannot be read there), the digests of its entrypoint files, the digests
    of the environment values its keys were computed with, and (when only some deployments'
    specs were computed) which."""

    def __init__(
        self, keys: dict[str, StepKey] | None, state: DesiredState | None, problem: str,
        entrypoints: Mapping[str, str | None], env: dict[str, str], chosen: frozenset[str] | None = None,
    ) -> None:
        self.keys = keys
        self.state = state
        self.problem = problem
        self.entrypoints = entrypoints
        self.env = env
        self.chosen = chosen  # the deployments both states hold (None: all)


def base_side(
    project_file: Path, root: Path, ref: str, commit: str, file_in_repo: str | None, environ: Mapping[str, str],
    *, repo_root: Path | None = None,
) -> BaseSide:
    """The base's side, from `.buildsys/affected/` when this code computed it for this commit, this
    project file and the same environment values before (a commit never changes), else computed
    from the base's files written to a temporary directory."""
    import tempfile

    from buildsys import caches
    from buildsys.revision import export_tree

    record = caches.directory(root) / AFFECTED / hashlib.sha256(
        "\0".join([caches.code_key(), commit, ref, str(project_file.resolve())]).encode("utf-8", "surrogatepass")
    ).hexdigest()[:24]
    hit = caches.read_record(record)
    if isinstance(hit, BaseSide) and all(secret_digest(environ.get(n, "")) == d for n, d in hit.env.items()):
        return hit
    with tempfile.TemporaryDirectory(prefix="buildsys-affected-") as tmp:
        _, base_file = export_tree(project_file, commit, Path(tmp), repo_root=repo_root)
        source = {"commit": commit, "ref": ref, "file": file_in_repo, "dirty": False}
        loaded, problem = _base_side(base_file, root, ref, source)
        side = BaseSide(None, None, problem, {}, {})
        if loaded is not None:
            compiled, state = loaded
            env, names = keying_env(compiled.project, environ)
            side = BaseSide(
                step_keys(compiled, env), state, "", _entrypoint_digests(compiled.project, base_file),
                {n: secret_digest(environ.get(n, "")) for n in names},
            )
    caches.write_record(record, side, max_age=7 * 86400)
    return side


def _entrypoint_digests(project: Project, base_file: Path) -> dict[str, str | None]:
    read = _reader(base_file)
    out: dict[str, str | None] = {}
    for d in project.deployments:
        path = (d.entrypoint or "").rsplit(":", 1)[0]
        if path.endswith(".py") and path not in out:
            try:
                out[path] = _digest(read(path))
            except BuildsysError:  # not a regular file: the desired state says so
                out[path] = None
    return out


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _base_side(
    base_file: Path, root: Path, ref: str, source: Mapping[str, Any]
) -> tuple[tuple[Compiled, DesiredState] | None, str]:
    """The base's compiled build (rooted in the exported tree, where its files are) and desired
    state (rooted where the working tree's is: the default pull step names the project directory),
    or None and why there is none (then everything in the working tree counts as affected)."""

    from buildsys.compiled import compile_project
    from buildsys.project import parse_project, read_source

    if not base_file.is_file():
        return None, f"the project file does not exist at {ref}"
    tree = base_file.resolve().parent
    try:
        _, text = read_source(base_file)
        project = parse_project(text, file=str(base_file), root=root, file_exists=lambda rel: (tree / rel).is_file())
        compiled = compile_project(project.with_root(tree), sections=("build", "push"))
        state = _desired(project, source, _reader(base_file))
    except BuildsysError as exc:
        return None, f"the project at {ref} cannot be loaded ({exc.message}); everything counts as affected"
    return (compiled, state), ""


def _reader(project_file: Path) -> Any:
    from buildsys.revision import Revision

    return Revision(file=project_file, root=project_file.resolve().parent, text=None).read


def _desired(
    project: Project, source: Mapping[str, Any], read: Any, *, flows: dict[str, FlowInfo] | None = None,
    only: Collection[str] | None = None,
) -> DesiredState:
    """Desired state with every build output unknown and deploy-time values as written: the
    same process and store resolve them on both sides, so they differ only where the text does.
    `flows`: entrypoints already read (`desired.desired_state`); `only`: just these deployments."""
    from buildsys.desired import desired_state

    return desired_state(project, owner="", source=source, read=read, flows=flows, only=only)


def compare_steps(
    then: Mapping[str, StepKey] | None, now: Mapping[str, StepKey], base: str, problem: str = ""
) -> list[AffectedStep]:
    """The working tree's steps a build after a build of `base` would run again: a key the base
    never had (the cache is content-addressed: a renamed step with the same key is a hit), a key
    that cannot be known before a build, or a step after an affected one."""
    from buildsys.engine import explain_change

    known = {k.key for k in (then or {}).values() if not k.unknown}
    out: list[AffectedStep] = []
    hit: set[str] = set()
    for label, k in now.items():  # graph order: upstream steps come first
        reason = ""
        if then is None:
            reason = problem or f"not at {base}"
        elif k.unknown:
            reason = k.unknown
        elif k.key not in known:
            before = then.get(label)
            if before is not None and not before.unknown:
                reason = explain_change(unsymbolised(before.components), unsymbolised(k.components))
            else:
                reason = f"new step (not at {base})"
            if before is not None and before.unknown:
                reason = before.unknown
        else:
            after = next((d for d in k.deps if d in hit), None)
            if after is not None:
                reason = f"upstream step {after} is affected"
        if reason:
            hit.add(label)
            out.append(AffectedStep(label, k.step, k.section, k.deployments, reason))
    return out


# --- deployments ----------------------------------------------------------------------------------


DESCEND = ("parameters", "job_variables")  # fields whose differing keys are named (parameters.size)
INFO_FIELDS = ("flow_name", "description", "version", "parameter_schema")  # read from the entrypoint file


def compare_deployments(
    then: DesiredState | None,
    now: DesiredState,
    compiled: Compiled,
    steps: Sequence[AffectedStep],
    base: str,
    problem: str = "",
    *,
    entrypoints: Mapping[str, str | None] | None = None,
    read_now: Any = None,
    chosen: Collection[str] | None = None,
) -> tuple[list[AffectedDeployment], list[str]]:
    """Affected deployments in file order, and the identities the base had that are gone.
    `chosen`: both states hold only these deployments (the others are the same on both sides and
    no step of theirs is affected)."""
    before = {r.name: r for r in (then.resources if then else ()) if r.kind == "deployment"}
    current = {r.name: r for r in now.resources if r.kind == "deployment"}
    by_step: dict[str, list[AffectedStep]] = {}
    for s in steps:
        for name in s.deployments:
            by_step.setdefault(name, []).append(s)
    ordered = [r for r in now.resources if r.kind == "deployment"]  # desired_state keeps file order
    out: list[AffectedDeployment] = []
    read = compiled.project.deployments if chosen is None else [d for d in compiled.project.deployments if d.name in chosen]
    for d, resource in zip(read, ordered, strict=True):
        ident = resource.name
        mine = by_step.get(d.name, [])
        reasons = [f"step {s.label}: {s.reason}" for s in mine]
        fields: list[str] = []
        want, had = resource, before.get(ident)
        if then is None:
            reasons.insert(0, problem or f"not at {base}")
        elif had is None:
            reasons.insert(0, f"new deployment (not at {base})")
        else:
            fields = spec_changes(had, want)
            if fields:
                reasons.append(_field_reason(d.entrypoint, fields, entrypoints, read_now))
        if reasons:
            out.append(AffectedDeployment(d.name, ident, tuple(reasons), tuple(s.label for s in mine), tuple(fields)))
    removed = sorted(set(before) - set(current))
    return out, removed


def spec_changes(old: DesiredResource, new: DesiredResource) -> list[str]:
    """The managed fields that differ (parameters and job variables by key: `parameters.shard`)."""
    out: list[str] = []
    for key in [k for k in new.spec if k in new.managed] + sorted(old.managed - new.managed):
        a, b = old.spec.get(key) if key in old.managed else None, new.spec.get(key) if key in new.managed else None
        if _text(a) == _text(b):
            continue
        if key in DESCEND and isinstance(a, Mapping) and isinstance(b, Mapping):
            inner = [f"{key}.{k}" for k in [*b, *(k for k in a if k not in b)] if _text(a.get(k)) != _text(b.get(k))]
            out.extend(inner or [key])
        else:
            out.append(key)
    return out


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=lambda v: str(UNKNOWN) if v is UNKNOWN else str(v))


def _field_reason(
    entrypoint: str | None, fields: Sequence[str], before: Mapping[str, str | None] | None, read_now: Any
) -> str:
    """`fields changed: tags, parameters.shard`, naming the entrypoint file when it changed and a
    field read from it differs."""
    listed = ", ".join(fields)
    path = (entrypoint or "").rsplit(":", 1)[0]
    if before and path in before and read_now is not None and any(f in INFO_FIELDS for f in fields):
        try:
            changed = before[path] != _digest(read_now(path))
        except BuildsysError:
            changed = False
        if changed:
            return f"entrypoint file {path} changed: {listed}"
    return f"fields changed: {listed}"
