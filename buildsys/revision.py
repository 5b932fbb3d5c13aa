"""Where desired state comes from: the working tree or any git revision, read without a checkout.

Gives the project file's text, a reader for other files at the same revision (entrypoints), the
commit, whether the working tree is dirty, and the repository facts the project identity needs.

Everything is asked of `git` itself, a few plumbing commands per question (`rev-parse`, `status
--porcelain=v2`, `config`, `ls-tree -r`, one `cat-file --batch` for a revision's files): no library
to import and no extra `git` processes (`plan` and `--affected` run these on every call, so their
start-up is on every CI job's path).
"""

from __future__ import annotations

import os
import posixpath
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from buildsys.errors import BuildsysError


class RevisionError(BuildsysError):
    """A git revision or a file in it cannot be read."""


class RepositoryRefused(RevisionError):
    """git will not read the repository (a checkout owned by another user: `safe.directory`)."""


@dataclass(frozen=True)
class Entry:
    """A file of a revision's tree, as `git ls-tree -r` lists it."""

    mode: int
    type: str  # blob, commit (a submodule)
    oid: str


@dataclass(frozen=True)
class Revision:
    """The project file and its surroundings at one revision (the working tree when ref is None)."""

    file: Path  # the project file on disk (also for --ref: paths stay relative to it)
    root: Path  # the project root: the project file's directory
    text: str | None  # the project file's content at `ref` (None = read from disk)
    ref: str | None = None
    commit: str | None = None
    dirty: bool = False
    repo_root: Path | None = None
    remote_url: str | None = None  # credentials stripped
    file_in_repo: str | None = None  # posix path of the project file inside the repository
    _tree: dict[str, Entry] | None = field(default=None, repr=False, compare=False)  # --ref: path in repo → entry
    _objects: Any = field(default=None, repr=False, compare=False)  # --ref: the `git cat-file --batch` reader

    def close(self) -> None:
        """Stop the git helper process a --ref revision's reads started (`git cat-file --batch`); a
        read after this starts it again."""
        if self._objects is not None:
            self._objects.close()

    def source(self) -> dict[str, Any]:
        """The `source` recorded on every resource and on the plan."""
        return {
            "commit": self.commit,
            "ref": self.ref,
            "file": self.file_in_repo or self.file.name,
            "dirty": self.dirty,
        }

    def exists(self, relpath: str) -> bool:
        """A file relative to the project root exists at this revision."""
        if self._tree is None:
            return (self.root / relpath).is_file()
        return self._blob(relpath) is not None

    def read(self, relpath: str) -> bytes | None:
        """A file relative to the project root at this revision; None when it does not exist.
        Only regular files of a sane size are read (UnreadableFile otherwise): entrypoints come
        from the project, which may be an untrusted pull request."""
        from buildsys.sourcefiles import ENTRYPOINT_FILE_LIMIT, UnreadableFile, read_regular

        if self._tree is None:
            path = self.root / relpath
            try:
                return read_regular(path, limit=ENTRYPOINT_FILE_LIMIT, what="entrypoint file")
            except (FileNotFoundError, NotADirectoryError):
                return None
        blob = self._blob(relpath)
        if blob is None:
            return None
        if blob.mode & 0o170000 != 0o100000:
            raise UnreadableFile(f"entrypoint file {relpath} is not a regular file at {self.ref}")
        objects: _Objects = self._objects
        size, data = objects.read(blob.oid, limit=ENTRYPOINT_FILE_LIMIT)
        if data is None:
            raise UnreadableFile(
                f"entrypoint file {relpath} is {size:,} bytes at {self.ref}; the limit is {ENTRYPOINT_FILE_LIMIT:,}"
            )
        return data

    def _blob(self, relpath: str) -> Entry | None:
        assert self._tree is not None
        prefix = "" if self.repo_root is None else self.root.resolve().relative_to(self.repo_root).as_posix()
        full = f"{prefix}/{relpath}" if prefix not in ("", ".") else relpath
        entry = self._tree.get(posixpath.normpath(full))
        return entry if entry is not None and entry.type == "blob" else None


