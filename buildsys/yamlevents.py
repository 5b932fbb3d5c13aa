"""YAML from libyaml's events, with source locations: any text `yamllines` does not read (the
builder `yamlsource.load_yaml` falls back to; `yamlsource` says what it builds, `located` holds it)."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterator
from sys import intern
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from buildsys.errors import Location
from buildsys.located import (
    _COL_BITS,
    _INTERN_UP_TO,
    _MERGE,
    _SHORT_INT,
    _STR,
    MAX_ALIAS_CHARS,
    MAX_ALIAS_NODES,
    Located,
    Marks,
    SeveralDocuments,
    YamlError,
    _storable_scalar,
    _unstorable_text,
)

try:  # the C parser is much faster; fall back when libyaml is missing
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]


def _pack(event: Event) -> int:
    mark: Any = event.start_mark  # the parser marks every event
    return int((mark.line + 1) << _COL_BITS | (mark.column + 1))


def _at(file: str, event: Event) -> Location:
    mark: Any = event.start_mark
    return Location(file, mark.line + 1, mark.column + 1)


Next = Callable[[], Event]


class _Builder:
    """Builds one document's value from events. `located` False means: record no locations (keys,
    and merge sources, whose locations nobody looks up)."""

    def __init__(self, loader: Any, file: str, size: int = 0) -> None:
        self.loader = loader
        self.file = file
        # Aliases may copy a few times what the file holds, never without bound (see `spend`).
        self.expanded = self.expanded_chars = 0
        self.max_expanded = MAX_ALIAS_NODES + 4 * size
        self.max_expanded_chars = MAX_ALIAS_CHARS + 4 * size
        self.sizes: dict[str, tuple[int, int]] = {}  # anchor → (nodes, characters) an alias builds
        self.marks: Marks = {}
        self.held: list[Any] = []
        self.root: int | None = None
        self.anchors: dict[str, list[Event] | None] = {}  # None while the anchored node is being built
        self.recorders: list[list[Event]] = []  # the events of every anchored node being built
        self.constructor = yaml.constructor.SafeConstructor()
        self.plain_tags: dict[str, str] = {}  # keys and values repeat: resolve each text once
        # A plain text that resolved to a string (storable, short): the shared string it builds.
        # Quoted text builds the same string, so it may look here too (but never adds: a quoted
        # `yes` is a string where a plain one is a boolean).
        self.plain_str: dict[str, str] = {}
        self.storable = True  # until a value the store cannot hold is built (`_unstorable_text` …)
        self.texts: list[str] = []  # string values holding `{{`, as built (`Located.templates`)
        self.spans: dict[int, int] = {}  # one int each, as marks are packed
        self.merges = 0  # merge keys seen so far
        self.merged: set[int] = set()
        self.next_source: Next = self._source()  # one function, so `nxt is self.next_source` works

    def _source(self) -> Next:
        """The parser's next event, also given to every recorder (a closure: called per event)."""
        get_event, recorders = self.loader.get_event, self.recorders

        def source() -> Event:
            event: Event = get_event()
            if recorders:
                for recorder in recorders:
                    recorder.append(event)
            return event

        return source

    def loc(self, event: Event) -> Location:
        return _at(self.file, event)

    def node(self, event: Event, located: bool, nxt: Next) -> Any:
        """The value `event` starts (its own location is recorded by the caller)."""
        if isinstance(event, AliasEvent):  # inside a replay, the outermost alias paid for this one
            return self.alias(event, located, outermost=nxt is self.next_source)
        anchor = getattr(event, "anchor", None)
        if anchor is None or nxt is not self.next_source:  # replayed events define no anchors
            return self.content(event, located, nxt)
        if anchor in self.anchors:
            first = self.anchors[anchor]
            where = f" (first defined at line {_at(self.file, first[0]).line})" if first else ""
            raise YamlError(
                f"not valid YAML: the anchor &{anchor} is defined twice{where}",
                location=self.loc(event),
                hint="give each anchor its own name",
            )
        self.anchors[anchor] = None
        recorder: list[Event] = [event]
        self.recorders.append(recorder)
        try:
            value = self.content(event, located, nxt)
        finally:
            self.recorders.remove(recorder)
        self.anchors[anchor] = recorder
        self.measure(anchor, recorder)
        return value

    def alias(self, event: AliasEvent, located: bool, *, outermost: bool = True) -> Any:
        name = event.anchor
        if name not in self.anchors:
            raise YamlError(
                f"not valid YAML: found undefined alias *{name}",
                location=self.loc(event),
                hint=f"define the anchor (&{name}) before using the alias (*{name})",
            )
        recorded = self.anchors[name]
        if recorded is None:
            raise YamlError(f"recursive YAML alias: *{name} is used inside the node &{name} names", location=self.loc(event))
        if outermost:
            self.spend(name, event)
        replay = iter(recorded).__next__
        return self.content(replay(), located, replay)

    def measure(self, anchor: str, recorded: list[Event]) -> None:
        """What replaying the anchor builds: its events and characters, nested aliases included."""
        nodes = chars = 0
        for event in recorded:
            if isinstance(event, AliasEvent):
                inner = self.sizes.get(str(event.anchor), (1, 0))
                nodes, chars = nodes + inner[0], chars + inner[1]
            else:
                nodes += 1
                if isinstance(event, ScalarEvent):
                    chars += len(event.value)
        self.sizes[anchor] = (nodes, chars)

    def spend(self, anchor: str, alias: AliasEvent) -> None:
        """Charge an alias to the file's expansion budget before building anything: an alias bomb
        (aliases of aliases, each multiplying the document) stops at once, located."""
        nodes, chars = self.sizes.get(anchor, (0, 0))
        self.expanded += nodes
        self.expanded_chars += chars
        if self.expanded > self.max_expanded or self.expanded_chars > self.max_expanded_chars:
            raise YamlError(
                f"YAML aliases would expand to more than {self.max_expanded:,} nodes or "
                f"{self.max_expanded_chars:,} characters (*{anchor} alone is {nodes:,} nodes, "
                f"{chars:,} characters): an alias bomb?",
                location=self.loc(alias),
                hint=f"*{anchor} copies aliases of aliases; use fewer levels of aliases",
            )

    def content(self, event: Event, located: bool, nxt: Next) -> Any:
        if isinstance(event, MappingStartEvent):
            return self.mapping(located, nxt)
        if isinstance(event, SequenceStartEvent):
            items: list[Any] = []
            if not located:
                while not isinstance(item := nxt(), SequenceEndEvent):
                    items.append(self.node(item, False, nxt))
                return items
            at: list[int] = []
            self.marks[id(items)] = at
            self.held.append(items)
            get = self._direct(nxt)
            plain_str = self.plain_str
            first, merges = len(self.texts), self.merges
            while (kind := type(item := get())) is not SequenceEndEvent:
                mark: Any = item.start_mark
                at.append((mark.line + 1) << _COL_BITS | (mark.column + 1))  # `_pack`, inlined
                if kind is ScalarEvent and item.anchor is None:  # type: ignore[attr-defined]  # as `node` would
                    text = plain_str.get(item.value) if item.tag is None else None  # type: ignore[attr-defined]
                    items.append(text if text is not None else self.scalar(item))  # type: ignore[arg-type]
                elif kind is MappingStartEvent and item.anchor is None:  # type: ignore[attr-defined]  # as `node` would
                    items.append(self.mapping(True, nxt))
                else:
                    items.append(self.node(item, True, nxt))
            if len(self.texts) != first or self.merges != merges:
                self.noted(items, first, merges)
            return items
        assert isinstance(event, ScalarEvent)
        return self.scalar(event)

    def scalar(self, event: ScalarEvent) -> Any:
        tag = event.tag
        if tag is None:  # `tag`, with its memo looked at first and quoted text at once (inlined: once per value)
            if event.implicit[0]:
                text = event.value
                tag = self.plain_tags.get(text)
                if tag is None:
                    if text.isdigit() and text.isascii() and len(text) <= _SHORT_INT and (text[0] != "0" or text == "0"):
                        # plain decimal digits (no sign, `_` or leading 0: octal): YAML 1.1's int, as the
                        # resolver and constructor would make it (each integer of a project is new text)
                        return int(text)
                    tag = self.tag(event)
            else:
                tag = _STR
        else:
            tag = self.tag(event)
        if tag == _STR:
            # Keys and short values repeat across a large project ("name", "Europe/Paris"):
            # one shared string each, here and in everything built from them.
            value: str = event.value
            templated = "{{" in value  # a placeholder: noted, and never shared through `plain_str` (so always seen here)
            if templated:
                self.texts.append(value)
            if ("\x00" in value or not value.isascii()) and _unstorable_text(value):
                self.storable = False
                return intern(value) if len(value) <= _INTERN_UP_TO else value
            if len(value) > _INTERN_UP_TO:
                return value
            shared = intern(value)
            if event.tag is None and event.implicit[0] and not templated:
                self.plain_str[value] = shared
            return shared
        scalar = yaml.ScalarNode(tag, event.value, None, None, style=event.style)
        try:
            built = self.constructor.construct_object(scalar, deep=True)
            if not _storable_scalar(built):
                self.storable = False
            return built
        except yaml.MarkedYAMLError as exc:
            raise YamlError(f"bad YAML value: {exc.problem}", location=self.loc(event)) from None
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            raise YamlError(f"bad YAML value {event.value!r} for {tag}: {exc}", location=self.loc(event)) from None
        except (AttributeError, LookupError):  # PyYAML's constructors crash on some text their tag cannot read
            raise YamlError(
                f"bad YAML value {event.value!r} for {tag}: not a value of that type", location=self.loc(event),
            ) from None
        finally:
            self.constructor.constructed_objects.clear()

    def tag(self, event: ScalarEvent) -> str:
        tag = event.tag
        if tag is None and not event.implicit[0]:
            return _STR  # quoted or block text without a tag: always a string (the resolver's default)
        if tag is None:  # a plain scalar: its text alone decides (memoised)
            value = event.value
            tag = self.plain_tags.get(value)
            if tag is None:
                tag = self.plain_tags[value] = str(self.loader.resolve(yaml.ScalarNode, value, event.implicit))
            return tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        return str(tag)

    def _direct(self, nxt: Next) -> Next:
        """What a container's own loop reads its items' first events with: the parser itself when
        no anchored node is being recorded (nearly always), else `nxt`. Anything an item builds
        reads through `nxt`, so an anchor inside it is still recorded: a recorder added by an item
        is removed before the item returns, and one open around this container stays open for all
        of its loop."""
        if nxt is self.next_source and not self.recorders:
            return self.loader.get_event  # type: ignore[no-any-return]
        return nxt

    def mapping(self, located: bool, nxt: Next) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        merged: dict[Any, Any] | None = None  # made at the first merge key (few mappings have one)
        at: dict[Any, int] | None = None
        if located:
            at = {}
            self.marks[id(result)] = at
            self.held.append(result)
        first, merges = len(self.texts), self.merges
        get = self._direct(nxt)
        plain_tags, plain_str = self.plain_tags, self.plain_str
        while (kind := type(key_event := get())) is not MappingEndEvent:
            if kind is ScalarEvent and key_event.anchor is None:  # type: ignore[attr-defined]  # nearly every key
                scalar: ScalarEvent = key_event  # type: ignore[assignment]
                key = plain_str.get(scalar.value) if scalar.tag is None else None  # a key seen before
                if key is None:
                    texts = len(self.texts)
                    tag = plain_tags.get(scalar.value) if scalar.tag is None and scalar.implicit[0] else None
                    if tag is None:  # `tag`, with its memo looked at first (inlined: once per key)
                        tag = self.tag(scalar)
                    if tag == _MERGE:
                        self.merges += 1
                        if merged is None:
                            merged = {}
                        for source in self.merge_sources(get(), nxt):
                            for k, v in source.items():
                                merged.setdefault(k, v)
                        continue
                    if tag == _STR:
                        key = self.scalar(scalar)
                    else:
                        key = self.content(scalar, False, nxt)
                        if type(key) is not str:
                            key = self.odd_key(key, key_event)
                    del self.texts[texts:]  # keys are never templated
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                raise YamlError("a mapping key must be a plain value", location=self.loc(key_event))
            else:
                texts = len(self.texts)
                key = self.node(key_event, False, nxt)  # an alias, or an anchored scalar
                if type(key) is not str:
                    key = self.odd_key(key, key_event)
                del self.texts[texts:]
            if key in result:
                raise YamlError(
                    f"duplicate key {key!r}: YAML keeps only the last one, so the first would be silently lost",
                    location=self.loc(key_event),
                    hint="remove or rename one of the two entries",
                )
            value_event = get()
            if at is not None:  # a mapping value is located at its key
                mark: Any = key_event.start_mark
                at[key] = (mark.line + 1) << _COL_BITS | (mark.column + 1)  # `_pack`, inlined
            kind = type(value_event)
            if kind is ScalarEvent and value_event.anchor is None:  # type: ignore[attr-defined]  # as `node` would, with fewer calls
                text = plain_str.get(value_event.value) if value_event.tag is None else None  # type: ignore[attr-defined]
                result[key] = text if text is not None else self.scalar(value_event)  # type: ignore[arg-type]
            elif kind is MappingStartEvent and value_event.anchor is None:  # type: ignore[attr-defined]  # as above
                result[key] = self.mapping(at is not None, nxt)
            else:
                result[key] = self.node(value_event, at is not None, nxt)
        if merged:
            for k, v in merged.items():
                result.setdefault(k, v)
        if at is not None and (len(self.texts) != first or self.merges != merges):  # `noted`'s test first: most hold none
            self.noted(result, first, merges)
        return result

    def noted(self, container: Any, first: int, merges: int) -> None:
        """A located container is built: which of `texts` it holds (`Located.templates`)."""
        if len(self.texts) != first:
            self.spans[id(container)] = first << _COL_BITS | len(self.texts)
        if self.merges != merges:
            self.merged.add(id(container))

    def odd_key(self, key: Any, event: Event) -> Any:
        """A key that is not a string: numbers, booleans and null keep the text written (`200:`,
        `yes:`); anything else (a list or mapping through an alias) is refused."""
        if isinstance(key, list | dict | set) or not isinstance(key, Hashable):
            raise YamlError("a mapping key must be a plain value", location=self.loc(event))
        if isinstance(key, bool | int | float) or key is None:
            text = _key_text(event, key)
            if _unstorable_text(text):
                self.storable = False
            return text
        return key  # a date, bytes, …: kept as YAML built it

    def merge_sources(self, event: Event, nxt: Next) -> Iterator[dict[Any, Any]]:
        """The mappings a merge key (<<) names: one mapping, an alias of one, or a list of them."""
        if isinstance(event, SequenceStartEvent):
            while not isinstance(item := nxt(), SequenceEndEvent):
                yield self.merge_source(item, nxt)
        else:
            yield self.merge_source(event, nxt)

    def merge_source(self, event: Event, nxt: Next) -> dict[Any, Any]:
        value = self.node(event, False, nxt)
        if not isinstance(value, dict):
            raise YamlError("a merge key (<<) needs a mapping or a list of mappings", location=self.loc(event))
        return value



