"""Git revisions read with git's own plumbing (buildsys.revision): the working tree's commit and
dirtiness from one `git status`, the remote from one `git config`, a --ref's files from `ls-tree`
and one `cat-file --batch`; the edge cases the callers rely on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildsys.revision import (
    RevisionError,
    _parse_status,
    default_base,
    open_revision,
    resolve_commit,
)
from buildsys.sourcefiles import UnreadableFile
from tests.services.gitrepo import commit_tree, git


def repo(path: Path, files: dict[str, str]) -> Path:
    """The repository's prefect.yaml (`files` committed on main)."""
    return commit_tree(path, files, "c") / "prefect.yaml"


def test_status_records() -> None:
    head = "# branch.oid " + "a" * 40
    assert _parse_status(f"{head}\0# branch.head main\0") == ("a" * 40, False)
    assert _parse_status("# branch.oid (initial)\0") == (None, True)  # nothing committed: dirty
    assert _parse_status(f"{head}\0? .buildsys/cache.db\0? sub/.buildsys/x\0") == ("a" * 40, False)
    assert _parse_status(f"{head}\0? flows/new.py\0")[1] is True
    assert _parse_status(f"{head}\0u UU N... 100644 100644 100644 100644 x y z a.py\0")[1] is True
    # a rename's original path is a record of its own and is never read as another record
    rename = "2 R. N... 100644 100644 100644 " + "b" * 40 + " " + "b" * 40 + " R100 new.py"
    assert _parse_status(f"{rename}\0# branch.oid {'c' * 40}\0{head}\0") == ("a" * 40, True)


def test_working_tree(tmp_path: Path) -> None:
    file = repo(tmp_path, {"prefect.yaml": "name: x\n"})
    rev = open_revision(file)
    assert (rev.commit, rev.dirty, rev.remote_url, rev.file_in_repo) == (git(tmp_path, "rev-parse", "HEAD"), False,
                                                                          None, "prefect.yaml")
    git(tmp_path, "mv", "prefect.yaml", "p.yaml")  # a staged rename is a change
    assert open_revision(tmp_path / "p.yaml").dirty is True
    git(tmp_path, "mv", "p.yaml", "prefect.yaml")
    assert open_revision(file).dirty is False


def test_remote_url_is_origin_rewritten_as_git_does_without_credentials(tmp_path: Path) -> None:
    file = repo(tmp_path, {"prefect.yaml": "name: x\n"})
    git(tmp_path, "remote", "add", "backup", "https://backup.example.com/x.git")
    assert open_revision(file).remote_url == "https://backup.example.com/x.git"  # the only remote
    git(tmp_path, "remote", "add", "origin", "gh:acme/flows.git")
    git(tmp_path, "config", "url.https://bot:secret@github.com/.insteadOf", "gh:")
    git(tmp_path, "config", "url.https://wrong.example.com/.insteadOf", "g")  # a shorter match loses
    assert open_revision(file).remote_url == "https://github.com/acme/flows.git"
    assert git(tmp_path, "remote", "get-url", "origin") == "https://bot:secret@github.com/acme/flows.git"


def test_ref_reads_files_of_the_commit_and_refuses_what_is_not_a_regular_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = repo(tmp_path, {"prefect.yaml": "name: x\n", "proj/flows/f.py": "v1\n", "proj/flows/big.py": "x" * 10})
    (tmp_path / "proj" / "flows" / "link.py").symlink_to("f.py")
    (tmp_path / "proj" / "prefect.yaml").write_text("name: sub\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "links")
    (tmp_path / "proj" / "flows" / "f.py").write_text("v2\n")  # not committed
    rev = open_revision(tmp_path / "proj" / "prefect.yaml", "HEAD")
    try:
        assert rev.text == "name: sub\n" and rev.file_in_repo == "proj/prefect.yaml"
        assert rev.read("flows/f.py") == b"v1\n"
        assert rev.read("flows/missing.py") is None and rev.read("flows") is None  # a directory is no file
        assert rev.read("../prefect.yaml") == b"name: x\n"  # paths are relative to the project file
        assert rev.exists("flows/f.py") and not rev.exists("flows")
        with pytest.raises(UnreadableFile, match=r"flows/link\.py is not a regular file at HEAD"):
            rev.read("flows/link.py")
        rev.close()
        assert rev.read("flows/big.py") == b"x" * 10  # a read after close starts the reader again
        monkeypatch.setattr("buildsys.sourcefiles.ENTRYPOINT_FILE_LIMIT", 5)
        with pytest.raises(UnreadableFile, match=r"flows/big\.py is 10 bytes at HEAD; the limit is 5"):
            rev.read("flows/big.py")
        assert rev.read("flows/f.py") == b"v1\n"  # the reader stays in step after a file it dropped
    finally:
        rev.close()
    older = open_revision(file, "HEAD~1")
    try:
        assert older.read("proj/flows/f.py") == b"v1\n"
    finally:
        older.close()


def test_refs_are_never_options_and_bad_ones_are_clear_errors(tmp_path: Path) -> None:
    file = repo(tmp_path, {"prefect.yaml": "name: x\n"})
    for bad in ("--output=/tmp/x", "-h", "nope", "main\nHEAD", "HEAD:prefect.yaml"):
        with pytest.raises(RevisionError, match="no such commit, branch or tag"):
            resolve_commit(file, bad)
    assert resolve_commit(file, "main") == git(tmp_path, "rev-parse", "HEAD")


def test_default_base_is_the_merge_base_with_the_default_branch(tmp_path: Path) -> None:
    file = repo(tmp_path, {"prefect.yaml": "name: x\n"})
    first = git(tmp_path, "rev-parse", "HEAD")
    git(tmp_path, "checkout", "-qb", "feature")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-q", "--allow-empty", "-m", "f")
    assert default_base(file) == (first, "main")
    git(tmp_path, "checkout", "-q", "--orphan", "master")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "unrelated")
    git(tmp_path, "branch", "-D", "main")
    with pytest.raises(RevisionError, match="HEAD and master have no common commit"):
        git(tmp_path, "checkout", "-q", "feature")
        default_base(file)
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    with pytest.raises(RevisionError, match="no commit yet"):
        default_base(empty / "prefect.yaml")