# --- talking to git ---------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    # no optional locks: `status` would otherwise refresh the index under index.lock while a user's
    # own git command runs; C locale: messages are read only for errors, but stay predictable
    return {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}


def _start(cwd: Path, args: Sequence[str], *, stdin: bool = False) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            ["git", *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise RevisionError("git is not installed", hint="install git to read git revisions") from None


def _run(cwd: Path, *args: str, input: bytes | None = None) -> tuple[int, bytes, str]:
    """(exit status, stdout, stderr) of one git command."""
    return _finish(_start(cwd, args, stdin=input is not None), input)


def _finish(proc: subprocess.Popen[bytes], input: bytes | None = None) -> tuple[int, bytes, str]:
    out, err = proc.communicate(input)
    return proc.returncode, out, err.decode("utf-8", "replace").strip()


def _maybe_in_git(directory: Path) -> bool:
    """False only when no directory from here up can be a git repository (no `.git`, not a bare
    repository's folder, no GIT_DIR): then no `git` process is started at all."""
    if os.environ.get("GIT_DIR"):
        return True
    for d in (directory, *directory.parents):
        if os.path.lexists(os.path.join(d, ".git")) or (
            os.path.isfile(os.path.join(d, "HEAD")) and os.path.isdir(os.path.join(d, "objects"))
        ):
            return True
    return False


def _toplevel(directory: Path) -> Path | None:
    """The working tree's top directory of the repository holding `directory`; None outside one."""
    if not _maybe_in_git(directory):
        return None
    code, out, err = _run(directory, "rev-parse", "--show-toplevel")
    text = out.decode("utf-8", "surrogateescape").strip()
    if code == 0 and text:
        return Path(text).resolve()
    if "not a git repository" in err or "must be run in a work tree" in err:  # none, or a bare one
        return None
    lines = err.splitlines()
    raise RepositoryRefused(  # e.g. a checkout owned by another user (git's safe.directory)
        f"git cannot read the repository holding {directory}: {lines[0].removeprefix('fatal: ') if lines else code}",
        hint=next((line.strip() for line in lines if "safe.directory" in line and "git config" in line),
                  "run `git status` there to see what git says"),
    )


def _commits(repo_root: Path, names: Sequence[str]) -> list[str | None]:
    """The commit each revision name (a commit, branch, tag, `origin/HEAD`…) resolves to, None for a
    name that does not resolve: one `git cat-file --batch-check`, names on its stdin (never parsed
    as options)."""
    if not _asked(names):
        return [None for _ in names]
    return _found_commits(repo_root, names, _finish(_start(repo_root, COMMITS, stdin=True), _query(names)))


COMMITS = ("cat-file", "--batch-check=%(objectname) %(objecttype)")


def _asked(names: Sequence[str]) -> list[str]:
    return [n for n in names if n and "\n" not in n]


def _query(names: Sequence[str]) -> bytes:
    """`COMMITS`'s input: each name that can be asked, as a commit."""
    return "".join(f"{n}^{{commit}}\n" for n in _asked(names)).encode("utf-8", "surrogateescape")


def _found_commits(repo_root: Path, names: Sequence[str], done: tuple[int, bytes, str]) -> list[str | None]:
    """`_commits`'s answer from `COMMITS`'s."""
    code, out, err = done
    if code != 0:
        raise RevisionError(f"cannot read the repository at {repo_root}: {err}")
    found: dict[str, str] = {}
    for name, line in zip(_asked(names), out.decode("utf-8", "surrogateescape").splitlines(), strict=False):
        parts = line.split(" ")
        if len(parts) == 2 and parts[1] == "commit":
            found[name] = parts[0]
    return [found.get(n) for n in names]


STATUS = ("status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all")
REMOTES = ("config", "-z", "--get-regexp", r"^(remote\..*\.url|url\..*\.insteadof)$")


def _parse_status(text: str) -> tuple[str | None, bool]:
    """(HEAD's commit or None before the first commit, whether the working tree is dirty) from
    `git status --porcelain=v2 --branch -z --untracked-files=all`. Dirty: uncommitted changes to
    tracked files, or new files (buildsys's own `.buildsys/` excluded)."""
    commit, dirty, _ = _read_status(text)
    return commit, dirty


def _read_status(text: str) -> tuple[str | None, bool, list[str]]:
    """`_parse_status`, and the untracked folders (`? new/`, as `--untracked-files=normal` names a
    folder holding only untracked files) that would make the working tree dirty were it not
    otherwise: whether one holds a file outside a `.buildsys/` is not said at that level."""
    commit: str | None = None
    dirty = False
    folders: list[str] = []
    records = iter(text.split("\0"))
    for record in records:
        if record.startswith("# branch.oid "):
            oid = record[len("# branch.oid "):]
            commit = None if oid == "(initial)" else oid
        elif record[:2] in ("1 ", "2 ", "u "):
            dirty = True
            if record[:2] == "2 ":
                next(records, None)  # a rename's original path, a record of its own
        elif record.startswith("? "):
            path = record[2:]
            if not path.startswith(".buildsys/") and "/.buildsys/" not in path:
                if path.endswith("/") and not path.endswith("/.buildsys/"):
                    folders.append(path)
                else:
                    dirty = True
    if not commit:
        return commit, True, []
    return commit, dirty, [] if dirty else folders


def _remote_url(repo_root: Path) -> str | None:
    """The fetch URL of `origin` (else of the first remote), with `url.<base>.insteadOf` applied as
    git applies it, credentials stripped: one `git config`."""
    return _parse_remotes(_finish(_start(repo_root, REMOTES)))


def _parse_remotes(done: tuple[int, bytes, str]) -> str | None:
    code, out, _ = done
    if code != 0:  # 1: none set
        return None
    remotes: dict[str, str] = {}
    rewrites: list[tuple[str, str]] = []  # (instead of, base)
    for record in out.decode("utf-8", "surrogateescape").split("\0"):
        if "\n" not in record:
            continue
        key, value = record.split("\n", 1)
        if key.startswith("remote.") and key.endswith(".url"):
            remotes.setdefault(key[len("remote."):-len(".url")], value)  # the first url of each remote
        elif key.startswith("url.") and key.endswith(".insteadof"):
            rewrites.append((value, key[len("url."):-len(".insteadof")]))
    if not remotes:
        return None
    url = remotes.get("origin", next(iter(remotes.values())))
    matches = [(prefix, base) for prefix, base in rewrites if url.startswith(prefix)]
    if matches:
        prefix, base = max(matches, key=lambda m: len(m[0]))  # git takes the longest match
        url = base + url[len(prefix):]
    return strip_credentials(url)


class _Objects:
    """One `git cat-file --batch` process, started at the first read, for a revision's blobs."""

    def __init__(self, repo_root: Path) -> None:
        self.repo_root = repo_root
        self.proc: subprocess.Popen[bytes] | None = None

    def read(self, oid: str, limit: int | None = None) -> tuple[int, bytes | None]:
        """(the object's size, its bytes — None when it is larger than `limit`: then it is read
        and dropped in pieces, never held)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = _start(self.repo_root, ["cat-file", "--batch"], stdin=True)
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(f"{oid}\n".encode())
        stdin.flush()
        header = stdout.readline().decode("utf-8", "replace").split()
        if len(header) != 3:
            raise RevisionError(f"cannot read object {oid} of the repository at {self.repo_root}")
        size = int(header[2])
        data = _read_exactly(stdout, size, keep=limit is None or size <= limit)
        stdout.read(1)  # the newline after each object
        return size, data

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_exactly(stream: IO[bytes], size: int, *, keep: bool = True) -> bytes | None:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            raise RevisionError("git cat-file stopped in the middle of an object")
        if keep:
            chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks) if keep else None


def _tree(repo_root: Path, commit: str) -> dict[str, Entry]:
    """Every file of the commit's tree (submodules as `commit` entries): one `git ls-tree -r` (trees
    only are read: no `-l`, whose sizes cost a look at every blob of a large repository)."""
    code, out, err = _run(repo_root, "ls-tree", "-r", "-z", "--full-tree", commit)
    if code != 0:
        raise RevisionError(f"cannot list the files of commit {commit[:12]}: {err}")
    entries: dict[str, Entry] = {}
    for record in out.decode("utf-8", "surrogateescape").split("\0"):
        if not record:
            continue
        meta, path = record.split("\t", 1)
        mode, kind, oid = meta.split()
        entries[path] = Entry(int(mode, 8), kind, oid)
    return entries


# --- the revisions ------------------------------------------------------------------------------------


_kept: dict[Path, Revision] | None = None  # the working tree's revisions while `reading_once` is on


@contextmanager
def reading_once() -> Iterator[None]:
    """Within the block, the working tree's revision of each project file is asked of git once
    (`rev-parse`, `config`, `status`): for a command that reads it twice with nothing run between
    (`plan --affected`: the analysis, then the plan)."""
    global _kept
    outer = _kept
    _kept = {} if outer is None else outer
    try:
        yield
    finally:
        _kept = outer


def open_revision(project_file: Path, ref: str | None = None) -> Revision:
    """The project at `ref` (a commit, branch or tag), or the working tree when ref is None."""
    kept = _kept
    if ref is None and kept is not None:
        known = kept.get(project_file.resolve())
        if known is None or known.file != project_file:
            known = kept[project_file.resolve()] = _open_revision(project_file, None)
        return known
    return _open_revision(project_file, ref)


def _open_revision(project_file: Path, ref: str | None) -> Revision:
    file = project_file.resolve()
    if ref is None:
        known = _working_tree(project_file, file)
        if known is not None:
            return known
    try:
        repo_root = _toplevel(file.parent)
    except RepositoryRefused:
        if ref is not None:
            raise
        return _unreadable(project_file)
    if repo_root is None:
        if ref is not None:
            raise RevisionError(
                f"--ref {ref} needs a git repository, but {file.parent} is not inside one",
                hint="run `git init` and commit the project, or drop --ref",
            )
        return Revision(file=project_file, root=file.parent, text=None)
    rel = file.relative_to(repo_root).as_posix()
    if ref is None:
        revision = _working_tree(project_file, file, repo_root)
        assert revision is not None  # the top directory is known: it answers or raises
        return revision
    remote = _remote_url(repo_root)
    (commit,) = _commits(repo_root, [ref])
    if commit is None:
        raise RevisionError(f"--ref {ref}: no such commit, branch or tag", hint="see `git log --oneline` or `git tag`")
    tree = _tree(repo_root, commit)
    entry = tree.get(rel)
    if entry is None or entry.type != "blob":
        raise RevisionError(
            f"--ref {ref}: {rel} does not exist at commit {commit[:12]}",
            hint="check the path with `git show " + f"{ref}:{rel}`",
        )
    from buildsys.sourcefiles import PROJECT_FILE_LIMIT

    objects = _Objects(repo_root)
    try:
        size, raw = objects.read(entry.oid, limit=PROJECT_FILE_LIMIT)
        if raw is None:
            raise RevisionError(
                f"--ref {ref}: {rel} is {size:,} bytes at commit {commit[:12]}; the limit is {PROJECT_FILE_LIMIT:,}"
            )
        text = raw.decode("utf-8-sig")  # as the working tree's project file is read
    except UnicodeDecodeError:
        objects.close()
        raise RevisionError(f"--ref {ref}: {rel} is not UTF-8 text at commit {commit[:12]}") from None
    except BaseException:
        objects.close()
        raise
    return Revision(
        file=project_file,
        root=file.parent,
        text=text,
        ref=ref,
        commit=commit,
        dirty=False,
        repo_root=repo_root,
        remote_url=remote,
        file_in_repo=rel,
        _tree=tree,
        _objects=objects,
    )


def _working_tree(project_file: Path, file: Path, repo_root: Path | None = None) -> Revision | None:
    """The working tree's revision, its `git` processes side by side: `config` and `status`, and
    `rev-parse` for the top directory unless `repo_root` is given (from the project's folder,
    status's paths are the top directory's all the same). None when `rev-parse` does not answer
    plainly (no repository, git refuses it): then the step-by-step way says what it says."""
    here = file.parent
    if repo_root is None and not _maybe_in_git(here):
        return None
    asked = (*((("rev-parse", "--show-toplevel"),) if repo_root is None else ()), REMOTES, STATUS)
    started: list[subprocess.Popen[bytes]] = []
    try:
        for args in asked:
            started.append(_start(here, args))
        if repo_root is None:
            code, out, err = _finish(started[0])
            top = out.decode("utf-8", "surrogateescape").rstrip("\n")
            if code != 0 or err or not top:
                return None
            repo_root = Path(top).resolve()
        remote = _parse_remotes(_finish(started[-2]))
        s_code, s_out, s_err = _finish(started[-1])
    finally:
        for proc in started:
            if proc.returncode is None:
                _finish(proc)
    if s_code != 0:
        raise RevisionError(f"cannot read the state of the working tree at {repo_root}: {s_err}")
    commit, dirty = _parse_status(s_out.decode("utf-8", "surrogateescape"))
    return Revision(
        file=project_file, root=here, text=None, commit=commit, dirty=dirty, repo_root=repo_root,
        remote_url=remote, file_in_repo=file.relative_to(repo_root).as_posix(),
    )


def _unreadable(project_file: Path) -> Revision:
    """The working tree of a repository git refuses to read: its top directory (where `.git` is),
    no commit, dirty, no remote — what a plan recorded for such a checkout before buildsys asked
    git itself (GitPython found the directory, and every git command it ran failed)."""
    file = project_file.resolve()
    top = next((d for d in (file.parent, *file.parent.parents) if os.path.lexists(d / ".git")), None)
    if top is None:
        return Revision(file=project_file, root=file.parent, text=None)
    return Revision(file=project_file, root=file.parent, text=None, commit=None, dirty=True, repo_root=top,
                    file_in_repo=file.relative_to(top).as_posix())


def strip_credentials(url: str) -> str:
    """`https://user:token@host/x.git` → `https://host/x.git`; scp-like and local paths unchanged."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# --- comparing revisions (buildsys.affected) --------------------------------------------------------