def _key_text(event: Event, value: object) -> str:
    """Non-string keys (`200:`, `yes:`) are kept as the text that was written."""
    raw = getattr(event, "value", None)
    return raw if isinstance(raw, str) else str(value)




def load_events(text: str, file: str) -> Located:
    """`yamlsource.load_yaml` from libyaml's events: any YAML (`yamllines` reads a plain subset)."""
    loader = _Loader(text)
    try:
        builder = _Builder(loader, file, len(text))
        try:
            value = _document(builder, builder.next_source)
        except YamlError:
            # A syntax error further on is the one to report (as a parser reading the whole file
            # first would): the rest of the file is parsed, nothing else built.
            while not isinstance(loader.get_event(), StreamEndEvent):
                pass
            raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc)
        if exc.context and "alias" not in problem:
            problem = f"{exc.context}: {problem}" if exc.context else problem
        opened = exc.context_mark if exc.context and _UNCLOSED.match(exc.context) else None
        if opened is not None and mark is not None and opened.line != mark.line:
            # an unclosed `[a, b` or quote: the parser notices lines later; point where it was opened
            problem += f" (the parser stopped at line {mark.line + 1}, column {mark.column + 1})"
            mark = opened
        location = Location(file, mark.line + 1, mark.column + 1) if mark else None
        at = text[mark.index] if mark and 0 <= mark.index < len(text) else ""
        raise YamlError(f"not valid YAML: {problem}", location=location, hint=_yaml_hint(problem, at)) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise YamlError(
            f"not valid YAML: the character {char!r} (#x{ord(char):04x}) is not allowed in a YAML file",
            location=Location(file, line, col),
            hint="is this a binary file? a prefect.yaml is UTF-8 text",
        ) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"not valid YAML: {exc}", location=Location(file, 1, 1)) from None
    except UnicodeDecodeError:
        raise YamlError("the file is not UTF-8 text", location=Location(file, 1, 1)) from None
    except RecursionError:
        raise YamlError("the YAML is nested too deeply to load", location=Location(file, 1, 1)) from None
    finally:
        loader.dispose()
    if value is _EMPTY:
        return Located(None, file, 1 << _COL_BITS | 1)
    return Located(
        value, file, builder.root, builder.marks, builder.held, storable=builder.storable, texts=builder.texts,
        spans=builder.spans, merged=builder.merged,
    )


