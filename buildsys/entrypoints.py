"""Flow identity from an entrypoint, read without importing user code (Prefect's AST fallback).

`path/file.py:func`, `path/file.py:Class.method`, `pkg.mod:func` and `pkg.mod.func` are accepted;
the flow name is `@flow(name=...)` when given as a literal, else the function name with `_` → `-`.
The flow's version is `@flow(version=...)`, else Prefect's default: the MD5 of the flow's file.
The parameter schema comes from the signature (buildsys.paramschema), as Prefect generates it.
Entrypoint files are untrusted: regular files only, a size limit, and a nesting limit.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable
from typing import Any

from buildsys.errors import BuildsysError
from buildsys.records import Record

_set = object.__setattr__

# Reads a file relative to the project root (posix path); None when it does not exist. It raises
# UnreadableFile (buildsys.sourcefiles) for anything that is not a regular file of a sane size.
SourceReader = Callable[[str], "str | bytes | None"]

# The parser's own stack limit turns deep nesting into MemoryError; this many levels of anything
# is far beyond real flow code, and keeps every later walk of the tree far from the recursion limit.
MAX_NESTING = 100


class EntrypointError(BuildsysError):
    """An entrypoint file that cannot be analysed at all (pathological nesting)."""


class Entrypoint(Record):
    """An entrypoint split into the file that defines the flow and the qualified function name."""

    __slots__ = __match_args__ = ("text", "candidates", "qualname")
    text: str  # as written, normalised (no leading "./")
    candidates: tuple[str, ...]  # files that may define it, relative to the project root
    qualname: str  # "func" or "Class.method"

    def __init__(
        self,
        text: str,
        candidates: tuple[str, ...],
        qualname: str,
    ) -> None:
        _set(self, "text", text)
        _set(self, "candidates", candidates)
        _set(self, "qualname", qualname)

    @property
    def function(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]


class FlowInfo(Record):
    __slots__ = __match_args__ = ("name", "docstring", "file", "problem", "parameter_schema", "version")
    name: str
    docstring: str | None
    file: str | None  # the file it was read from; None when no file was found
    problem: str | None  # why the name is a guess (missing file, syntax error, no function)
    parameter_schema: dict[str, Any] | None  # from the signature, Prefect's shape
    version: str | None  # `@flow(version=...)`, else the MD5 of the flow's file (Prefect's)

    def __init__(
        self,
        name: str,
        docstring: str | None = None,
        file: str | None = None,
        problem: str | None = None,
        parameter_schema: dict[str, Any] | None = None,
        version: str | None = None,
    ) -> None:
        _set(self, "name", name)
        _set(self, "docstring", docstring)
        _set(self, "file", file)
        _set(self, "problem", problem)
        _set(self, "parameter_schema", parameter_schema)
        _set(self, "version", version)


def parse_entrypoint(text: str) -> Entrypoint:
    """Split an entrypoint; raises ValueError with a reason people understand."""
    value = text.strip()
    while value.startswith("./"):
        value = value[2:]
    if ":" in value:
        module, _, qualname = value.rpartition(":")
        if not module or not qualname:
            raise ValueError(f"entrypoint {text!r} must look like path/file.py:function")
        if module.endswith(".py"):
            return Entrypoint(value, (module,), qualname)
        return Entrypoint(value, _module_files(module), qualname)
    module, _, qualname = value.rpartition(".")
    if not module or not qualname:
        raise ValueError(
            f"entrypoint {text!r} must look like path/file.py:function or package.module.function"
        )
    return Entrypoint(value, _module_files(module), qualname)


def _module_files(module: str) -> tuple[str, ...]:
    base = module.replace(".", "/")
    return (f"{base}.py", f"{base}/__init__.py")


def default_flow_name(function: str) -> str:
    """Prefect's default: the function's name with underscores turned into dashes."""
    return function.replace("_", "-")


def file_version(data: bytes) -> str:
    """Prefect's default flow version: the MD5 hex digest of the flow's source file."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def parse_source(source: str, filename: str) -> ast.Module:
    """Parse untrusted Python source. SyntaxError for bad code; EntrypointError when it is nested
    too deeply to analyse (the parser would otherwise raise MemoryError or RecursionError)."""
    try:
        tree = ast.parse(source, filename=filename)
    except (MemoryError, RecursionError):
        raise EntrypointError(
            f"{filename} is nested too deeply to be read (more than the parser allows)",
            hint="buildsys reads flow files without running them and refuses pathological nesting",
        ) from None
    except ValueError as exc:  # NUL bytes
        raise SyntaxError(str(exc)) from None
    if _depth_exceeds(tree, MAX_NESTING):
        raise EntrypointError(
            f"{filename} nests expressions or statements more than {MAX_NESTING} levels deep",
            hint="buildsys reads flow files without running them and refuses pathological nesting",
        )
    return tree