DEFAULT_BRANCHES = ("origin/HEAD", "origin/main", "origin/master", "main", "master")


def default_base(project_file: Path, *, repo_root: Path | None = None) -> tuple[str, str]:
    """The commit `affected` compares with when no --base is given: the merge base of HEAD with the
    default branch (origin's HEAD, else main or master, remote before local), and that branch.
    `repo_root`: the repository's top directory when the caller knows it (one `git` process less)."""
    repo_root = repo_root or _toplevel(project_file.resolve().parent)
    if repo_root is None:
        raise RevisionError(
            f"`affected` compares two git revisions, but {project_file.resolve().parent} is not inside a git repository",
            hint="run it in a git checkout, or drop --affected",
        )
    head, *branches = _commits(repo_root, ["HEAD", *DEFAULT_BRANCHES])
    if head is None:
        raise RevisionError("the repository has no commit yet: there is nothing to compare with", hint="commit first")
    return _merge_base(repo_root, head, branches)


def _merge_base(repo_root: Path, head: str, branches: Sequence[str | None]) -> tuple[str, str]:
    """The merge base of `head` with the first of DEFAULT_BRANCHES that exists (`branches`: their
    commits, None where one does not), and that branch's name."""
    for name, branch in zip(DEFAULT_BRANCHES, branches, strict=True):
        if branch is None:
            continue
        code, out, err = _run(repo_root, "merge-base", head, branch)
        base = out.decode().strip()
        if code == 0 and base:
            return base, name
        if code == 1 and not err:
            raise RevisionError(
                f"HEAD and {name} have no common commit (a shallow clone?)",
                hint="fetch more history (`git fetch --unshallow`, or `fetch-depth: 0` in CI), or pass --base REF",
            )
        raise RevisionError(f"cannot find the merge base of HEAD and {name}: {err}")
    raise RevisionError(
        "no default branch to compare with (none of " + ", ".join(DEFAULT_BRANCHES) + " exists)",
        hint="pass --base REF (a commit, branch or tag)",
    )