_EMPTY = object()


def _document(builder: _Builder, nxt: Next) -> Any:
    """The value of the stream's only document (`_EMPTY` when there is none)."""
    nxt()  # StreamStartEvent
    start = nxt()
    if isinstance(start, StreamEndEvent):
        return _EMPTY
    assert isinstance(start, DocumentStartEvent)
    first = nxt()
    builder.root = _pack(first)
    value = builder.node(first, True, nxt)
    end = nxt()
    assert isinstance(end, DocumentEndEvent)
    after = nxt()
    if not isinstance(after, StreamEndEvent):
        loaded = Located(
            value, builder.file, builder.root, builder.marks, builder.held, texts=builder.texts, spans=builder.spans,
            merged=builder.merged,
        )
        raise SeveralDocuments(loaded, _at(builder.file, after))
    return value


_UNCLOSED = re.compile(r"while (parsing a flow (sequence|mapping)|scanning a (quoted|double-quoted|single-quoted) scalar)")


def _yaml_hint(problem: str, at: str) -> str | None:
    """`at` is the character where the parser stopped."""
    if at == "\t" or "found character '\\t'" in problem:
        return "YAML does not allow tabs for indentation; use spaces"
    if "cannot start any token" in problem:
        return f"quote the value: a plain YAML value cannot start with {at!r}" if at else None
    if "while parsing a flow sequence" in problem:
        return "close the list with ']' (a value that starts with '[' must be quoted)"
    if "while parsing a flow mapping" in problem:
        return "close the mapping with '}' (a value that starts with '{' must be quoted)"
    if "quoted scalar" in problem:
        return "close the quote"
    if "mapping values are not allowed" in problem:
        return "check the indentation, or quote a value that contains ': '"
    return None
