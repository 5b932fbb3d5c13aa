"""YAML with source locations: plain values plus a map from document path to file:line:col.

PyYAML's composer gives nodes with marks; we construct values ourselves so that anchors, aliases
and merge keys behave as in `safe_load`, duplicate keys are errors (parsers silently keep the last
one), and every mapping key and item keeps its location.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml

from buildsys.errors import BuildsysError, Location

try:  # the C composer is much faster; fall back when libyaml is missing
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

Path_ = tuple[str | int, ...]


class YamlError(BuildsysError):
    """The file is not valid YAML (or uses YAML in a way we refuse, like duplicate keys)."""


@dataclass
class Located:
    """A loaded document: the value and the location of every node by its path."""

    value: Any
    file: str
    locations: dict[Path_, Location] = field(default_factory=dict)

    def loc(self, path: Path_) -> Location | None:
        """The location of `path`, or of its nearest located ancestor."""
        while True:
            found = self.locations.get(path)
            if found is not None or not path:
                return found
            path = path[:-1]


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.locations: dict[Path_, Location] = {}
        self.scalars = yaml.constructor.SafeConstructor()

    def loc(self, node: yaml.Node) -> Location:
        mark = node.start_mark
        return Location(self.file, mark.line + 1, mark.column + 1)

    def build(self, node: yaml.Node, path: Path_, active: tuple[int, ...] = ()) -> Any:
        self.locations.setdefault(path, self.loc(node))
        if id(node) in active:
            raise YamlError("recursive YAML alias", location=self.loc(node))
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, (*active, id(node)))
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), (*active, id(node))) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        try:
            return self.scalars.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise YamlError(f"bad YAML value: {exc}", location=self.loc(node)) from None

    def mapping(self, node: yaml.MappingNode, path: Path_, active: tuple[int, ...]) -> dict[str, Any]:
        result: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        own_keys: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                for source in self.merge_sources(value_node, path, active):
                    for k, v in source.items():
                        merged.setdefault(k, v)
                continue
            key = self.build(key_node, (*path, "<key>"), active)
            if not isinstance(key, Hashable) or isinstance(key, list | dict):
                raise YamlError("a mapping key must be a plain value", location=self.loc(key_node))
            if isinstance(key, bool | int | float) or key is None:
                key = _key_text(key_node, key)
            if key in own_keys:
                raise YamlError(
                    f"duplicate key {key!r}: YAML keeps only the last one, so the first would be silently lost",
                    location=self.loc(key_node),
                    hint="remove or rename one of the two entries",
                )
            own_keys.add(key)
            child = (*path, key)
            self.locations[child] = self.loc(key_node)
            result[key] = self.build(value_node, child, active)
        for k, v in merged.items():
            result.setdefault(k, v)
        return result

    def merge_sources(self, node: yaml.Node, path: Path_, active: tuple[int, ...]) -> list[dict[str, Any]]:
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        sources = []
        for n in nodes:
            if not isinstance(n, yaml.MappingNode):
                raise YamlError(
                    "a merge key (<<) needs a mapping or a list of mappings", location=self.loc(n)
                )
            # Locations of merged values point at the anchor's definition; record under a
            # scratch path so they never overwrite the real ones.
            sources.append(self.mapping(n, (*path, "<merge>"), active))
        return sources


def _key_text(node: yaml.Node, value: object) -> str:
    """Non-string keys (`200:`, `yes:`) are kept as the text that was written."""
    raw = getattr(node, "value", None)
    return raw if isinstance(raw, str) else str(value)


def load_yaml(text: str, file: str) -> Located:
    """Parse one YAML document with locations. Raises YamlError with a location on bad input."""
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        location = Location(file, mark.line + 1, mark.column + 1) if mark else None
        problem = exc.problem or str(exc)
        if exc.context and "alias" not in problem:
            problem = f"{exc.context}: {problem}" if exc.context else problem
        raise YamlError(
            f"not valid YAML: {problem}", location=location, hint=_yaml_hint(problem)
        ) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"not valid YAML: {exc}", location=Location(file, 1, 1)) from None
    except UnicodeDecodeError:
        raise YamlError("the file is not UTF-8 text", location=Location(file, 1, 1)) from None
    if root is None:
        return Located(None, file, {(): Location(file, 1, 1)})
    builder = _Builder(file)
    value = builder.build(root, ())
    return Located(value, file, builder.locations)


def _yaml_hint(problem: str) -> str | None:
    if "found undefined alias" in problem:
        return "define the anchor (&name) before using the alias (*name)"
    if "found character '\\t'" in problem:
        return "YAML does not allow tabs for indentation; use spaces"
    if "mapping values are not allowed" in problem:
        return "check the indentation, or quote a value that contains ': '"
    return None