def test_no_git_process_outside_a_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "prefect.yaml").write_text("name: x\n")
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))  # no git could even be started
    monkeypatch.delenv("GIT_DIR", raising=False)
    if any(os.path.lexists(d / ".git") for d in tmp_path.parents):
        pytest.skip("the temporary directory is inside a git repository")
    rev = open_revision(tmp_path / "prefect.yaml")
    assert (rev.commit, rev.repo_root, rev.dirty) == (None, None, False)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs to give the checkout to another user")
def test_a_repository_git_refuses_to_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "co").mkdir()
    file = repo(tmp_path / "co", {"prefect.yaml": "name: x\n"})
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-config"))  # no safe.directory exceptions
    for path in (tmp_path / "co", *(tmp_path / "co").rglob("*")):
        os.lchown(path, 12345, 12345)
    # a plan goes on as before git was asked directly: the checkout, no commit, dirty, no remote
    rev = open_revision(file)
    assert (rev.repo_root, rev.file_in_repo, rev.commit, rev.dirty, rev.remote_url) == (
        (tmp_path / "co").resolve(), "prefect.yaml", None, True, None)
    from buildsys.affected import affected

    for call in (lambda: open_revision(file, "HEAD"), lambda: affected(file, "HEAD"), lambda: affected(file)):
        with pytest.raises(RevisionError, match=r"git cannot read the repository holding .*dubious ownership") as caught:
            call()
        assert "safe.directory" in (caught.value.hint or "")
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    (bare / "prefect.yaml").write_text("name: x\n")
    assert open_revision(bare / "prefect.yaml").repo_root is None  # a bare repository has no working tree


def test_a_project_file_at_a_ref_that_is_not_text_is_a_clear_error(tmp_path: Path) -> None:
    file = repo(tmp_path, {"prefect.yaml": "name: x\n"})
    file.write_bytes(b"name: \xff\xfe\n")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "latin-1")
    with pytest.raises(RevisionError, match=r"--ref HEAD: prefect\.yaml is not UTF-8 text at commit"):
        open_revision(file, "HEAD")
    file.write_bytes(b"\xef\xbb\xbfname: x\n")  # a byte-order mark is dropped, as from the working tree
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "bom")
    rev = open_revision(file, "HEAD")
    rev.close()
    assert rev.text == "name: x\n"


def test_changed_paths_and_reading_the_working_tree_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buildsys import revision

    file = repo(tmp_path, {"prefect.yaml": "name: x\n", "a.txt": "1\n", "b.txt": "1\n", ".gitignore": "*.log\n"})
    base = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "a.txt").write_text("2\n")
    git(tmp_path, "mv", "b.txt", "c.txt")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "x.txt").write_text("x\n")
    (tmp_path / "debug.log").write_text("x\n")
    # tracked changes since the commit (a rename as both paths), untracked and ignored files, folders collapsed
    assert revision.changed_paths(tmp_path, base) == {"a.txt": "M", "b.txt": "D", "c.txt": "A", "debug.log": "!",
                                                      "new/": "?"}
    git(tmp_path, "commit", "-qm", "moved")
    (tmp_path / "a.txt").write_text("1\n")  # back as it was at the base: no change
    assert revision.changed_paths(tmp_path, base) == {"b.txt": "D", "c.txt": "A", "debug.log": "!", "new/": "?"}
    calls: list[object] = []
    real = revision._open_revision
    monkeypatch.setattr(revision, "_open_revision", lambda *a: calls.append(a) or real(*a))
    with revision.reading_once():
        first = open_revision(file)
        assert open_revision(file) is first and len(calls) == 1
    assert open_revision(file) is not first and len(calls) == 2  # outside the block: asked again


