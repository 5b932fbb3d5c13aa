"""Recipes: template folders that `buildsys init` renders into a new project.

A recipe is a folder with a manifest (`recipe.yaml`: description and fields) and template files.
Rendering substitutes `{{ field }}` placeholders (Prefect's syntax, keep-unresolved mode, so step
output placeholders such as `{{ build_image.image }}` survive), never runs code, never writes outside
the target directory and never overwrites a file unless forced. Git-hosted recipes are fetched by
:mod:`buildsys.recipe_cache`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from buildsys.errors import BuildsysError

__all__ = [
    "MANIFEST",
    "PROJECT_FILE",
    "FieldSpec",
    "MissingFieldsError",
    "PlannedFile",
    "Recipe",
    "RecipeConflictError",
    "RecipeError",
    "RecipeSource",
    "RenderResult",
    "ResolvedFields",
    "builtin_recipe",
    "builtin_recipes",
    "common_fields",
    "find_recipes",
    "infer_recipe_name",
    "load_recipe",
    "plan_render",
    "read_record",
    "render_recipe",
    "render_text",
    "resolve_fields",
    "write_render",
]

MANIFEST = "recipe.yaml"
PROJECT_FILE = "prefect.yaml"
RECORD_KEY = "buildsys"
PLACEHOLDER = re.compile(r"\{\{\s*([\w.\-\[\]$]+)\s*\}\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SKIP_DIRS = {".git", "__pycache__"}


class RecipeError(BuildsysError):
    """A recipe cannot be found, loaded, filled in or rendered."""


class MissingFieldsError(RecipeError):
    """Required fields have no value; carries them so a terminal can prompt for each."""

    def __init__(self, recipe: str, missing: tuple[FieldSpec, ...]) -> None:
        listing = "\n".join(f"  {f.name}: {f.description}" for f in missing)
        flags = " ".join(f"--field {f.name}=…" for f in missing)
        super().__init__(
            f"recipe {recipe!r} needs values for {len(missing)} field(s):\n{listing}",
            hint=f"pass {flags}",
        )
        self.missing = missing


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
class FieldSpec:
    """One manifest field: what the user fills in at init."""

    name: str
    description: str
    default: str | None = None
    env: str | None = None
    pattern: str | None = None
    enum: tuple[str, ...] = ()
    required: bool = False

    def problem(self, value: str) -> str | None:
        """Why ``value`` is not acceptable for this field, or None."""
        if _CONTROL.search(value):
            return "must be a single line without control characters"
        if self.enum and value not in self.enum:
            return f"must be one of {', '.join(self.enum)}"
        if self.pattern and not re.fullmatch(self.pattern, value):
            return f"must match {self.pattern}"
        return None


@dataclass(frozen=True)
class RecipeSource:
    """Where a recipe came from: a built-in, a git repository (pinned to a commit) or a folder."""

    kind: str  # builtin | git | path
    location: str  # recipe name for built-ins, the git URL, or the folder
    rev: str | None = None  # the ref the user asked for
    commit: str | None = None  # the commit it resolved to
    subdir: str | None = None

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = {"source": self.location if self.kind != "builtin" else "builtin"}
        if self.kind == "git":
            data["source"] = f"git+{self.location}"
        for key in ("commit", "subdir"):  # the project schema's record; the rev is pinned by commit
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


@dataclass(frozen=True)
class Recipe:
    """A loaded recipe: its manifest and the folder holding its templates."""

    name: str
    description: str
    fields: tuple[FieldSpec, ...]
    directory: Path
    source: RecipeSource

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True)
class ResolvedFields:
    """Field values ready for rendering, and the given fields the recipe does not know."""

    values: Mapping[str, str]
    unknown: tuple[str, ...] = ()


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


# ── loading ───────────────────────────────────────────────────────────────────────────────────


def _manifest_schema() -> dict[str, Any]:
    text = resources.files("buildsys.schemas").joinpath("recipe.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def load_recipe(directory: Path, source: RecipeSource) -> Recipe:
    """Read and validate ``directory/recipe.yaml``."""
    import jsonschema

    manifest = directory / MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        raise RecipeError(f"{directory} is not a recipe: it has no {MANIFEST}")
    try:
        data = yaml.safe_load(manifest.read_text("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{manifest}: not valid YAML: {exc}") from None
    validator = jsonschema.Draft202012Validator(
        _manifest_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors]
        raise RecipeError(f"{manifest}: invalid recipe manifest:\n" + "\n".join(lines))
    if not (directory / PROJECT_FILE).is_file():
        raise RecipeError(f"{directory} is not a recipe: it has no {PROJECT_FILE} template")
    return Recipe(
        name=str(data.get("name") or directory.name),
        description=str(data["description"]),
        fields=tuple(_field(name, spec) for name, spec in (data.get("fields") or {}).items()),
        directory=directory,
        source=source,
    )


def _field(name: str, spec: Mapping[str, Any]) -> FieldSpec:
    default = spec.get("default")
    if isinstance(default, bool):
        default = "true" if default else "false"
    return FieldSpec(
        name=name,
        description=str(spec["description"]),
        default=None if default is None else str(default),
        env=spec.get("env"),
        pattern=spec.get("pattern"),
        enum=tuple(spec.get("enum") or ()),
        required=bool(spec.get("required", False)),
    )


def _builtin_root() -> Path:
    return Path(str(resources.files("buildsys.builtin_recipes")))


def builtin_recipes() -> list[Recipe]:
    """Every recipe shipped with buildsys, sorted by name."""
    root = _builtin_root()
    found = [
        load_recipe(d, RecipeSource("builtin", d.name))
        for d in sorted(root.iterdir())
        if d.is_dir() and (d / MANIFEST).is_file()
    ]
    return sorted(found, key=lambda r: r.name)


def builtin_recipe(name: str) -> Recipe:
    """The built-in recipe called ``name``; an unknown name lists the known ones."""
    directory = _builtin_root() / name
    if name and "/" not in name and (directory / MANIFEST).is_file():
        return load_recipe(directory, RecipeSource("builtin", name))
    known = ", ".join(r.name for r in builtin_recipes())
    raise RecipeError(
        f"unknown recipe {name!r}",
        hint=f"built-in recipes: {known}; or a git source: git+https://host/repo.git[@REV][#SUBDIR]",
    )


def find_recipes(root: Path, source: RecipeSource, *, max_depth: int = 3) -> list[Recipe]:
    """The recipes in a tree (a folder with a recipe.yaml), each with its subdir recorded."""
    found: list[Recipe] = []
    for directory in _walk_dirs(root, max_depth):
        if (directory / MANIFEST).is_file():
            rel = directory.relative_to(root).as_posix()
            sub = None if rel == "." else rel
            found.append(load_recipe(directory, RecipeSource(source.kind, source.location,
                                                             source.rev, source.commit, sub)))
    return found


def _walk_dirs(root: Path, max_depth: int) -> Iterator[Path]:
    for current, dirs, _files in os.walk(root):
        depth = len(Path(current).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        if depth >= max_depth:
            dirs[:] = []
        yield Path(current)


# ── fields ────────────────────────────────────────────────────────────────────────────────────


def common_fields(target: Path) -> dict[str, str]:
    """Values every recipe can use (as Prefect's init computes them)."""
    target = target.resolve()
    values = {"directory": str(target), "name": target.name}
    remote = _git(target, "config", "--get", "remote.origin.url")
    if remote:
        values["repository"] = remote
    branch = _git(target, "symbolic-ref", "--short", "-q", "HEAD") if (target / ".git").exists() else None
    values["branch"] = branch if branch and branch != "HEAD" else "main"
    if (target / "Dockerfile").is_file():
        values["dockerfile"] = "Dockerfile"
    return values


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def infer_recipe_name(target: Path) -> str:
    """Prefect's inference: remote + Dockerfile → docker-git, remote → git, Dockerfile → docker, else local."""
    common = common_fields(target)
    has_remote, has_dockerfile = "repository" in common, "dockerfile" in common
    if has_remote and has_dockerfile:
        return "docker-git"
    if has_remote:
        return "git"
    return "docker" if has_dockerfile else "local"


def resolve_fields(
    recipe: Recipe,
    given: Mapping[str, str],
    *,
    common: Mapping[str, str],
    env: Mapping[str, str] | None = None,
) -> ResolvedFields:
    """Given values, else the env override, else the default (rendered); checks every value.

    Raises MissingFieldsError for required fields left without a value and RecipeError listing
    every invalid value.
    """
    env = os.environ if env is None else env
    values: dict[str, str] = dict(common)
    missing: list[FieldSpec] = []
    for spec in recipe.fields:
        if spec.name in given:
            values[spec.name] = given[spec.name]
        elif spec.env and env.get(spec.env):
            values[spec.name] = env[spec.env]
        elif spec.default is not None and not PLACEHOLDER.search(
            default := render_text(spec.default, {**common, **given})
        ):
            values[spec.name] = default  # a default naming an unknown value (no git remote…) is no default
        elif spec.required:
            missing.append(spec)
        else:
            values[spec.name] = ""
    if missing:
        raise MissingFieldsError(recipe.name, tuple(missing))
    problems = [
        f"  {spec.name}={values[spec.name]!r}: {why}"
        for spec in recipe.fields
        if (why := spec.problem(values[spec.name])) is not None
        and (spec.required or values[spec.name] != "" or spec.name in given)
    ]
    if problems:
        raise RecipeError(f"invalid field value(s) for recipe {recipe.name!r}:\n" + "\n".join(problems))
    declared = {f.name for f in recipe.fields} | set(common)
    unknown = tuple(sorted(k for k in given if k not in declared))
    values.update({k: v for k, v in given.items() if k in common})
    return ResolvedFields(values=values, unknown=unknown)


def render_text(text: str, values: Mapping[str, str]) -> str:
    """Substitute known `{{ name }}` placeholders; leave every other placeholder as written."""

    def replace(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        return match.group(0) if value is None else value

    return PLACEHOLDER.sub(replace, text)


# ── rendering ─────────────────────────────────────────────────────────────────────────────────


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
    if ".git" in pure.parts:
        raise RecipeError(f"recipe refused: {template!r} writes into .git")
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
