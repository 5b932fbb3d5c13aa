"""Step name resolution: built-in names and Prefect aliases → entry-point plugins → import paths.

Built-in steps register through the same entry-point group (`buildsys.steps`) a third-party plugin
uses. Nothing is imported until a project uses a name; a plugin that fails to import disables only
the names it provides. Standard library only (the in-run runtime resolves pull steps with it).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import Diagnostic, ProjectError, StepError
from buildsys.records import Record
from buildsys.step import StepDef

if TYPE_CHECKING:
    from buildsys.model import StepSpec
    from buildsys.plugins import Entry

GROUP = "buildsys.steps"
BUILTIN_DIST = "buildsys"
_set = object.__setattr__

# Where the well-known Prefect integrations' steps come from, for install hints.
EXTRA_FOR_PREFIX = {
    "prefect_aws.": "buildsys[s3]",
    "prefect_gcp.": "buildsys[gcs]",
}


class StepInfo(Record):
    __slots__ = __match_args__ = ("name", "aliases", "package", "value")
    name: str
    aliases: tuple[str, ...]
    package: str  # the distribution that provides it
    value: str  # "module:attr"

    def __init__(
        self,
        name: str,
        aliases: tuple[str, ...],
        package: str,
        value: str,
    ) -> None:
        _set(self, "name", name)
        _set(self, "aliases", aliases)
        _set(self, "package", package)
        _set(self, "value", value)

    @property
    def builtin(self) -> bool:
        return self.package == BUILTIN_DIST


class _Claim(Record):
    __slots__ = __match_args__ = ("name", "value", "package", "ep")
    name: str
    value: str
    package: str
    ep: Entry

    def __init__(
        self,
        name: str,
        value: str,
        package: str,
        ep: Entry,
    ) -> None:
        _set(self, "name", name)
        _set(self, "value", value)
        _set(self, "package", package)
        _set(self, "ep", ep)


@lru_cache(maxsize=1)
def _claims() -> dict[str, list[_Claim]]:
    """Every entry point of the group, by name (several = a conflict, reported when used)."""
    from buildsys import plugins

    found: dict[str, list[_Claim]] = {}
    for ep in plugins.group(GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        claims = found.setdefault(ep.name, [])
        if not any(c.value == ep.value and c.package == dist for c in claims):
            claims.append(_Claim(ep.name, ep.value, dist, ep))
    return found


def refresh() -> None:
    """Forget the cached entry points (after installing a plugin in-process)."""
    from buildsys import plugins

    plugins.refresh()
    _claims.cache_clear()
    _loaded.clear()


def available() -> list[StepInfo]:
    """Every registered step, grouped by target: short name, aliases and the providing package."""
    by_value: dict[tuple[str, str], list[str]] = {}
    for name, claims in _claims().items():
        for c in claims:
            by_value.setdefault((c.value, c.package), []).append(name)
    infos = []
    for (value, package), names in by_value.items():
        names.sort(key=lambda n: (n.count("."), len(n), n))
        infos.append(StepInfo(names[0], tuple(names[1:]), package, value))
    infos.sort(key=lambda i: (not i.builtin, i.name))
    return infos


def conflicts() -> list[tuple[str, list[str]]]:
    """Names claimed by more than one package: (name, ["pkg (module:attr)", ...])."""
    return [
        (name, [f"{c.package} ({c.value})" for c in claims])
        for name, claims in sorted(_claims().items())
        if len({(c.value, c.package) for c in claims}) > 1
    ]


_loaded: dict[tuple[str, str], StepDef] = {}  # (name, root + file stamp) → step


def resolve(name: str, root: Path | None = None, *, requires: Sequence[str] = ()) -> StepDef:
    """The StepDef for a step name as written in a project file. Raises StepError with a hint."""
    key = (name, str(root) + _file_stamp(name, root))
    hit = _loaded.get(key)
    if hit is not None:
        return hit
    claims = _claims().get(name)
    if claims:
        stepdef = _from_entry_point(name, claims)
    else:
        stepdef = _from_import_path(name, root or Path.cwd(), requires)
    _loaded[key] = stepdef
    return stepdef


def resolve_steps(specs: Iterable[StepSpec], root: Path, *, install_missing: bool = False) -> dict[str, StepDef]:
    """Every step the specs name (by name), with each spec's inputs checked against its step's
    schema. Raises ProjectError listing every unknown step and bad input, located, before anything
    runs. `install_missing`: pip install a missing step's `requires` first (opt-in)."""
    from buildsys.schema import check_inputs

    steps: dict[str, StepDef] = {}
    problems: list[Diagnostic] = []
    for spec in specs:
        try:
            stepdef = steps.get(spec.name)
            if stepdef is None:
                if install_missing and spec.requires:
                    try:
                        resolve(spec.name, root)
                    except StepError:
                        install_requires(spec.requires)
                stepdef = steps[spec.name] = resolve(spec.name, root, requires=spec.requires)
        except StepError as exc:
            problems.append(Diagnostic("error", exc.message, spec.location, spec.path, exc.hint))
            continue
        problems.extend(check_inputs(spec, stepdef))
    if any(p.is_error for p in problems):
        raise ProjectError(problems)
    return steps