def resolve_commit(project_file: Path, ref: str, *, repo_root: Path | None = None) -> str:
    """The commit `ref` (a commit, branch or tag) names in the project file's repository."""
    return _resolve(project_file, ref, repo_root)[1]


def _resolve(project_file: Path, ref: str, repo_root: Path | None = None) -> tuple[Path, str]:
    """(the repository's top directory, the commit `ref` names there)."""
    file = project_file.resolve()
    repo_root = repo_root or _toplevel(file.parent)
    if repo_root is None:
        raise RevisionError(
            f"comparing with {ref} needs a git repository, but {file.parent} is not inside one",
            hint="run it in a git checkout",
        )
    (commit,) = _commits(repo_root, [ref])
    if commit is None:
        raise RevisionError(f"{ref}: no such commit, branch or tag", hint="see `git log --oneline` or `git branch -a`")
    return repo_root, commit


def export_tree(
    project_file: Path, ref: str, workdir: Path, *, repo_root: Path | None = None, paths: Sequence[str] | None = None
) -> tuple[str, Path]:
    """Write the files of the repository at `ref` into `workdir/tree`, as a checkout would
    (symlinks and git's filters included) but without touching the repository's index, HEAD or
    working tree. Returns (the commit, the project file's path under that tree). A caller that
    resolved `ref` already passes the commit's id and `repo_root`: then it is not resolved again
    (`read-tree` refuses an id that is not there). `paths` (relative to the repository's top
    directory, each a file of `ref`): only these files are written."""
    if repo_root is not None and len(ref) in (40, 64) and all(c in "0123456789abcdef" for c in ref):
        commit = ref
    else:
        repo_root, commit = _resolve(project_file, ref, repo_root)
    dest = workdir / "tree"
    dest.mkdir()
    env = {**os.environ, "GIT_INDEX_FILE": str(workdir / "index")}
    which = ["--all"] if paths is None else ["--stdin", "-z"]
    for args in (["read-tree", commit], ["checkout-index", "--force", *which]):
        given = "".join(f"{p}\0" for p in paths) if paths is not None and "--stdin" in args else None
        done = subprocess.run(
            ["git", "-C", str(repo_root), f"--work-tree={dest}", *args],
            env=env, capture_output=True, text=True, check=False, input=given,
        )
        if done.returncode != 0:
            raise RevisionError(f"cannot read the files of {ref}: {done.stderr.strip() or done.stdout.strip()}")
    return commit, dest / project_file.resolve().relative_to(repo_root)


