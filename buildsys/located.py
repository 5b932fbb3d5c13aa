"""A loaded YAML document: its values and the location of every node (what `yamlsource.load_yaml`
returns, whichever reader built it), and the loader's errors. Shared by the two readers
(`yamllines`, `yamlevents`), which `yamlsource` chooses between."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from buildsys.errors import BuildsysError, Location

Path_ = tuple[str | int, ...]
_COL_BITS = 32  # a packed location is line << 32 | column (1-based both)
_COL_MASK = (1 << _COL_BITS) - 1
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_INTERN_UP_TO = 64  # characters
_SHORT_INT = 18  # digits: any such integer is one the store can hold (< 2**63)
MAX_ALIAS_NODES = 20_000  # events replayed by aliases, plus 4 per character of the file
MAX_ALIAS_CHARS = 4_000_000  # scalar characters replayed by aliases, plus 4 per character of the file


class YamlError(BuildsysError):
    """The file is not valid YAML (or uses YAML in a way we refuse, like duplicate keys)."""


class SeveralDocuments(YamlError):
    """The file holds more than one YAML document; `first` is the first one, loaded (a caller can
    tell what kind of file it is: a multi-document Kubernetes manifest, say)."""

    def __init__(self, first: Located, location: Location) -> None:
        super().__init__(
            "not valid YAML: expected a single document in the stream: but found another document",
            location=location,
            hint="a prefect.yaml is one YAML document: remove the second `---`, or split the file",
        )
        self.first = first


# id(container) → its keys' or items' packed locations. Every container named here is also held
# (`Located.held`), so while the marks live no other object can have its id.
Marks = dict[int, "dict[Any, int] | list[int]"]


class Located:
    """A loaded document: the value and the location of every node by its path. (A plain class,
    not a dataclass: one fewer class compiled from source at every start.)"""

    __slots__ = ("file", "held", "marks", "merged", "root", "spans", "storable", "texts", "value")

    def __init__(
        self,
        value: Any,
        file: str,
        root: int | None = None,  # packed location of the whole document, see `_pack`
        marks: Marks | None = None,
        held: list[Any] | None = None,  # the containers `marks` names
        storable: bool = False,
        texts: list[str] | None = None,
        spans: dict[int, int] | None = None,
        merged: set[int] | None = None,
    ) -> None:
        self.value = value
        self.file = file
        self.root = root
        self.marks: Marks = {} if marks is None else marks
        self.held: list[Any] = [] if held is None else held
        # True: the loader saw every value built and none is one the store cannot hold (see
        # `storable.value_problems`), so that walk of the whole document can be skipped. False: unknown.
        self.storable = storable
        # Every string value holding `{{` (a placeholder, see `templating.templated`), in the order
        # built, and which of them each located container holds (see `templates`): id → a << 32 | b,
        # the container holds texts[a:b]; `merged`: containers with a merge key inside.
        self.texts: list[str] = [] if texts is None else texts
        self.spans: dict[int, int] = {} if spans is None else spans
        self.merged: set[int] = set() if merged is None else merged

    def __repr__(self) -> str:
        return f"Located(value={self.value!r}, file={self.file!r}, root={self.root!r}, storable={self.storable!r})"

    def loc(self, path: Path_) -> Location | None:
        """The location of `path`, or of its nearest located ancestor (every ancestor of a located
        node is located, so walking down and stopping at the first unlocated step finds it)."""
        found = self.root
        if found is None:
            return None
        found, _ = self._walk(path, found, self.value)
        return Location(self.file, found >> _COL_BITS, found & ((1 << _COL_BITS) - 1))

    def locs(self, path: Path_, keys: Iterable[str | int]) -> list[Location | None]:
        """`[loc((*path, key)) for key in keys]`, walking down to `path` once."""
        found = self.root
        if found is None:
            return [None for _ in keys]
        found, node = self._walk(path, found, self.value)
        out: list[Location | None] = []
        for key in keys:
            here = found if node is _STOPPED else self._walk((key,), found, node)[0]
            out.append(Location(self.file, here >> _COL_BITS, here & ((1 << _COL_BITS) - 1)))
        return out

    def at(self, container: Any, key: str | int, path: Path_) -> Location | None:
        """`loc(path)` for a `path` that ends in `key` of `container`, the value at `path[:-1]`:
        one look at the container's own marks instead of the walk from the top (the narrower asks
        this a few times per deployment). A located container has only located ancestors, so the
        walk would end at the same mark; whatever this cannot answer, the walk does."""
        at = self.marks.get(id(container))
        if at is not None:
            if type(at) is dict:
                here = at.get(key)
            else:
                here = at[key] if type(key) is int and 0 <= key < len(at) else None
            if here is not None:
                return Location(self.file, here >> _COL_BITS, here & _COL_MASK)
        return self.loc(path)

    def keys_at(self, container: dict[Any, Any], path: Path_) -> list[Location | None]:
        """`locs(path, container)` for the mapping `container` at `path`: its keys' marks read at
        once when it holds one for each key (the walk answers otherwise)."""
        at = self.marks.get(id(container))
        if type(at) is dict:
            out: list[Location | None] = []
            file = self.file
            for key in container:
                here = at.get(key)
                if here is None:
                    return self.locs(path, container)
                out.append(Location(file, here >> _COL_BITS, here & _COL_MASK))
            return out
        return self.locs(path, container)

    def templates(self, container: Any) -> tuple[str, ...] | None:
        """What `templating.templated(container)` finds, for a mapping or list this document
        built at a located place: the strings among its values (at any depth) that hold `{{`, in
        order, noted as they were built. None when not known so: a container not built here, or
        one with a merge key inside (a merged value can be overridden: walk it then)."""
        key = id(container)
        if key not in self.marks or key in self.merged:
            return None
        span = self.spans.get(key)
        return () if span is None else tuple(self.texts[span >> _COL_BITS : span & _COL_MASK])

    def _walk(self, path: Path_, found: int, node: Any) -> tuple[int, Any]:
        """From `node` (located at `found`) down `path`: (the packed location of `path` or of its
        nearest located ancestor, the value at `path`, or `_STOPPED` when the walk stopped above it)."""
        marks = self.marks
        for step in path:
            at = marks.get(id(node))
            if at is None:
                return found, _STOPPED
            if type(at) is dict:
                try:
                    here = at.get(step)
                except TypeError:  # an unhashable step names nothing
                    return found, _STOPPED
            elif isinstance(step, int) and 0 <= step < len(at):
                here = at[step]
            else:
                return found, _STOPPED
            if here is None:
                return found, _STOPPED
            found = here
            try:
                node = node[step]
            except (LookupError, TypeError):  # the value was edited after loading
                return found, _STOPPED
        return found, node


_STOPPED = object()

def _unstorable_text(text: str) -> bool:
    """`storable.text_problem`'s test (a NUL, a lone surrogate), said as yes/no."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_INT_RANGE = (-(2**63), 2**63 - 1)  # storable.INT_RANGE (not imported: the loader needs no store rules)


def _storable_scalar(value: Any) -> bool:
    """A value the constructor built (an explicit tag, a number, a date …) passes
    `storable.value_problems`' checks of a scalar."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return _INT_RANGE[0] <= value <= _INT_RANGE[1]
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return not _unstorable_text(value)
    return True  # dates, bytes …: value_problems does not look at them
