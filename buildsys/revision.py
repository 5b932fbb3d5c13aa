"""Where desired state comes from: the working tree or any git revision, read without a checkout.

Gives the project file's text, a reader for other files at the same revision (entrypoints), the
commit, whether the working tree is dirty, and the repository facts the project identity needs.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from buildsys.errors import BuildsysError


class RevisionError(BuildsysError):
    """A git revision or a file in it cannot be read."""


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
    _tree: Any = field(default=None, repr=False, compare=False)
    _repo: Any = field(default=None, repr=False, compare=False)  # held while `_tree` is read (--ref)

    def close(self) -> None:
        """Stop the git helper processes a --ref revision's reads started (`git cat-file`); a read
        after this starts them again."""
        if self._repo is not None:
            self._repo.close()

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
        if getattr(blob, "type", "blob") != "blob" or blob.mode & 0o170000 != 0o100000:
            raise UnreadableFile(f"entrypoint file {relpath} is not a regular file at {self.ref}")
        if blob.size > ENTRYPOINT_FILE_LIMIT:
            raise UnreadableFile(
                f"entrypoint file {relpath} is {blob.size:,} bytes at {self.ref}; the limit is {ENTRYPOINT_FILE_LIMIT:,}"
            )
        data: bytes = blob.data_stream.read()
        return data

    def _blob(self, relpath: str) -> Any:
        prefix = "" if self.repo_root is None else self.root.resolve().relative_to(self.repo_root).as_posix()
        full = f"{prefix}/{relpath}" if prefix not in ("", ".") else relpath
        try:
            blob = self._tree / posixpath.normpath(full)
        except KeyError:
            return None
        return blob if blob.type == "blob" else None


def open_revision(project_file: Path, ref: str | None = None) -> Revision:
    """The project at `ref` (a commit, branch or tag), or the working tree when ref is None."""
    file = project_file.resolve()
    repo = _repo(file.parent)
    if repo is None:
        if ref is not None:
            raise RevisionError(
                f"--ref {ref} needs a git repository, but {file.parent} is not inside one",
                hint="run `git init` and commit the project, or drop --ref",
            )
        return Revision(file=project_file, root=file.parent, text=None)
    repo_root = Path(repo.working_tree_dir or file.parent).resolve()
    rel = file.relative_to(repo_root).as_posix()
    remote = _remote_url(repo)
    if ref is None:
        with _closing(repo):
            commit = _head(repo)
            dirty = _dirty(repo) if commit else True
        return Revision(
            file=project_file,
            root=file.parent,
            text=None,
            commit=commit,
            dirty=dirty,
            repo_root=repo_root,
            remote_url=remote,
            file_in_repo=rel,
        )
    try:
        commit_obj = repo.commit(ref)
    except Exception as exc:  # gitpython raises several types (BadName, ValueError, GitCommandError)
        repo.close()
        raise RevisionError(
            f"--ref {ref}: no such commit, branch or tag", hint="see `git log --oneline` or `git tag`"
        ) from exc
    try:
        blob = commit_obj.tree / rel
        text = blob.data_stream.read().decode("utf-8")
    except KeyError as exc:
        repo.close()
        raise RevisionError(
            f"--ref {ref}: {rel} does not exist at commit {commit_obj.hexsha[:12]}",
            hint="check the path with `git show " + f"{ref}:{rel}`",
        ) from exc
    return Revision(
        file=project_file,
        root=file.parent,
        text=text,
        ref=ref,
        commit=commit_obj.hexsha,
        dirty=False,
        repo_root=repo_root,
        remote_url=remote,
        file_in_repo=rel,
        _tree=commit_obj.tree,
        _repo=repo,
    )


def _maybe_in_git(directory: Path) -> bool:
    """False only when no directory from here up can be a git repository (no `.git`, not a bare
    repository's folder, no GIT_DIR): then GitPython, ~0.1 s to import, is not needed at all."""
    if os.environ.get("GIT_DIR"):
        return True
    for d in (directory, *directory.parents):
        if os.path.lexists(os.path.join(d, ".git")) or (
            os.path.isfile(os.path.join(d, "HEAD")) and os.path.isdir(os.path.join(d, "objects"))
        ):
            return True
    return False


def _repo(directory: Path) -> Any:
    if not _maybe_in_git(directory):
        return None
    import git

    try:
        return git.Repo(directory, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


@contextmanager
def _closing(repo: Any) -> Iterator[Any]:
    """The repository, its git helper processes (`git cat-file --batch…`) stopped afterwards: a
    long-running process (server, watch, a test run) would otherwise keep them."""
    try:
        yield repo
    finally:
        repo.close()


def _dirty(repo: Any) -> bool:
    """Uncommitted changes to tracked files, or new files (buildsys's own `.buildsys/` excluded)."""
    if repo.is_dirty(untracked_files=False):
        return True
    return any(not f.startswith(".buildsys/") and "/.buildsys/" not in f for f in repo.untracked_files)


def _head(repo: Any) -> str | None:
    try:
        return str(repo.head.commit.hexsha)
    except ValueError:  # no commit yet
        return None


def _remote_url(repo: Any) -> str | None:
    remotes = list(repo.remotes)
    if not remotes:
        return None
    chosen = next((r for r in remotes if r.name == "origin"), remotes[0])
    try:
        urls = list(chosen.urls)
    except Exception:  # a remote without a url
        return None
    return strip_credentials(urls[0]) if urls else None


def strip_credentials(url: str) -> str:
    """`https://user:token@host/x.git` → `https://host/x.git`; scp-like and local paths unchanged."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# --- comparing revisions (buildsys.affected) --------------------------------------------------------

DEFAULT_BRANCHES = ("origin/HEAD", "origin/main", "origin/master", "main", "master")


def default_base(project_file: Path) -> tuple[str, str]:
    """The commit `affected` compares with when no --base is given: the merge base of HEAD with the
    default branch (origin's HEAD, else main or master, remote before local), and that branch."""
    repo = _repo(project_file.resolve().parent)
    if repo is None:
        raise RevisionError(
            f"`affected` compares two git revisions, but {project_file.resolve().parent} is not inside a git repository",
            hint="run it in a git checkout, or drop --affected",
        )
    with _closing(repo):
        return _default_base(repo)


def _default_base(repo: Any) -> tuple[str, str]:
    if _head(repo) is None:
        raise RevisionError("the repository has no commit yet: there is nothing to compare with", hint="commit first")
    for name in DEFAULT_BRANCHES:
        try:
            branch = repo.commit(name)
        except Exception:  # gitpython raises several types for a name that does not resolve
            continue
        bases = repo.merge_base("HEAD", branch)
        if not bases:
            raise RevisionError(
                f"HEAD and {name} have no common commit (a shallow clone?)",
                hint="fetch more history (`git fetch --unshallow`, or `fetch-depth: 0` in CI), or pass --base REF",
            )
        return str(bases[0].hexsha), name
    raise RevisionError(
        "no default branch to compare with (none of " + ", ".join(DEFAULT_BRANCHES) + " exists)",
        hint="pass --base REF (a commit, branch or tag)",
    )


def resolve_commit(project_file: Path, ref: str) -> str:
    """The commit `ref` (a commit, branch or tag) names in the project file's repository."""
    file = project_file.resolve()
    repo = _repo(file.parent)
    if repo is None:
        raise RevisionError(
            f"comparing with {ref} needs a git repository, but {file.parent} is not inside one",
            hint="run it in a git checkout",
        )
    try:
        return str(repo.commit(ref).hexsha)
    except Exception as exc:  # gitpython raises several types (BadName, ValueError, GitCommandError)
        raise RevisionError(f"{ref}: no such commit, branch or tag", hint="see `git log --oneline` or `git branch -a`") from exc
    finally:
        repo.close()


def export_tree(project_file: Path, ref: str, workdir: Path) -> tuple[str, Path]:
    """Write the files of the repository at `ref` into `workdir/tree`, as a checkout would
    (symlinks and git's filters included) but without touching the repository's index, HEAD or
    working tree. Returns (the commit, the project file's path under that tree)."""
    import os
    import subprocess

    commit = resolve_commit(project_file, ref)
    file = project_file.resolve()
    repo = _repo(file.parent)
    with _closing(repo):
        repo_root = Path(repo.working_tree_dir or file.parent).resolve()
    dest = workdir / "tree"
    dest.mkdir()
    env = {**os.environ, "GIT_INDEX_FILE": str(workdir / "index")}
    for args in (["read-tree", commit], ["checkout-index", "--all", "--force"]):
        done = subprocess.run(
            ["git", "-C", str(repo_root), f"--work-tree={dest}", *args],
            env=env, capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise RevisionError(f"cannot read the files of {ref}: {done.stderr.strip() or done.stdout.strip()}")
    return commit, dest / file.relative_to(repo_root)