CHANGED_STATUS = ("status", "--porcelain=v2", "-z", "--untracked-files=normal", "--ignored=traditional")


MODIFIED = "M"  # a file at both revisions whose content (or mode) differs; any other kind may add or remove one


def changed_paths(repo_root: Path, commit: str) -> dict[str, str]:
    """Every path of the repository whose content may differ between `commit` and the working tree
    (posix, relative to the repository's top directory), with how: `git diff --name-status`'s
    letter for tracked files changed, added (`A`), deleted (`D`), or changed in type since the
    commit, staged or not (`--no-renames`: a rename is its old path deleted and its new path
    added); `?` for every file git does not track and `!` for every file it ignores (a step's
    files are not git's: a file only `.git/info/exclude` ignores is still an input). Untracked
    and ignored folders come as one entry ending in `/` (git does not descend into them):
    everything under it is new. A path named twice is `*`."""
    return start_changed_paths(repo_root, commit)()


def start_changed_paths(repo_root: Path, commit: str) -> Callable[[], dict[str, str]]:
    """`changed_paths`, started: its two git processes run side by side (and beside the caller's
    own work) until the returned function is called for the answer. Call it in any case (it
    waits for them)."""
    diff = _start(repo_root, [*DIFF, commit, "--"])
    try:
        status = _start(repo_root, CHANGED_STATUS)
    except BaseException:
        _finish(diff)
        raise

    def finish() -> dict[str, str]:
        done = _finish(diff)
        s_code, s_out, s_err = _finish(status)
        if s_code != 0:
            raise RevisionError(f"cannot read the state of the working tree at {repo_root}: {s_err}")
        return _changed(commit, done, s_out.decode("utf-8", "surrogateescape"))

    return finish


