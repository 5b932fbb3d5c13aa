"""Rendering a recipe into a directory: plan every file first, then write.

Paths are checked after the fields are filled in (no absolute paths, no `..`, nothing in `.git`),
symlinks are refused in the recipe and in the target, every conflict is listed before anything is
written, and the project file gets a `buildsys: {recipe: …}` record so it can be rendered again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from buildsys.recipes.manifest import MANIFEST, PROJECT_FILE, RECORD_KEY, Recipe, RecipeError, render_text

__all__ = ["PlannedFile", "RecipeConflictError", "RenderResult", "plan_render", "read_record", "record_source",
           "render_recipe", "write_render"]

_SKIP_DIRS = {".git", ".buildsys", "__pycache__"}  # a recipe's own repository and caches never travel
_PROTECTED = (".git", ".buildsys")  # git's data and buildsys's caches (trusted when read): never written


class RecipeConflictError(RecipeError):
    """Rendering would overwrite files that already exist."""

    def __init__(self, conflicts: tuple[str, ...]) -> None:
        listing = "\n".join(f"  {c}" for c in conflicts)
        super().__init__(
            f"{len(conflicts)} file(s) already exist and would be overwritten:\n{listing}",
            hint="nothing was written; move them away or pass --force to overwrite",
        )
        self.conflicts = conflicts


@dataclass(frozen=True)
class PlannedFile:
    """One file a render will write: relative path, content and permission bits."""

    path: str
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class RenderResult:
    target: Path
    written: tuple[str, ...]
    overwritten: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = field(default=())



def plan_render(recipe: Recipe, values: Mapping[str, str]) -> list[PlannedFile]:
    """The files a render writes, with paths checked; refuses symlinks and escaping paths."""
    planned: list[PlannedFile] = []
    for source in _template_files(recipe.directory):
        rel = source.relative_to(recipe.directory).as_posix()
        path = _safe_relative(render_text(rel, values), rel)
        raw = source.read_bytes()
        try:
            content = render_text(raw.decode("utf-8"), values).encode("utf-8")
        except UnicodeDecodeError:
            content = raw  # binary files are copied as they are
        if path == PROJECT_FILE:
            content = _with_record(content, recipe, values)
        elif path.endswith((".yaml", ".yml")):
            _check_yaml(content, path, recipe)
        planned.append(PlannedFile(path, content, 0o755 if os.access(source, os.X_OK) else 0o644))
    return planned


def _template_files(directory: Path) -> list[Path]:
    files: list[Path] = []
    for current, dirs, names in os.walk(directory, followlinks=False):
        here = Path(current)
        for name in [*dirs, *names]:
            if (here / name).is_symlink():
                rel = (here / name).relative_to(directory)
                raise RecipeError(
                    f"recipe refused: {rel} is a symlink",
                    hint="recipes may only contain regular files and folders",
                )
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        files.extend(here / n for n in sorted(names) if not (here == directory and n == MANIFEST))
    return files


def _safe_relative(rendered: str, template: str) -> str:
    """A rendered path must stay relative and inside the target: no absolute paths, no `..`."""
    pure = PurePosixPath(rendered)
    if rendered.startswith(("/", "\\")) or pure.is_absolute() or re.match(r"^[A-Za-z]:", rendered):
        raise RecipeError(f"recipe refused: {template!r} renders to the absolute path {rendered!r}",
                          hint="a recipe may only write inside the target directory")
    if any(part in ("..", "") for part in rendered.split("/")) or "\\" in rendered:
        raise RecipeError(f"recipe refused: {template!r} renders to {rendered!r}, outside the target",
                          hint="a recipe may only write inside the target directory")
    for part in pure.parts:
        if part.casefold() in _PROTECTED:  # casefold: one folder on a case-insensitive file system
            raise RecipeError(f"recipe refused: {template!r} writes into {part}")
    return pure.as_posix()


def _check_yaml(content: bytes, path: str, recipe: Recipe) -> Any:
    try:
        return yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise RecipeError(
            f"recipe {recipe.name!r}: {path} is not valid YAML after filling in the fields: {exc}",
            hint="a field value probably contains characters YAML reads specially (quote it in the template)",
        ) from None


def _with_record(content: bytes, recipe: Recipe, values: Mapping[str, str]) -> bytes:
    """Append `buildsys: {recipe: …}` so the project can be re-rendered from the same source."""
    data = _check_yaml(content, PROJECT_FILE, recipe)
    if isinstance(data, dict) and RECORD_KEY in data:
        raise RecipeError(f"recipe {recipe.name!r}: its {PROJECT_FILE} must not declare {RECORD_KEY!r}")
    declared = {f.name for f in recipe.fields}
    record = {"name": recipe.name, **recipe.source.record(),
              "fields": {k: v for k, v in sorted(values.items()) if k in declared}}
    block = yaml.safe_dump({RECORD_KEY: {"recipe": record}}, sort_keys=False, default_flow_style=False)
    text = content.decode("utf-8").rstrip("\n")
    return (f"{text}\n\n# Where this project came from: `buildsys init` records the recipe, its commit\n"
            f"# and the fields so the project can be rendered again.\n{block}").encode()


def write_render(planned: list[PlannedFile], target: Path, *, force: bool = False) -> RenderResult:
    """Write planned files under ``target``; lists every conflict before writing anything."""
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    destinations = [(p, _destination(root, p.path)) for p in planned]
    conflicts = tuple(p.path for p, dest in destinations
                      if dest.exists() and dest.read_bytes() != p.content)
    if conflicts and not force:
        raise RecipeConflictError(conflicts)
    written: list[str] = []
    overwritten: list[str] = []
    unchanged: list[str] = []
    for p, dest in destinations:
        if dest.exists() and dest.read_bytes() == p.content:
            unchanged.append(p.path)
            continue
        (overwritten if dest.exists() else written).append(p.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _destination(root, p.path)  # re-check: a directory made above must not be a symlink
        dest.write_bytes(p.content)
        dest.chmod(p.mode)
    return RenderResult(root, tuple(written), tuple(overwritten), tuple(unchanged))


def _destination(root: Path, rel: str) -> Path:
    """``root/rel``, refused when an existing part of it is a symlink or resolves outside root."""
    dest = root / rel
    current = root
    for part in PurePosixPath(rel).parts:
        current = current / part
        if current.is_symlink():
            raise RecipeError(f"refusing to write {rel}: {current.relative_to(root)} is a symlink",
                              hint="a recipe never writes through symlinks")
    if not dest.resolve().is_relative_to(root):
        raise RecipeError(f"refusing to write {rel}: it resolves outside {root}")
    if dest.exists() and not dest.is_file():
        raise RecipeError(f"refusing to write {rel}: a directory or special file is in the way")
    return dest


def render_recipe(recipe: Recipe, target: Path, values: Mapping[str, str], *,
                  force: bool = False) -> RenderResult:
    """Plan then write: the whole render is refused before any file is written."""
    inside = [part for part in target.resolve().parts if part.casefold() in _PROTECTED]
    if inside:
        raise RecipeError(f"recipe refused: the target {target} is inside {inside[0]}",
                          hint="render a recipe into a project folder, not into git's or buildsys's own")
    return write_render(plan_render(recipe, values), target, force=force)


def read_record(project_file: Path) -> Mapping[str, Any] | None:
    """The `buildsys.recipe` record of a rendered project, if it has one."""
    try:
        data = yaml.safe_load(project_file.read_text("utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    section = data.get(RECORD_KEY) if isinstance(data, dict) else None
    record = section.get("recipe") if isinstance(section, dict) else None
    return record if isinstance(record, dict) else None


def record_source(record: Mapping[str, Any]) -> str:
    """The `--recipe` value that renders a recorded recipe again, pinned to its recorded commit."""
    source = str(record.get("source") or "")
    if source == "builtin":
        return str(record.get("name") or "")
    if source.startswith("git+"):
        spec = source + (f"@{record['commit']}" if record.get("commit") else "")
        return spec + (f"#{record['subdir']}" if record.get("subdir") else "")
    return source
