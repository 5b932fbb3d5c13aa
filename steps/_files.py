"""The files an upload step sends, and how download steps compare and place them.

Uploads send everything under a root minus ignore patterns in gitignore syntax (Prefect's
``.prefectignore``, matched with ``pathspec``, imported only when needed so that the pull steps stay
stdlib-only). The project's own ``.buildsys/`` state directory is never uploaded.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

ALWAYS_IGNORED = (".buildsys/",)


def read_patterns(ignore_file: Path) -> list[str]:
    """The patterns of an ignore file; a missing file means no patterns (as in Prefect)."""
    if not ignore_file.is_file():
        return []
    return ignore_file.read_text(encoding="utf-8", errors="replace").splitlines()


def project_files(root: Path, patterns: Iterable[str] = ()) -> list[str]:
    """Sorted POSIX paths (relative to ``root``) of the regular files not matched by ``patterns``."""
    import pathspec  # build/push time only: keeps the pull steps stdlib-only

    spec = pathspec.GitIgnoreSpec.from_lines([*ALWAYS_IGNORED, *patterns])
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        # As in git, files inside an ignored directory cannot be re-included: prune it.
        dirnames[:] = sorted(d for d in dirnames if not spec.match_file(prefix + d + "/"))
        for name in filenames:
            rel = prefix + name
            if os.path.isfile(os.path.join(dirpath, name)) and not spec.match_file(rel):
                found.append(rel)
    return sorted(found)


def as_globs(paths: Iterable[str]) -> list[str]:
    """Exact paths written as globs that match only themselves (for a step's ``files`` hook)."""
    return [glob.escape(p) for p in paths]


def md5_file(path: Path) -> str:
    """Hex MD5 of a file (what S3 reports as the ETag of a single-part upload)."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safe_destination(root: Path, relative: str) -> Path | None:
    """``root / relative`` unless the relative path escapes ``root`` (then ``None``)."""
    target = (root / relative).resolve()
    base = root.resolve()
    return target if target == base or base in target.parents else None


def prefix_of(folder: str) -> str:
    """The object-key prefix of a folder: ``"a/b/"`` for ``"/a/b/"``; ``""`` for the bucket root."""
    cleaned = folder.strip().strip("/")
    return f"{cleaned}/" if cleaned else ""


def replace_atomically(dest: Path, fill: Callable[[Path], None]) -> None:
    """Write ``dest`` through a temporary sibling, so a failed download never leaves half a file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # not at import: the build steps that import this module never need it

    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fill(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