def _changed(commit: str, diff: tuple[int, bytes, str], status: str) -> dict[str, str]:
    """`changed_paths` from `git diff --name-status -z`'s answer and the text of `CHANGED_STATUS`."""
    code, out, err = diff
    if code != 0:
        raise RevisionError(f"cannot compare the working tree with {commit[:12]}: {err}")
    found: dict[str, str] = {}

    def note(path: str, kind: str) -> None:
        found[path] = kind if found.get(path, kind) == kind else "*"

    fields = out.decode("utf-8", "surrogateescape").split("\0")
    for kind, path in zip(fields[0::2], fields[1::2], strict=False):
        if kind and path:
            note(path, kind[:1])
    records = iter(status.split("\0"))
    for record in records:
        if record[:2] in ("? ", "! "):
            note(record[2:], record[0])
        elif record[:2] == "2 ":
            next(records, None)  # a rename's original path: `diff --no-renames` names both already
    return dict(sorted(found.items()))


DIFF = ("diff", "--no-renames", "--name-status", "-z", "--no-ext-diff")


class Comparison:
    """What `compare_working_tree` found: the working tree's revision, the base's commit, the
    default branch whose merge base it is (None when the base was named), and the function that
    waits for the changed paths (`changed_paths`'s answer)."""

    def __init__(self, revision: Revision, commit: str, branch: str | None, changed: Callable[[], dict[str, str]]) -> None:
        self.revision = revision
        self.commit = commit
        self.branch = branch
        self.changed = changed


