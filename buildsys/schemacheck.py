"""A yes/no check of a value against a JSON Schema, compiled once into closures: the fast path of
validation. Only a "no" is explained, by jsonschema itself (buildsys.schema), so messages come from
one place and stay as they were; this module never produces a message.

It follows jsonschema's Draft 2020-12 rules for the keywords our schemas use (booleans are not
numbers and `true` is not `1` in enum/const, `pattern` is `re.search`, floats like 2.0 are
integers). A schema with any other keyword, or a `$ref` outside the document, is refused
(`compile_check` returns None) and the caller validates with jsonschema alone. A value it cannot
judge exactly the same way (a mapping with non-string keys) is answered "no", which only sends
the caller to jsonschema.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], bool]

# Keywords that never constrain a value.
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$defs", "$comment", "title", "description", "deprecated", "examples", "default",
     "readOnly", "writeOnly"}
)


class Unsupported(Exception):
    """The schema uses something this checker does not implement exactly."""


def compile_check(schema: Mapping[str, Any], *, ignore: frozenset[str] = frozenset()) -> Check | None:
    """A function telling whether a value is valid against `schema`; None when the schema uses a
    keyword this module does not implement (validate with jsonschema then). `ignore`: keywords
    the caller's jsonschema validator does not assert either (`format` without a format checker,
    Prefect's `position`), taken as annotations."""
    try:
        return _Compiler(schema, ignore).compile(schema)
    except Unsupported:
        return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


