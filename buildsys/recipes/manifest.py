"""A recipe and its manifest: what `buildsys init` renders into a new project.

A recipe is a folder with a manifest (`recipe.yaml`: description and fields) and template files.
Rendering substitutes `{{ field }}` placeholders (Prefect's syntax, keep-unresolved mode, so step
output placeholders such as `{{ build_image.image }}` survive), never runs code, never writes outside
the target directory and never overwrites a file unless forced (:mod:`buildsys.recipes.render`).
Git-hosted recipes are fetched by :mod:`buildsys.recipes.cache`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from buildsys.errors import BuildsysError
from buildsys.templating import PLACEHOLDER  # the one placeholder syntax

__all__ = [
    "MANIFEST",
    "PROJECT_FILE",
    "FieldSpec",
    "MissingFieldsError",
    "Recipe",
    "RecipeError",
    "RecipeSource",
    "ResolvedFields",
    "builtin_recipe",
    "builtin_recipes",
    "common_fields",
    "find_recipes",
    "infer_recipe_name",
    "load_recipe",
    "render_text",
    "resolve_fields",
]

MANIFEST = "recipe.yaml"
PROJECT_FILE = "prefect.yaml"
RECORD_KEY = "buildsys"
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


# ── loading ───────────────────────────────────────────────────────────────────────────────────


def _manifest_schema_text() -> str:
    return resources.files("buildsys.schemas").joinpath("recipe.schema.json").read_text("utf-8")


def load_recipe(directory: Path, source: RecipeSource) -> Recipe:
    """Read and validate ``directory/recipe.yaml``."""
    manifest = directory / MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        raise RecipeError(f"{directory} is not a recipe: it has no {MANIFEST}")
    raw = manifest.read_bytes()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{manifest}: not valid YAML: {exc}") from None
    _validate_manifest(manifest, raw, data)
    if not (directory / PROJECT_FILE).is_file():
        raise RecipeError(f"{directory} is not a recipe: it has no {PROJECT_FILE} template")
    return Recipe(
        name=str(data.get("name") or directory.name),
        description=str(data["description"]),
        fields=tuple(_field(name, spec) for name, spec in (data.get("fields") or {}).items()),
        directory=directory,
        source=source,
    )


def _validate_manifest(manifest: Path, raw: bytes, data: Any) -> None:
    """Check the manifest against its schema; a manifest that passed once (same bytes, same schema)
    is remembered in the cache, so a cached init does not pay for importing jsonschema."""
    schema_text = _manifest_schema_text()
    stamp = _validated_dir() / hashlib.sha256(raw + b"\0" + schema_text.encode()).hexdigest()
    if stamp.exists():
        return
    import jsonschema

    validator = jsonschema.Draft202012Validator(
        json.loads(schema_text), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors]
        raise RecipeError(f"{manifest}: invalid recipe manifest:\n" + "\n".join(lines))
    with contextlib.suppress(OSError):  # a read-only cache only costs speed
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()


def _validated_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "buildsys" / "recipes" / "validated"


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
    in_repo = any((d / ".git").exists() for d in (target, *target.parents))  # no git call when not
    remote = _git(target, "config", "--get", "remote.origin.url") if in_repo else None
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