def compare_working_tree(project_file: Path, base: str | None) -> Comparison | None:
    """The working tree's revision (`open_revision`), the base's commit (`resolve_commit`, or
    `default_base` when `base` is None) and the changed paths since it (`start_changed_paths`),
    asked of git in fewer and overlapping processes: the top directory and the base's commit in
    one `rev-parse`, beside `config` and one `status` that answers for both the revision and the
    changed paths; then `diff` against the commit, started here and waited for by `changed`.

    None when this way does not settle it (no repository, git refuses it, no commit yet, a base
    it cannot resolve, a revision already read within `reading_once`, an untracked folder that
    leaves the working tree's dirtiness open): the caller asks the step-by-step way, which gives
    the same answers and says why where it fails."""
    file = project_file.resolve()
    if _kept is not None and file in _kept:
        return None
    here = file.parent
    if (base is not None and (not base or base.startswith("-") or "\n" in base)) or not _maybe_in_git(here):
        return None
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(_start(here, ["rev-parse", "--show-toplevel", *(
            ["--verify", "--quiet", f"{base}^{{commit}}"] if base is not None else [])]))
        started.append(_start(here, REMOTES))
        started.append(_start(here, (*CHANGED_STATUS, "--branch")))
        names = ["HEAD", *DEFAULT_BRANCHES]
        if base is None:  # waits for its names on stdin until the repository is known to be readable
            started.append(_start(here, COMMITS, stdin=True))
        code, out, err = _finish(started[0])
        lines = out.decode("utf-8", "surrogateescape").rstrip("\n").rsplit("\n", 1 if base is not None else 0)
        if code != 0 or err or not lines[0] or (base is not None and len(lines) != 2):
            return None
        repo_root = Path(lines[0]).resolve()
        remote = _parse_remotes(_finish(started[1]))
        s_code, s_out, _ = _finish(started[2])
        if s_code != 0:
            return None
        status = s_out.decode("utf-8", "surrogateescape")
        commit_now, dirty, open_folders = _read_status(status)
        if open_folders or commit_now is None:
            return None
        if base is not None:
            commit, branch = lines[1], None
        else:
            head, *branches = _found_commits(repo_root, names, _finish(started[3], _query(names)))
            if head is None:
                return None
            commit, branch = _merge_base(repo_root, head, branches)
    finally:
        for proc in started:
            if proc.returncode is None:
                _finish(proc)
    revision = Revision(
        file=project_file, root=here, text=None, commit=commit_now, dirty=dirty, repo_root=repo_root,
        remote_url=remote, file_in_repo=file.relative_to(repo_root).as_posix(),
    )
    if _kept is not None:
        _kept[file] = revision
    diff = _start(repo_root, [*DIFF, commit, "--"])
    return Comparison(revision, commit, branch, lambda: _changed(commit, _finish(diff), status))
