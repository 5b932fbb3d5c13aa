"""A flow's parameter schema from its source, shaped exactly as Prefect stores it, without running it.

Prefect builds the schema with pydantic from the imported function (titles, positions, defaults,
descriptions from the Google-style docstring, `definitions` + `$ref` for models and enums). This
module produces the same JSON from the syntax tree for what a file shows: builtins and their
generics, `typing` forms, dates/UUIDs/paths, and the pydantic models and enums the file defines.
A type it cannot see (imported from another module, computed) accepts anything (`{}`), which is
also what Prefect falls back to for types it cannot describe.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
Schema = dict[str, Any]

_SIMPLE: Mapping[str, Schema] = {
    "builtins.str": {"type": "string"},
    "builtins.int": {"type": "integer"},
    "builtins.float": {"type": "number"},
    "builtins.bool": {"type": "boolean"},
    "builtins.bytes": {"format": "binary", "type": "string"},
    "builtins.None": {"type": "null"},
    "builtins.list": {"items": {}, "type": "array"},
    "builtins.tuple": {"items": {}, "type": "array"},
    "builtins.set": {"items": {}, "type": "array", "uniqueItems": True},
    "builtins.frozenset": {"items": {}, "type": "array", "uniqueItems": True},
    "builtins.dict": {"additionalProperties": True, "type": "object"},
    "datetime.datetime": {"format": "date-time", "type": "string"},
    "datetime.date": {"format": "date", "type": "string"},
    "datetime.time": {"format": "time", "type": "string"},
    "datetime.timedelta": {"format": "duration", "type": "string"},
    "uuid.UUID": {"format": "uuid", "type": "string"},
    "pathlib.Path": {"format": "path", "type": "string"},
    "pathlib.PurePath": {"format": "path", "type": "string"},
}
_ARRAYS = {"list", "List", "Sequence", "MutableSequence", "Iterable", "Collection", "deque"}
_SETS = {"set", "Set", "frozenset", "FrozenSet", "AbstractSet", "MutableSet"}
_MAPS = {"dict", "Dict", "Mapping", "MutableMapping", "OrderedDict", "defaultdict"}
_BUILTIN_NAMES = {"str", "int", "float", "bool", "bytes", "list", "tuple", "set", "frozenset", "dict", "object"}
_ENUM_BASES = {"enum.Enum", "enum.IntEnum", "enum.StrEnum", "enum.Flag", "enum.IntFlag"}
_MODEL_BASES = {"pydantic.BaseModel", "pydantic.main.BaseModel"}


def parameter_schema(node: FunctionNode, tree: ast.Module, docstring: str | None) -> Schema:
    """The flow's parameters as Prefect's JSON schema (`parameter_openapi_schema`)."""
    builder = _Builder(tree)
    docs = parameter_docstrings(docstring)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for position, (arg, default, kind) in enumerate(_signature(node)):
        if arg.arg in ("self", "cls"):
            continue  # Prefect counts them in `position` but leaves them out
        prop = builder.annotation(arg.annotation)
        default_value: Any
        if kind == "var_positional":
            prop, default_value = {"items": prop, "type": "array"}, []
        elif kind == "var_keyword":
            prop, default_value = {"additionalProperties": prop or True, "type": "object"}, {}
        elif default is None:
            default_value = _NO_DEFAULT
            required.append(arg.arg)
        else:
            default_value = builder.default(default)
        prop = {**prop, "title": arg.arg, "position": position}
        if arg.arg in docs:
            prop["description"] = docs[arg.arg]
        if default_value is not _NO_DEFAULT and default_value is not _UNKNOWN_DEFAULT:
            prop["default"] = default_value
        properties[arg.arg] = prop
    schema: Schema = {"title": "Parameters", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if builder.definitions:
        schema["definitions"] = dict(sorted(builder.definitions.items()))
    return schema


_NO_DEFAULT = object()
_UNKNOWN_DEFAULT = object()  # computed when the module runs: not in the schema


def _signature(node: FunctionNode) -> list[tuple[ast.arg, ast.expr | None, str]]:
    """(argument, default expression, kind) in signature order."""
    a = node.args
    positional = [*a.posonlyargs, *a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    out = [(arg, d, "positional") for arg, d in zip(positional, defaults, strict=True)]
    if a.vararg is not None:
        out.append((a.vararg, None, "var_positional"))
    out += [(arg, d, "keyword") for arg, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
    if a.kwarg is not None:
        out.append((a.kwarg, None, "var_keyword"))
    return out


class _Builder:
    """Turns annotation expressions into pydantic-shaped JSON schema, collecting definitions."""

    def __init__(self, tree: ast.Module) -> None:
        self.imports = _imports(tree)
        self.classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        self.definitions: dict[str, Schema] = {}
        self._building: set[str] = set()

    # --- names ------------------------------------------------------------------------------

    def qualified(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            if node.id in self.imports:
                return self.imports[node.id]
            if node.id in self.classes:
                return f"local.{node.id}"
            if node.id in _BUILTIN_NAMES:
                return f"builtins.{node.id}"
            return None
        if isinstance(node, ast.Attribute):
            base = self.qualified(node.value)
            return f"{base}.{node.attr}" if base else None
        if isinstance(node, ast.Constant) and node.value is None:
            return "builtins.None"
        return None

    def kind_of_class(self, name: str, seen: frozenset[str] = frozenset()) -> str | None:
        """"enum", "model" or None for a class defined in this file."""
        cls = self.classes.get(name)
        if cls is None or name in seen:
            return None
        for base in cls.bases:
            q = self.qualified(base) or ""
            if q in _ENUM_BASES:
                return "enum"
            if q in _MODEL_BASES:
                return "model"
            if q.startswith("local."):
                inherited = self.kind_of_class(q[6:], seen | {name})
                if inherited:
                    return inherited
        return None

    # --- annotations ------------------------------------------------------------------------

    def annotation(self, node: ast.expr | None) -> Schema:
        if node is None:
            return {}
        if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "Forward" / postponed
            try:
                node = ast.parse(node.value, mode="eval").body
            except (SyntaxError, ValueError, MemoryError, RecursionError):
                return {}
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self.union([node.left, node.right])
        if isinstance(node, ast.Subscript):
            return self.generic(node)
        q = self.qualified(node)
        if q is None:
            return {}
        if q.startswith("local."):
            return self.local(q[6:])
        return dict(_SIMPLE.get(_builtin_alias(q), {}))

    def generic(self, node: ast.Subscript) -> Schema:
        q = self.qualified(node.value) or ""
        head = q.rsplit(".", 1)[-1]
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Optional":
            return self.union([args[0], ast.Constant(None)])
        if head == "Union":
            return self.union(args)
        if head == "Annotated":
            return self.annotation(args[0])
        if head == "Literal":
            return _literal_schema(args)
        if head in _ARRAYS:
            return {"items": self.annotation(args[0]), "type": "array"}
        if head in _SETS:
            return {"items": self.annotation(args[0]), "type": "array", "uniqueItems": True}
        if head in _MAPS and len(args) == 2:
            values = self.annotation(args[1])
            return {"additionalProperties": values or True, "type": "object"}
        if head in ("tuple", "Tuple"):
            if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis:
                return {"items": self.annotation(args[0]), "type": "array"}
            items = [self.annotation(a) for a in args]
            return {"maxItems": len(items), "minItems": len(items), "prefixItems": items, "type": "array"}
        return {}

    def union(self, members: list[ast.expr]) -> Schema:
        flat: list[Schema] = []
        for m in members:
            s = self.annotation(m)
            for part in s["anyOf"] if set(s) == {"anyOf"} else [s]:
                if part not in flat:
                    flat.append(part)
        return flat[0] if len(flat) == 1 else {"anyOf": flat}

    def local(self, name: str) -> Schema:
        kind = self.kind_of_class(name)
        if kind is None:
            return {}  # an arbitrary class: Prefect describes it as "anything" too
        if name not in self.definitions and name not in self._building:
            self._building.add(name)
            self.definitions[name] = self.enum(name) if kind == "enum" else self.model(name)
            self._building.discard(name)
        return {"$ref": f"#/definitions/{name}"}

    def enum(self, name: str) -> Schema:
        values = list(self.enum_members(name).values())
        schema: Schema = {"enum": values, "title": name}
        types = {_json_type(v) for v in values}
        if len(types) == 1 and None not in types:
            schema["type"] = types.pop()
        doc = ast.get_docstring(self.classes[name])
        if doc:
            schema["description"] = doc
        return schema

    def enum_members(self, name: str) -> dict[str, Any]:
        cls = self.classes[name]
        string_enum = any((self.qualified(b) or "") in ("enum.StrEnum", "builtins.str") for b in cls.bases)
        members: dict[str, Any] = {}
        for stmt in cls.body:
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
                continue
            member = stmt.targets[0].id
            if member.startswith("_"):
                continue
            if isinstance(stmt.value, ast.Call) and (self.qualified(stmt.value.func) or "").endswith("auto"):
                members[member] = member.lower() if string_enum else len(members) + 1
                continue
            try:
                members[member] = _jsonable(ast.literal_eval(stmt.value))
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
        return members

    def model(self, name: str) -> Schema:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field, annotation, value in self.model_fields(name):
            prop = self.annotation(annotation)
            default, description, title = self.field_default(value)
            if default is _NO_DEFAULT:
                required.append(field)
            elif default is not _UNKNOWN_DEFAULT:
                prop["default"] = default
            if description is not None:
                prop["description"] = description
            if title is not None:
                prop["title"] = title
            elif "$ref" not in prop and not _nullable_ref(prop):
                prop["title"] = field.replace("_", " ").title()
            properties[field] = prop
        schema: Schema = {"properties": properties}
        if required:
            schema["required"] = required
        schema.update({"title": name, "type": "object"})
        doc = ast.get_docstring(self.classes[name])
        if doc:
            schema["description"] = doc
        return schema

    def model_fields(self, name: str, seen: frozenset[str] = frozenset()) -> list[tuple[str, ast.expr, ast.expr | None]]:
        cls = self.classes[name]
        fields: dict[str, tuple[str, ast.expr, ast.expr | None]] = {}
        for base in cls.bases:  # inherited fields first, as pydantic orders them
            q = self.qualified(base) or ""
            if q.startswith("local.") and q[6:] not in seen and q[6:] in self.classes:
                for f in self.model_fields(q[6:], seen | {name}):
                    fields[f[0]] = f
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                field = stmt.target.id
                ann = self.qualified(stmt.annotation.value if isinstance(stmt.annotation, ast.Subscript) else stmt.annotation)
                if field.startswith("_") or (ann or "").endswith("ClassVar") or field == "model_config":
                    continue
                fields[field] = (field, stmt.annotation, stmt.value)
        return list(fields.values())

    def field_default(self, value: ast.expr | None) -> tuple[Any, str | None, str | None]:
        """(default, description, title) of a model field's right-hand side."""
        if value is None:
            return _NO_DEFAULT, None, None
        if isinstance(value, ast.Call) and (self.qualified(value.func) or "").endswith("Field"):
            kw = {k.arg: k.value for k in value.keywords if k.arg}
            description = _string(kw.get("description"))
            title = _string(kw.get("title"))
            if "default_factory" in kw:
                return _UNKNOWN_DEFAULT, description, title
            given = value.args[0] if value.args else kw.get("default")
            if given is None or (isinstance(given, ast.Constant) and given.value is Ellipsis):
                return _NO_DEFAULT, description, title
            return self.default(given), description, title
        return self.default(value), None, None

    def default(self, node: ast.expr) -> Any:
        """A default as JSON (what pydantic serialises), or _UNKNOWN_DEFAULT when it is computed."""
        if isinstance(node, ast.Attribute):  # an enum member: its value
            q = self.qualified(node.value) or ""
            if q.startswith("local.") and self.kind_of_class(q[6:]) == "enum":
                members = self.enum_members(q[6:])
                if node.attr in members:
                    return members[node.attr]
            return _UNKNOWN_DEFAULT
        try:
            return _jsonable(ast.literal_eval(node))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return _UNKNOWN_DEFAULT