def _step_by_step(file: Path, base: str | None) -> tuple[object, str, str | None, dict[str, str]]:
    from buildsys import revision

    now = revision._open_revision(file, None)
    assert now.repo_root is not None
    if base is None:
        commit, branch = default_base(file, repo_root=now.repo_root)
    else:
        commit, branch = resolve_commit(file, base, repo_root=now.repo_root), None
    return now, commit, branch, revision.changed_paths(now.repo_root, commit)


def test_comparing_the_working_tree_in_fewer_processes_gives_the_step_by_step_answers(tmp_path: Path) -> None:
    """`compare_working_tree` (one `rev-parse` for the top directory and the base, one `status` for
    the revision and the changed paths) answers as `open_revision`, `resolve_commit` or
    `default_base`, and `changed_paths` do, from the project's folder below the top directory too."""
    from buildsys import revision

    file = commit_tree(tmp_path, {"proj/prefect.yaml": "name: x\n", "a.txt": "1\n", "b.txt": "1\n",
                                  ".gitignore": "*.log\n.buildsys/\n"}, "c") / "proj" / "prefect.yaml"
    git(tmp_path, "branch", "base")
    git(tmp_path, "update-ref", "refs/remotes/origin/main", "HEAD")
    (tmp_path / "a.txt").write_text("2\n")
    git(tmp_path, "mv", "b.txt", "c.txt")
    (tmp_path / "debug.log").write_text("x\n")
    (tmp_path / "proj" / ".buildsys").mkdir()
    (tmp_path / "proj" / ".buildsys" / "x").write_text("x\n")
    for base in ("base", "HEAD", None):
        quick = revision.compare_working_tree(file, base)
        assert quick is not None, base
        now, commit, branch, changed = _step_by_step(file, base)
        assert (quick.revision, quick.commit, quick.branch, quick.changed()) == (now, commit, branch, changed)
        assert quick.revision.dirty and changed["a.txt"] == "M" and changed["debug.log"] == "!"
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "clean")
    quick = revision.compare_working_tree(file, "base")
    assert quick is not None and quick.revision.dirty is False  # buildsys's own folder is no change
    assert (quick.revision, quick.commit, None, quick.changed()) == _step_by_step(file, "base")


def test_comparing_the_working_tree_leaves_the_open_cases_to_the_step_by_step_way(tmp_path: Path) -> None:
    """None (the caller asks step by step, which explains a failure) for a base git does not know
    or that reads as an option, outside a repository, and for an untracked folder that alone
    decides whether the working tree is dirty: `status` names the folder, not whether it holds a
    file outside a `.buildsys/` (`--untracked-files=all` would)."""
    from buildsys import revision

    file = repo(tmp_path, {"prefect.yaml": "name: x\n", ".gitignore": "*.log\n"})
    assert revision.compare_working_tree(file, "nope") is None
    assert revision.compare_working_tree(file, "--all") is None
    outside = tmp_path.parent / f"{tmp_path.name}-plain"
    outside.mkdir()
    (outside / "prefect.yaml").write_text("name: x\n")
    assert revision.compare_working_tree(outside / "prefect.yaml", "HEAD") is None
    (tmp_path / "sub" / ".buildsys").mkdir(parents=True)
    (tmp_path / "sub" / ".buildsys" / "cache.db").write_text("x")
    assert revision.compare_working_tree(file, "HEAD") is None
    assert open_revision(file).dirty is False  # what the step-by-step way says: only buildsys's files
    (tmp_path / "sub" / "new.py").write_text("x")
    assert revision.compare_working_tree(file, "HEAD") is None
    assert open_revision(file).dirty is True
    (tmp_path / "a.txt").write_text("x")  # dirty whatever the folder holds: answered
    quick = revision.compare_working_tree(file, "HEAD")
    assert quick is not None and quick.revision.dirty is True and quick.changed() == {"a.txt": "?", "sub/": "?"}


def test_comparing_the_working_tree_keeps_its_revision_for_the_plan_that_follows(tmp_path: Path) -> None:
    from buildsys import revision

    file = repo(tmp_path, {"prefect.yaml": "name: x\n"})
    with revision.reading_once():
        quick = revision.compare_working_tree(file, "HEAD")
        assert quick is not None and open_revision(file) is quick.revision
        assert revision.compare_working_tree(file, "HEAD") is None  # already read: the kept one serves
