"""A git repository in a test's temp dir: files written, the whole tree committed on `main`.

    from tests.services.gitrepo import commit_tree, git, write

    root = commit_tree(tmp_path / "shop", {"prefect.yaml": PROJECT, "flows/a.py": "..."})
    write(root, {"flows/a.py": "changed"})
    git(root, "commit", "-q", "-am", "change a")

The commits carry their own author (``-c user.name/user.email``), so they do not depend on the
suite's git environment.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

IDENTITY = ("-c", "user.name=buildsys tests", "-c", "user.email=tests@buildsys.invalid")


def git(cwd: Path, *args: str) -> str:
    """Run git in `cwd`; its stdout, stripped (a failure raises CalledProcessError)."""
    return subprocess.run(["git", *IDENTITY, *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def write(root: Path, files: Mapping[str, str]) -> Path:
    """Write `files` (relative path: text) under `root`, making their folders; returns `root`."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def commit_tree(root: Path, files: Mapping[str, str], message: str = "base") -> Path:
    """`files` written under `root`, a new repository there (branch `main`) and everything in it
    committed; returns `root`."""
    write(root, files)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return root
