"""The schemas and templates buildsys ships (package `buildsys.schemas`), read as text.

Read from the package's folder when it is one (every ordinary install and checkout), so that a
command does not import `importlib.resources` (with zipfile, tempfile, shutil, bz2, lzma and random:
~10 ms of every plan and build); from `importlib.resources` otherwise (a zipped install)."""

from __future__ import annotations

import os


def schema_text(*parts: str) -> str:
    """The shipped file `parts` (e.g. "job-templates", "process.json") of `buildsys.schemas`;
    FileNotFoundError when there is none."""
    from importlib import import_module

    folder = os.path.dirname(import_module("buildsys.schemas").__file__ or "")
    if folder and os.path.isdir(folder):
        with open(os.path.join(folder, *parts), encoding="utf-8") as fh:
            return fh.read()
    from importlib.resources import files

    return files("buildsys.schemas").joinpath(*parts).read_text(encoding="utf-8")