_TYPES: dict[str, Callable[[object], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def equal(a: object, b: object) -> bool:
    """jsonschema's equality: a boolean never equals a number; containers compare item by item."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return a == b


class _Compiler:
    def __init__(self, root: Mapping[str, Any], ignore: frozenset[str] = frozenset()) -> None:
        self.root = root
        self.ignore = ignore
        self.refs: dict[str, Check] = {}
        self.pending: set[str] = set()  # references whose target is being compiled

    def compile(self, schema: object) -> Check:
        if schema is True:
            return lambda v: True
        if schema is False:
            return lambda v: False
        if not isinstance(schema, Mapping):
            raise Unsupported(f"schema {schema!r}")
        checks: list[Check] = []
        object_checks: list[Check] = []
        for keyword, arg in schema.items():
            if keyword in _ANNOTATIONS or keyword.startswith("x-") or keyword in ("then", "else") or keyword in self.ignore:
                continue
            handler = getattr(self, "_k_" + keyword.lstrip("$"), None)
            if handler is None:
                raise Unsupported(keyword)
            made = handler(arg, schema)
            if made is not None:  # None: checked by another keyword's check (properties)
                (object_checks if keyword in _OBJECT_KEYWORDS else checks).append(made)
        if object_checks:
            checks.append(_only_for_dicts(object_checks))
        if not checks:
            return lambda v: True
        if len(checks) == 1:
            return checks[0]
        return _all_of(checks)

    # --- any type ------------------------------------------------------------------------------
    def _k_type(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        names = arg if isinstance(arg, list) else [arg]
        tests = [_TYPES[n] for n in names]
        if len(tests) == 1:
            return tests[0]

        def any_type(v: Any) -> bool:
            for test in tests:  # noqa: SIM110  # a loop: no generator per call on this hot path
                if test(v):
                    return True
            return False

        return any_type

    def _k_enum(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        options = list(arg)
        if all(isinstance(o, str) for o in options):
            allowed = frozenset(options)
            return lambda v: isinstance(v, str) and v in allowed
        return lambda v: any(equal(v, o) for o in options)

    def _k_const(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return lambda v: equal(v, arg)

    def _k_ref(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        if not isinstance(arg, str) or not arg.startswith("#"):
            raise Unsupported(f"$ref {arg!r}")
        refs = self.refs
        if arg in self.pending:  # a reference inside its own target: looked up when called
            return lambda v: refs[arg](v)
        if arg not in refs:
            self.pending.add(arg)
            try:
                refs[arg] = self.compile(self._pointer(arg[1:]))
            finally:
                self.pending.discard(arg)
        return refs[arg]  # the target's check itself: no call in between

    def _pointer(self, pointer: str) -> object:
        node: object = self.root
        for part in pointer.split("/")[1:] if pointer else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise Unsupported(f"$ref #{pointer}")
        return node

    def _k_allOf(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return _all_of([self.compile(s) for s in arg])

    def _k_anyOf(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        parts = [self.compile(s) for s in arg]
        return lambda v: any(p(v) for p in parts)

    def _k_oneOf(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        parts = [self.compile(s) for s in arg]
        return lambda v: sum(1 for p in parts if p(v)) == 1

    def _k_not(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        part = self.compile(arg)
        return lambda v: not part(v)

    def _k_if(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        condition = self.compile(arg)
        then = self.compile(schema.get("then", True))
        otherwise = self.compile(schema.get("else", True))
        return lambda v: then(v) if condition(v) else otherwise(v)

    # --- strings -------------------------------------------------------------------------------
    def _k_pattern(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        search = re.compile(arg).search
        return lambda v: not isinstance(v, str) or search(v) is not None

    def _k_minLength(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return lambda v: not isinstance(v, str) or len(v) >= arg

    def _k_maxLength(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return lambda v: not isinstance(v, str) or len(v) <= arg

    # --- numbers -------------------------------------------------------------------------------
    def _k_minimum(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return lambda v: not _is_number(v) or v >= arg

    def _k_maximum(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return lambda v: not _is_number(v) or v <= arg

    def _k_exclusiveMinimum(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return lambda v: not _is_number(v) or v > arg

    def _k_exclusiveMaximum(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return lambda v: not _is_number(v) or v < arg

    # --- arrays --------------------------------------------------------------------------------
    def _k_items(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        if isinstance(arg, list):
            raise Unsupported("items as a list")
        item = self.compile(arg)

        def items(v: Any) -> bool:
            if isinstance(v, list):
                for x in v:
                    if not item(x):
                        return False
            return True

        return items

    def _k_minItems(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return lambda v: not isinstance(v, list) or len(v) >= arg

    def _k_maxItems(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return lambda v: not isinstance(v, list) or len(v) <= arg

    def _k_uniqueItems(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        if not arg:
            return lambda v: True

        def unique(v: Any) -> bool:
            if not isinstance(v, list):
                return True
            return not any(equal(v[i], v[j]) for i in range(len(v)) for j in range(i + 1, len(v)))

        return unique

    # --- objects (applied to dicts only, see _only_for_dicts) ----------------------------------
    def _k_properties(self, arg: Any, schema: Mapping[str, Any]) -> Check | None:
        if "additionalProperties" in schema and "additionalProperties" not in self.ignore:
            return None  # checked in additionalProperties' pass over the keys
        props = {name: self.compile(s) for name, s in arg.items()}

        def properties(v: dict[str, Any]) -> bool:
            for key, value in v.items():  # the value's keys, not every property the schema names
                check = props.get(key)
                if check is not None and not check(value):
                    return False
            return True

        return properties

    def _k_additionalProperties(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        """`additionalProperties`, and `properties` beside it, in one pass over the value's keys."""
        known = frozenset(schema.get("properties") or ())
        props: dict[str, Check] = {}
        if "properties" not in self.ignore:
            props = {name: self.compile(s) for name, s in (schema.get("properties") or {}).items()}
        patterns = [re.compile(p).search for p in schema.get("patternProperties") or ()]
        extra = self.compile(arg)

        def additional(v: dict[str, Any]) -> bool:
            for key, value in v.items():
                check = props.get(key)
                if check is not None:
                    if not check(value):
                        return False
                    continue
                if key in known or any(search(key) for search in patterns):
                    continue
                if not extra(value):
                    return False
            return True

        return additional

    def _k_required(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        names = frozenset(arg)
        return lambda v: v.keys() >= names

    def _k_minProperties(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return lambda v: len(v) >= arg

    def _k_maxProperties(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return lambda v: len(v) <= arg

    def _k_patternProperties(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        return _pattern_properties(self, arg)

    def _k_propertyNames(self, arg: Any, schema: Mapping[str, Any]) -> Check:
        name = self.compile(arg)
        return lambda v: all(name(k) for k in v)


def _pattern_properties(compiler: _Compiler, arg: Mapping[str, Any]) -> Check:
    pairs = [(re.compile(p).search, compiler.compile(s)) for p, s in arg.items()]
    return lambda v: all(check(value) for key, value in v.items() for search, check in pairs if search(key))


def _only_for_dicts(checks: list[Check]) -> Check:
    """Object keywords apply to mappings only; a mapping with a key that is not a string is
    answered "no" (jsonschema then judges it, as before this module existed)."""

    def check(v: Any) -> bool:
        if not isinstance(v, dict):
            return True
        for k in v:
            if not isinstance(k, str):
                return False
        for c in checks:  # noqa: SIM110  # a loop: no generator per call on this hot path
            if not c(v):
                return False
        return True

    return check


def _all_of(checks: list[Check]) -> Check:
    def all_of(v: Any) -> bool:
        for c in checks:  # noqa: SIM110  # a loop: no generator per call on this hot path
            if not c(v):
                return False
        return True

    return all_of


_OBJECT_KEYWORDS = frozenset(
    {"properties", "patternProperties", "additionalProperties", "required", "minProperties", "maxProperties", "propertyNames"}
)