def resolve_import_path(name: str, root: Path) -> StepDef:
    """A step by its import path (`file.py:func`, `module:func`) without scanning entry points,
    for a caller that knows no plugin claims the name: a compiled project, whose cache key covers
    the installed packages. Scanning every distribution's entry points costs a build ~25 ms."""
    key = (name, str(root) + _file_stamp(name, root))
    hit = _loaded.get(key)
    if hit is None:
        hit = _loaded[key] = _from_import_path(name, root, ())
    return hit


def source_file(stepdef: StepDef) -> str | None:
    """The file that defines a step's function (a project-local file, a plugin's module)."""
    module = sys.modules.get(getattr(stepdef.func, "__module__", "") or "")
    source = getattr(module, "__file__", None)
    return os.path.abspath(source) if isinstance(source, str) else None


def value_of(name: str) -> str | None:
    """The "module:attr" an entry-point name points at (None for import-path steps)."""
    claims = _claims().get(name)
    if claims and len({(c.value, c.package) for c in claims}) == 1:
        return claims[0].value
    return None


def load_value(value: str, name: str) -> StepDef:
    """Import a step straight from "module:attr" (no entry-point scan)."""
    module, _, attr = value.partition(":")
    return _as_stepdef(_attr_chain(importlib.import_module(module), attr), name)


def _file_stamp(name: str, root: Path | None) -> str:
    """Project-local step files are reloaded when they change (watch mode is long-lived)."""
    if ".py:" not in name:
        return ""
    try:
        st = ((root or Path.cwd()) / name.rpartition(":")[0]).stat()
    except OSError:
        return ""
    return f"@{st.st_mtime_ns}:{st.st_size}"


def _from_entry_point(name: str, claims: list[_Claim]) -> StepDef:
    if len({(c.value, c.package) for c in claims}) > 1:
        both = " and ".join(f"{c.package} ({c.value})" for c in claims)
        raise StepError(
            f"step name {name!r} is claimed by more than one plugin: {both}",
            hint="uninstall one of them, or refer to the step by its import path",
        )
    claim = claims[0]
    try:
        obj = claim.ep.load()
    except Exception as exc:  # a broken plugin disables only itself
        raise StepError(
            f"plugin {claim.package} failed to import step {name!r} ({claim.value}): "
            f"{type(exc).__name__}: {exc}",
            hint=f"fix or reinstall {claim.package}; other steps are unaffected",
        ) from None
    return _as_stepdef(obj, name)


def _as_stepdef(obj: Any, name: str) -> StepDef:
    if isinstance(obj, StepDef):
        return obj
    if callable(obj):
        return StepDef.from_callable(obj, name)
    raise StepError(f"{name!r} does not name a step function (got {type(obj).__name__})")


def _from_import_path(name: str, root: Path, requires: Sequence[str]) -> StepDef:
    """Prefect-compatible: `path/file.py:func`, `module:func`, or `module.func` (split at the last dot)."""
    try:
        if ".py:" in name:
            file, _, attr = name.rpartition(":")
            obj = _attr_chain(_load_file(root / file), attr)
        elif ":" in name:
            module, _, attr = name.partition(":")
            obj = _attr_chain(_import(module, root), attr)
        elif "." in name:
            module, _, attr = name.rpartition(".")
            obj = _attr_chain(_import(module, root), attr)
        else:
            raise ImportError(name)
    except (ImportError, AttributeError, FileNotFoundError, SyntaxError) as exc:
        raise StepError(f"unknown step {name!r}", hint=_install_hint(name, requires, exc)) from None
    return _as_stepdef(obj, name)


@contextlib.contextmanager
def _on_path(directory: Path) -> Iterator[None]:
    """Project-local modules import while `directory` is first on sys.path (as Prefect does)."""
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(directory))


def _import(module: str, root: Path) -> Any:
    with _on_path(root):
        return importlib.import_module(module)


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(str(path))
    mod_name = f"buildsys_local_step_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    with _on_path(path.parent):
        spec.loader.exec_module(module)
    return module


def _attr_chain(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _install_hint(name: str, requires: Sequence[str], exc: BaseException) -> str:
    for prefix, extra in EXTRA_FOR_PREFIX.items():
        if name.startswith(prefix):
            return f"install it with: pip install '{extra}'"
    if requires:
        return (
            f"it is not installed; install it with: pip install {' '.join(repr(r) for r in requires)} "
            "(or pass --install-requires)"
        )
    detail = f" ({type(exc).__name__}: {exc})" if not isinstance(exc, ImportError) or str(exc) != name else ""
    return (
        "not a built-in step, not provided by an installed plugin and not importable"
        f"{detail}; `buildsys steps ls` lists the available steps"
    )


def install_requires(requires: Sequence[str]) -> None:
    """Opt-in (--install-requires): pip install a step's `requires` into this interpreter."""
    import subprocess

    if not requires:
        return
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", *requires], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise StepError(
            f"pip could not install {' '.join(requires)}",
            hint=(proc.stderr or proc.stdout).strip().splitlines()[-1] if (proc.stderr or proc.stdout) else None,
        )
    importlib.invalidate_caches()
    refresh()
