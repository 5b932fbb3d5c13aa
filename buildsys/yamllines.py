"""The plain subset of block YAML most project files are written in, read line by line.

libyaml hands every key, value and bracket over as a Python event object, and the builder then
looks at each one: for a 90,000-line project that is most of the load. Most project files use
only block mappings and lists of plain keys, one-line scalars and one-line flow collections; such a
file is read here with one regular expression a line and the same scalar rules as the event
builder (`yamlevents._Builder.scalar`), giving the same `Located` (values, marks, templated
strings, storable flag). Anything else — anchors, aliases, tags, block or multi-line scalars,
escapes, document markers, tabs, non-ASCII text, duplicate keys, a value that does not build,
anything unexpected — gives None, and the event builder reads the whole file instead, with its
errors and their locations (`tests/test_yamllines.py` holds the two to the same answers).
"""

from __future__ import annotations

import re
from sys import intern
from typing import Any

from buildsys.located import (
    _COL_BITS,
    _INTERN_UP_TO,
    _SHORT_INT,
    _STR,
    Located,
    Marks,
    _storable_scalar,
)

# indent, a list item's dash and the spaces after it, a plain key and the text after `key:`.
# (\w stays ASCII: the whole text is, see `_OUTSIDE`.)
_LINE = re.compile(r"( *)(?:(-)( +|$))?(?:([A-Za-z_][\w.-]*):(?: +|$))?(.*)")
_OUTSIDE = re.compile(r"[^\x20-\x7e\n]")  # text this reader leaves alone (`---`, `...`, `%` lines: no key)
# one token inside brackets: a bracket or comma, `key: `, a quoted text (one line, no escapes), or a
# plain scalar (no indicator first; no `:`, `#`, brackets or commas anywhere)
_FLOW_TOKEN = re.compile(
    r""" *(?:([\[\]{},])|([A-Za-z_][\w.-]*): +|('(?:[^']|'')*')|("[^"\\]*")|([^\s\[\]{},:#'"&*!|>%@`?-][^\[\]{},:#]*))"""
)
_INDICATORS = frozenset("-?:,[]{}#&*!|>'\"%@`")
_MAX_KEY = 1000  # libyaml refuses a simple key longer than 1024 characters; leave those to it
# YAML 1.1's implicit types as PyYAML's resolver and constructor give them, for the plain texts that
# start with a letter or `~` (the others are the resolver's to type, with PyYAML imported then):
# `tests/test_yamllines.py` checks these against PyYAML's own tables.
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"
_BOOLS = {
    text: value
    for word, value in (("yes", True), ("no", False), ("true", True), ("false", False), ("on", True), ("off", False))
    for text in (word, word.capitalize(), word.upper())
}
_NULLS = frozenset({"~", "null", "Null", "NULL", ""})
_TYPED_FIRST = frozenset("-+0123456789.<=!&*")  # numbers, dates, `<<`, `=` and PyYAML's own `!`, `&`, `*`


# A flow collection as built once, to build again at another place: (the container, its marks'
# columns (+ 1) from the line's start, the span of the flow's templated texts it holds or -1, and
# (key or index, _Shape) for each container inside it); then the flow's templated texts and
# whether it built only storable values.
_Shape = tuple[Any, Any, int, tuple[Any, ...]]
_Seen = tuple[_Shape, tuple[str, ...], bool]


class _Decline(Exception):
    """The text is outside the subset: the event builder reads it."""


def load_lines(text: str, file: str) -> Located | None:
    """`yamlsource.load_yaml(text, file)` for a text in the subset this module reads; None otherwise."""
    if _OUTSIDE.search(text) is not None:
        return None
    reader = _Reader(file)
    try:
        return reader.document(text)
    except (_Decline, RecursionError):
        return None
    except Exception:  # a value whose constructor fails (a bad date …): the event builder says so, located
        return None