def _depth_exceeds(tree: ast.AST, limit: int) -> bool:
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return False


def flow_info(entrypoint: str, read: SourceReader) -> FlowInfo:
    """The flow's name, docstring, version and parameter schema; falls back to the function name
    (with a problem noted) when the file is missing or does not define it."""
    from buildsys.paramschema import parameter_schema

    ep = parse_entrypoint(entrypoint)
    fallback = default_flow_name(ep.function)
    for candidate in ep.candidates:
        raw = read(candidate)
        if raw is None:
            continue
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        version = file_version(data)
        source = data.decode("utf-8-sig", errors="replace")
        try:
            tree = parse_source(source, candidate)
        except SyntaxError as exc:
            problem = f"{candidate} does not parse ({exc.msg}, line {exc.lineno})"
            return FlowInfo(fallback, None, candidate, problem, version=version)
        found = _find_flow(tree, ep.qualname)
        if found is None:
            problem = f"{candidate} defines no function {ep.qualname!r}"
            return FlowInfo(fallback, None, candidate, problem, version=version)
        decorator, doc, node = found
        schema = parameter_schema(node, tree, doc) if node is not None else None
        return FlowInfo(
            _literal(decorator, "name") or default_flow_name(ep.function),
            _literal(decorator, "description") or doc,
            candidate,
            None,
            schema,
            _literal(decorator, "version") or version,
        )
    return FlowInfo(fallback, None, None, f"{' or '.join(ep.candidates)} not found")


FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _find_flow(tree: ast.Module, qualname: str) -> tuple[ast.Call | None, str | None, FunctionNode | None] | None:
    """(the `@flow(...)` call or None, docstring, the function) of `qualname`, or None if absent."""
    body: list[ast.stmt] = tree.body
    parts = qualname.split(".")
    for part in parts[:-1]:
        cls = next((n for n in body if isinstance(n, ast.ClassDef) and n.name == part), None)
        if cls is None:
            return None
        body = cls.body
    target = parts[-1]
    aliases = _flow_aliases(tree)
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == target:
            return _flow_call(node.decorator_list, aliases), ast.get_docstring(node), node
    for node in body:  # `etl = flow(name="x")(impl)` or `etl = flow(impl, name="x")`
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == target for t in node.targets):
            impl = _wrapped_function(node.value, body)
            doc = ast.get_docstring(impl) if impl is not None else None
            return _flow_call([node.value], aliases), doc, impl
    return None


def _wrapped_function(value: ast.expr, body: list[ast.stmt]) -> FunctionNode | None:
    """The function `flow(...)(impl)` / `flow(impl, ...)` wraps, when it is defined next to it."""
    if not isinstance(value, ast.Call):
        return None
    args = value.args or (value.func.args if isinstance(value.func, ast.Call) else [])
    if not args or not isinstance(args[0], ast.Name):
        return None
    name = args[0].id
    return next(
        (n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name), None
    )


def _flow_aliases(tree: ast.Module) -> frozenset[str]:
    names = {"flow"}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "prefect":
            names.update(a.asname or a.name for a in node.names if a.name == "flow")
    return frozenset(names)


def _flow_call(decorators: list[ast.expr], aliases: frozenset[str]) -> ast.Call | None:
    for dec in decorators:
        call = dec
        while isinstance(call, ast.Call) and isinstance(call.func, ast.Call):  # flow(name=...)(fn)
            call = call.func
        if isinstance(call, ast.Call) and _is_flow(call.func, aliases):
            return call
    return None


def _literal(call: ast.Call | None, keyword: str) -> str | None:
    """A string keyword argument of the `@flow(...)` call, when written as a literal."""
    if call is None:
        return None
    for kw in call.keywords:
        if kw.arg == keyword and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
            return kw.value.value
    return None


def _is_flow(func: ast.expr, aliases: frozenset[str]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in aliases
    return isinstance(func, ast.Attribute) and func.attr == "flow"
