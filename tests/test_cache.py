"""Input globs: what a step's declared inputs expand to (the files its cache key covers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.cache import FileSet

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`


def tree(root: Path, files: list[str]) -> None:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(f)


def test_globs_honour_ignore_files_hidden_files_and_tool_folders(tmp_path: Path) -> None:
    tree(
        tmp_path,
        [
            "src/a.py", "src/b.py", "src/notes.log", "src/.hidden.py", "src/pkg/c.py", "src/pkg/d.log",
            "src/__pycache__/a.cpython-311.pyc", "src/build/out.py", ".venv/lib/x.py", "other/e.py",
        ],
    )
    (tmp_path / ".gitignore").write_text("*.log\nsrc/build/\n")
    files = FileSet(tmp_path)
    assert files.expand(["src/*"], tmp_path) == ["src/a.py", "src/b.py", "src/pkg/c.py"]
    assert files.expand(["src/*.py", "src/.*"], tmp_path) == ["src/.hidden.py", "src/a.py", "src/b.py"]
    assert files.expand([".venv/lib/*"], tmp_path) == []  # never inputs, whatever the glob says
    assert files.expand(["src/missing.py"], tmp_path) == ["src/missing.py"]  # absence is in the key
    # the folders whose listings a new file would change (not __pycache__: Python rewrites it)
    assert files.scanned == {str(tmp_path / p) for p in ("src", "src/pkg", "src/build")}