class _Reader:
    def __init__(self, file: str) -> None:
        self.file = file
        self.marks: Marks = {}
        self.held: list[Any] = []
        self.texts: list[str] = []
        self.spans: dict[int, int] = {}
        self.storable = True
        self.plain_tags: dict[str, str] = {}
        self.plain_str: dict[str, str] = {}
        self.resolver: Any = None  # PyYAML's, made for the first text it has to type
        self.constructor: Any = None
        # the content lines: (line number, indent, dash, column after the dash, key, rest, its column)
        self.lines: list[tuple[int, int, str | None, int, str | None, str, int]] = []
        self.at = 0  # index of the next line to read
        # a line's flow collection (`[…]`, `{…}` with what follows it), as `flow_line` rebuilds it:
        # False when seen once (most texts that repeat across deployments repeat many times)
        self.seen_flows: dict[str, _Seen | bool] = {}

    def document(self, text: str) -> Located | None:
        match = _LINE.match
        lines = self.lines
        for number, line in enumerate(text.split("\n"), start=1):
            m = match(line)
            assert m is not None  # every part of the pattern is optional
            indent, dash, spaces, key, rest = m.groups()
            if dash is None and key is None and (not rest or rest[0] == "#"):
                continue  # a blank line or a comment
            column = len(indent) if dash is None else len(indent) + 1 + len(spaces)
            lines.append((number, len(indent), dash, column, key, rest, m.start(5)))
        if not lines:
            return None
        number, indent, dash, _, key, _, _ = lines[0]
        if dash is not None or key is None:
            return None  # a document that is not a block mapping: the event builder reads it
        value = self.mapping(indent, indent)
        if self.at != len(lines):
            raise _Decline
        root = number << _COL_BITS | (indent + 1)
        return Located(
            value, self.file, root, self.marks, self.held, storable=self.storable, texts=self.texts,
            spans=self.spans, merged=set(),
        )

    # --- block structure ------------------------------------------------------------------------

    def mapping(self, column: int, dash_indent: int) -> dict[str, Any]:
        """The block mapping whose keys start at `column`; its first line may be a list item's
        (`- key: …`, dash at `dash_indent`), the others start at `column` itself."""
        result: dict[str, Any] = {}
        at: dict[Any, int] = {}
        self.marks[id(result)] = at
        self.held.append(result)
        first = len(self.texts)
        lines = self.lines
        count = len(lines)
        plain_str = self.plain_str
        inline = dash_indent != column  # the first key follows a dash on its line
        while self.at < count:
            number, indent, dash, _, key, rest, start = lines[self.at]
            if inline:
                inline = False
            elif indent != column or dash is not None:
                if indent > column:
                    raise _Decline
                break  # a line further out (or an item of an indentless list around us): done here
            if key is None:
                raise _Decline
            key = plain_str.get(key) or self.key(key)  # a key seen before: its shared string
            if key in result:
                raise _Decline
            at[key] = number << _COL_BITS | (column + 1)
            self.at += 1
            if rest and rest[0] != "#":
                result[key] = self.inline(rest, number, start)  # a deeper line next: the loop declines
            else:
                result[key] = self.block_value(column)
        if len(self.texts) != first:
            self.spans[id(result)] = first << _COL_BITS | len(self.texts)
        return result

    def block_value(self, column: int) -> Any:
        """The value of a key at `column` with nothing after its colon: what the next lines hold."""
        lines = self.lines
        if self.at < len(lines):
            _, indent, dash, _, _, _, _ = lines[self.at]
            if indent > column:
                return self.block_node(indent)
            if indent == column and dash is not None:
                return self.sequence(column)  # an indentless list (`key:` then `- item` under it)
        return self.plain("")  # an empty value: YAML's null (the resolver says so)

    def block_node(self, indent: int) -> Any:
        _, _, dash, _, key, _, _ = self.lines[self.at]
        if dash is not None:
            return self.sequence(indent)
        if key is None:
            raise _Decline  # a scalar on a line of its own (a multi-line value)
        return self.mapping(indent, indent)

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        at: list[int] = []
        self.marks[id(items)] = at
        self.held.append(items)
        first = len(self.texts)
        lines = self.lines
        count = len(lines)
        while self.at < count:
            number, here, dash, column, key, rest, start = lines[self.at]
            if here != indent or dash is None:
                if here > indent:
                    raise _Decline
                break
            if key is not None:  # `- key: …`: a mapping whose keys start after the dash
                at.append(number << _COL_BITS | (column + 1))
                items.append(self.mapping(column, indent))
                continue
            self.at += 1
            if not rest or rest[0] == "#":  # `-` alone: the item is on the next lines
                if self.at >= count or lines[self.at][1] <= indent:
                    raise _Decline  # an empty item
                below = lines[self.at]
                at.append(below[0] << _COL_BITS | (below[1] + 1))
                items.append(self.block_node(below[1]))
                continue
            at.append(number << _COL_BITS | (start + 1))
            items.append(self.inline(rest, number, start))  # `- - x` too: `-` starts no plain value here
        if len(self.texts) != first:
            self.spans[id(items)] = first << _COL_BITS | len(self.texts)
        return items

    # --- one line's value -------------------------------------------------------------------------

    def inline(self, rest: str, number: int, start: int) -> Any:
        """The value written after `key: ` or `- ` (`rest`, the line's remainder from column `start`)."""
        first = rest[0]
        if first == "[" or first == "{":
            return self.flow_line(rest, number, start)
        if first == "'" or first == '"':
            text, end = self.quoted(rest, 0)
            self.comment_only(rest, end)
            return self.string(text, plain=False)
        if first in _INDICATORS:
            raise _Decline
        cut = rest.find(" #")
        text = (rest if cut < 0 else rest[:cut]).rstrip(" ")
        if ": " in text or text.endswith(":"):
            raise _Decline
        return self.plain(text)

    def flow_line(self, rest: str, number: int, start: int) -> Any:
        """The flow collection that `rest` opens, with nothing but a comment after it. A text seen
        before (project files repeat `[{cron: …}]` or `{env: {…}}` across deployments) is built
        again from the shape it built the first times: the same containers, marks at this line."""
        seen = self.seen_flows.get(rest)
        if type(seen) is tuple:
            shape, texts, storable = seen
            first = len(self.texts)
            if texts:
                self.texts.extend(texts)
            if not storable:
                self.storable = False
            return self.rebuild(shape, (number << _COL_BITS) + start, first)
        first, storable = len(self.texts), self.storable
        self.storable = True
        value, end = self.flow(rest, 0, number, start)
        self.comment_only(rest, end)
        if seen is None:
            self.seen_flows[rest] = False
        else:
            offset = (number << _COL_BITS) + start
            self.seen_flows[rest] = (self.shape(value, offset, first), tuple(self.texts[first:]), self.storable)
        self.storable = self.storable and storable
        return value

    def shape(self, value: Any, offset: int, first: int) -> _Shape:
        at: Any = self.marks[id(value)]
        span = self.spans.get(id(value), -1)
        if span >= 0:
            span -= first << _COL_BITS | first
        if type(value) is list:
            columns: Any = [mark - offset for mark in at]
            inside = tuple((i, self.shape(v, offset, first)) for i, v in enumerate(value) if type(v) is list or type(v) is dict)
        else:
            columns = {key: mark - offset for key, mark in at.items()}
            inside = tuple((k, self.shape(v, offset, first)) for k, v in value.items() if type(v) is list or type(v) is dict)
        return (value, columns, span, inside)

    def rebuild(self, shape: _Shape, offset: int, first: int) -> Any:
        """The container `shape` holds, built anew with its marks at `offset` (line << 32 + the
        column its line's flow starts at) and its templated texts from `first` on."""
        value, columns, span, inside = shape
        if type(value) is list:
            built: Any = value.copy()
            at: Any = [offset + column for column in columns]
        else:
            built = value.copy()
            at = {key: offset + column for key, column in columns.items()}
        for key, child in inside:
            built[key] = self.rebuild(child, offset, first)
        self.marks[id(built)] = at
        self.held.append(built)
        if span >= 0:
            self.spans[id(built)] = span + (first << _COL_BITS | first)
        return built

    def comment_only(self, rest: str, end: int) -> None:
        tail = rest[end:]
        if tail and not tail.isspace():
            stripped = tail.lstrip(" ")
            if len(stripped) == len(tail) or stripped[0] != "#":
                raise _Decline

    def quoted(self, rest: str, start: int) -> tuple[str, int]:
        """A one-line quoted scalar starting at `rest[start]`: (its text, the index after it)."""
        quote = rest[start]
        if quote == '"':
            end = rest.find('"', start + 1)
            if end < 0 or "\\" in rest[start + 1 : end]:
                raise _Decline
            return rest[start + 1 : end], end + 1
        parts = []
        i = start + 1
        while True:
            end = rest.find("'", i)
            if end < 0:
                raise _Decline
            parts.append(rest[i:end])
            if end + 1 < len(rest) and rest[end + 1] == "'":
                parts.append("'")
                i = end + 2
                continue
            return "".join(parts), end + 1

    def flow(self, rest: str, i: int, number: int, base: int) -> tuple[Any, int]:
        """The flow collection at `rest[i]` (`[` or `{`), all on this line (`base`: the column of
        `rest[0]`): (its value, the index after it). One token at a time, with a stack of the open
        collections, each [container, its marks, its first templated text, a key waiting for its
        value, whether a value was just read]."""
        token = _FLOW_TOKEN.match
        texts = self.texts
        line = number << _COL_BITS
        stack: list[list[Any]] = []
        top: list[Any] = []
        pos = i
        while True:
            m = token(rest, pos)
            if m is None:
                raise _Decline  # continued on the next line, or something this reader leaves alone
            pos = m.end()
            kind = m.lastindex or 0
            if kind == 1:  # a bracket or a comma
                char = m.group(1)
                if char == "[" or char == "{":
                    container: Any = [] if char == "[" else {}
                    at: Any = [] if char == "[" else {}
                    self.marks[id(container)] = at
                    self.held.append(container)
                    if stack:
                        self.flow_value(top, container, line | (base + m.start(1) + 1))
                    elif pos - 1 != i:
                        raise _Decline
                    top = [container, at, len(texts), None, False]
                    stack.append(top)
                elif char == ",":
                    if not top or not top[4]:
                        raise _Decline  # `[,` or `, ,`
                    top[4] = False
                else:
                    if not top:
                        raise _Decline
                    container = top[0]
                    if (char == "]") != (type(container) is list) or top[3] is not None:
                        raise _Decline
                    if not top[4] and container:
                        raise _Decline  # a trailing comma
                    if len(texts) != top[2]:
                        self.spans[id(container)] = top[2] << _COL_BITS | len(texts)
                    stack.pop()
                    if not stack:
                        return container, pos
                    top = stack[-1]
            elif not stack:
                raise _Decline
            elif kind == 2:  # `key: ` in a mapping
                key = m.group(2)
                key = self.plain_str.get(key) or self.key(key)
                container = top[0]
                if type(container) is not dict or top[3] is not None or top[4] or key in container:
                    raise _Decline
                top[1][key] = line | (base + m.start(2) + 1)
                top[3] = key
            elif kind == 5:
                self.flow_value(top, self.plain(m.group(5).rstrip(" ")), line | (base + m.start(5) + 1))
            else:
                quoted = m.group(kind)
                text = quoted[1:-1].replace("''", "'") if kind == 3 else quoted[1:-1]
                self.flow_value(top, self.string(text, plain=False), line | (base + m.start(kind) + 1))

    @staticmethod
    def flow_value(top: list[Any], value: Any, mark: int) -> None:
        """`value` (at `mark`) into the open collection `top`, when it is waiting for one."""
        container = top[0]
        if top[4]:
            raise _Decline  # two values without a comma between
        if type(container) is list:
            top[1].append(mark)
            container.append(value)
        else:
            key = top[3]
            if key is None:
                raise _Decline  # `{value}`: a key without `: `
            container[key] = value
            top[3] = None
        top[4] = True

    # --- scalars: `yamlevents._Builder.scalar`'s rules --------------------------------------------

    def key(self, key: str) -> str:
        """A plain key not seen before: the string it builds (one that is not a string, `yes:` or
        `null:`, is the event builder's to keep as written)."""
        if len(key) > _MAX_KEY:
            raise _Decline
        tag = self.plain_tags.get(key)
        if tag is None:
            tag = self.plain_tags[key] = self.resolve(key)
        if tag != _STR:
            raise _Decline
        return self.string(key, plain=True)  # no `{` in a key this reader reads: never templated

    def resolve(self, text: str) -> str:
        """The tag of a plain scalar, as PyYAML's resolver says (`yamlevents._Builder.tag`)."""
        if text in _NULLS:
            return _NULL_TAG
        if text in _BOOLS:
            return _BOOL_TAG
        if text[0] not in _TYPED_FIRST:
            return _STR
        import yaml

        if self.resolver is None:
            self.resolver = yaml.resolver.Resolver()
        return str(self.resolver.resolve(yaml.ScalarNode, text, (True, False)))

    def plain(self, text: str) -> Any:
        shared = self.plain_str.get(text)
        if shared is not None:
            return shared
        tag = self.plain_tags.get(text)
        if tag is None:
            if text.isdigit() and len(text) <= _SHORT_INT and (text[0] != "0" or text == "0"):
                return int(text)
            tag = self.plain_tags[text] = self.resolve(text)
        if tag == _STR:
            return self.string(text, plain=True)
        if tag == _NULL_TAG:
            return None
        if tag == _BOOL_TAG:
            return _BOOLS[text]
        import yaml

        if self.constructor is None:
            self.constructor = yaml.constructor.SafeConstructor()
        try:
            built = self.constructor.construct_object(yaml.ScalarNode(tag, text, None, None, style=None), deep=True)
        finally:
            self.constructor.constructed_objects.clear()
        if not _storable_scalar(built):
            self.storable = False
        return built

    def string(self, value: str, *, plain: bool) -> str:
        if not plain:
            shared = self.plain_str.get(value)
            if shared is not None:
                return shared
        templated = "{{" in value
        if templated:
            self.texts.append(value)
        if len(value) > _INTERN_UP_TO:
            return value
        shared = intern(value)
        if plain and not templated:
            self.plain_str[value] = shared
        return shared
