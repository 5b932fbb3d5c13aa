"""Flow identity from an entrypoint, read without importing user code (Prefect's AST fallback).

`path/file.py:func`, `path/file.py:Class.method`, `pkg.mod:func` and `pkg.mod.func` are accepted;
the flow name is `@flow(name=...)` when given as a literal, else the function name with `_` → `-`.
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Reads a file relative to the project root (posix path); None when it does not exist.
SourceReader = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Entrypoint:
    """An entrypoint split into the file that defines the flow and the qualified function name."""

    text: str  # as written, normalised (no leading "./")
    candidates: tuple[str, ...]  # files that may define it, relative to the project root
    qualname: str  # "func" or "Class.method"

    @property
    def function(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class FlowInfo:
    name: str
    docstring: str | None = None
    file: str | None = None  # the file it was read from; None when no file was found
    problem: str | None = None  # why the name is a guess (missing file, syntax error, no function)
    parameter_schema: dict[str, Any] | None = None  # from the signature, Prefect's shape


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


def flow_info(entrypoint: str, read: SourceReader) -> FlowInfo:
    """The flow's name and docstring; falls back to the function name (with a problem noted)."""
    ep = parse_entrypoint(entrypoint)
    fallback = default_flow_name(ep.function)
    for candidate in ep.candidates:
        source = read(candidate)
        if source is None:
            continue
        try:
            tree = ast.parse(source, filename=candidate)
        except SyntaxError as exc:
            return FlowInfo(
                fallback, None, candidate, f"{candidate} does not parse ({exc.msg}, line {exc.lineno})"
            )
        found = _find_flow(tree, ep.qualname)
        if found is None:
            return FlowInfo(fallback, None, candidate, f"{candidate} defines no function {ep.qualname!r}")
        name, doc, node = found
        schema = parameter_schema(node) if node is not None else None
        return FlowInfo(name or default_flow_name(ep.function), doc, candidate, None, schema)
    return FlowInfo(fallback, None, None, f"{' or '.join(ep.candidates)} not found")


FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _find_flow(tree: ast.Module, qualname: str) -> tuple[str | None, str | None, FunctionNode | None] | None:
    """(explicit flow name or None, docstring, the function) of `qualname`, or None if absent."""
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
            return _decorated_name(node.decorator_list, aliases), ast.get_docstring(node), node
    for node in body:  # `etl = flow(name="x")(impl)` or `etl = flow(impl, name="x")`
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == target for t in node.targets
        ):
            return _decorated_name([node.value], aliases), None, None
    return None


def _flow_aliases(tree: ast.Module) -> frozenset[str]:
    names = {"flow"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "prefect":
            names.update(a.asname or a.name for a in node.names if a.name == "flow")
    return frozenset(names)


def _decorated_name(decorators: list[ast.expr], aliases: frozenset[str]) -> str | None:
    for dec in decorators:
        call = dec
        while isinstance(call, ast.Call) and isinstance(call.func, ast.Call):  # flow(name=...)(fn)
            call = call.func
        if not isinstance(call, ast.Call) or not _is_flow(call.func, aliases):
            continue
        for kw in call.keywords:
            if kw.arg == "name" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                return kw.value.value
    return None


def _is_flow(func: ast.expr, aliases: frozenset[str]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in aliases
    return isinstance(func, ast.Attribute) and func.attr == "flow"


# Annotations whose JSON type is certain; anything else (models, dates, unions) accepts any value.
_JSON_TYPES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "list": "array",
    "List": "array",
    "tuple": "array",
    "dict": "object",
    "Dict": "object",
}


def parameter_schema(node: FunctionNode) -> dict[str, Any]:
    """The flow's parameters as Prefect's JSON schema, read from the signature (no import)."""
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = [*zip(positional, defaults, strict=True), *zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    properties: dict[str, Any] = {}
    required = []
    for position, (arg, default) in enumerate(pairs):
        if arg.arg in ("self", "cls") and position == 0:
            continue
        prop: dict[str, Any] = {"title": arg.arg, "position": len(properties)}
        kind = _json_type(arg.annotation)
        if kind:
            prop["type"] = kind
        if default is None:
            required.append(arg.arg)
        else:
            # a computed default is known only when the flow runs: left out
            with contextlib.suppress(ValueError, TypeError, SyntaxError):
                prop["default"] = ast.literal_eval(default)
        properties[arg.arg] = prop
    schema: dict[str, Any] = {"title": "Parameters", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _json_type(annotation: ast.expr | None) -> str | None:
    if isinstance(annotation, ast.Subscript):
        annotation = annotation.value
    if isinstance(annotation, ast.Attribute):
        return _JSON_TYPES.get(annotation.attr)
    if isinstance(annotation, ast.Name):
        return _JSON_TYPES.get(annotation.id)
    return None