def _imports(tree: ast.Module) -> dict[str, str]:
    """Local name → qualified name for the module's top-level imports."""
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    names[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _builtin_alias(q: str) -> str:
    """typing's capitalised aliases and the abstract collections, as the builtin they mean."""
    head = q.rsplit(".", 1)[-1]
    if q.startswith(("typing.", "collections.abc.", "typing_extensions.")):
        if head in ("Any",):
            return "any"
        if head in _ARRAYS:
            return "builtins.list"
        if head in _SETS:
            return "builtins.set"
        if head in _MAPS:
            return "builtins.dict"
        if head in ("Tuple",):
            return "builtins.tuple"
    return q


def _literal_schema(args: list[ast.expr]) -> Schema:
    values = []
    for a in args:
        try:
            values.append(_jsonable(ast.literal_eval(a)))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return {}
    schema: Schema = {"const": values[0]} if len(values) == 1 else {"enum": values}
    types = {_json_type(v) for v in values}
    if len(types) == 1:
        schema["type"] = types.pop()
    return schema


def _json_type(value: Any) -> str | None:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, complex):
        raise ValueError("complex")
    return value


def _nullable_ref(prop: Schema) -> bool:
    """pydantic leaves the title off a model field whose type is a (nullable) model or enum."""
    members = prop.get("anyOf")
    if not isinstance(members, list):
        return False
    refs = [m for m in members if "$ref" in m]
    return len(refs) == 1 and len(members) == 2 and {"type": "null"} in members


def _string(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


# compiled at their first use (re's cache): most flows' docstrings have no Args section, or no docstring
_SECTION = r"^(\s*)(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters):\s*$"
_ITEM = r"^(\s*)(\*{0,2}[A-Za-z_]\w*)\s*(\([^)]*\))?\s*:\s*(.*)$"


def parameter_docstrings(docstring: str | None) -> dict[str, str]:
    """Parameter descriptions from a Google-style docstring's `Args:` section."""
    if not docstring:
        return {}
    lines = docstring.expandtabs().splitlines()
    out: dict[str, str] = {}
    i = 0
    while i < len(lines):
        section = re.match(_SECTION, lines[i])
        i += 1
        if section is None:
            continue
        base = len(section.group(1))
        current: str | None = None
        item_indent = -1
        parts: list[str] = []
        while i < len(lines):
            line = lines[i]
            indent = len(line) - len(line.lstrip())
            if line.strip() and indent <= base:
                break
            item = re.match(_ITEM, line)
            if item and (item_indent < 0 or indent == item_indent):
                if current is not None:
                    out[current] = _join(parts)
                item_indent = indent
                current, parts = item.group(2).lstrip("*"), [item.group(4)]
            elif current is not None:
                parts.append(line)
            i += 1
        if current is not None:
            out[current] = _join(parts)
    return out


def _join(parts: list[str]) -> str:
    first, rest = parts[0].strip(), parts[1:]
    while rest and not rest[-1].strip():
        rest.pop()
    indents = [len(p) - len(p.lstrip()) for p in rest if p.strip()]
    cut = min(indents) if indents else 0
    return "\n".join([first, *(p[cut:].rstrip() for p in rest)]).strip()
