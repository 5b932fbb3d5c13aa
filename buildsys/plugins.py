"""The installed entry points, read once per process: step types (`buildsys.steps`) and pool types
(`buildsys.pool_types`) register through them, built-in and third-party alike.

Reading them with `importlib.metadata` costs a command ~0.1 s (its import pulls in `email` and
`calendar`; the scan parses ~200 distributions' metadata with Prefect installed), and almost every
command only needs to learn that a built-in name is built-in. So a group is first answered by a
look over the same places `importlib.metadata` searches: the `*.dist-info`/`*.egg-info` folders of
every `sys.path` entry, only their `entry_points.txt` read (a few ms). When buildsys's own
distribution is the only one whose entry points mention buildsys at all, the group is read from
that one file (the first buildsys distribution on the path, as `importlib.metadata` takes the
first of a name), with the parser's rules, and the answer is the one `importlib.metadata` gives.
In any other case — another package declares entry points naming buildsys (a plugin, a shadowing
or broken one), buildsys's own entry points are missing (a broken install), two copies of
buildsys in one folder, a path entry is a zip or an egg, an import hook lists distributions of its own —
the group comes from `importlib.metadata` as it always did, so what is reported (a conflict, an
unknown or unregistered name, a plugin that fails to import) is the same.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from importlib.metadata import EntryPoints, SelectableGroups  # 3.11 returns SelectableGroups

OWN_DIST = "buildsys"
_MENTION = b"buildsys"  # in another distribution's entry_points.txt: read them all properly


class Entry(Protocol):
    """What callers use of an entry point (`importlib.metadata.EntryPoint` has all of it)."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    @property
    def dist(self) -> Any: ...  # has .name (the distribution's), or None

    def load(self) -> Any: ...


class _Dist:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class OwnEntry:
    """One of buildsys's own entry points, read from its installed entry_points.txt."""

    __slots__ = ("dist", "group", "name", "value")

    def __init__(self, name: str, value: str, group: str) -> None:
        self.name = name
        self.value = value
        self.group = group
        self.dist = _Dist(OWN_DIST)

    def load(self) -> Any:
        """As EntryPoint.load: the module, then the dotted attribute (extras ignored)."""
        import importlib

        module, _, attrs = self.value.partition(":")
        obj: Any = importlib.import_module(module.strip())
        for attr in attrs.split("[", 1)[0].strip().split("."):
            if attr:
                obj = getattr(obj, attr)
        return obj

    def __repr__(self) -> str:
        return f"OwnEntry(name={self.name!r}, value={self.value!r}, group={self.group!r})"


def group(name: str) -> Sequence[Entry]:
    """The entry points of one group."""
    own = _own_only()
    if own is not None:
        return [e for e in own if e.group == name]
    return list(_installed().select(group=name))


def refresh() -> None:
    """Read the installed entry points again (after a plugin was installed in this process)."""
    _installed.cache_clear()
    _own_only.cache_clear()


@lru_cache(maxsize=1)
def _installed() -> SelectableGroups | EntryPoints:
    # one pass over every distribution's metadata (tens of ms with Prefect's ~200 installed) serves all groups
    from importlib.metadata import entry_points

    return entry_points()


@lru_cache(maxsize=1)
def _own_only() -> tuple[OwnEntry, ...] | None:
    """buildsys's own entry points when no other installed distribution's mention buildsys and
    nothing could make `importlib.metadata` see other distributions; else None."""
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:  # an import hook may list distributions of its own
        if finder is not PathFinder and getattr(finder, "find_distributions", None) is not None:
            return None
    own: list[bytes | None] = []  # buildsys's distributions in the first path entry that has one
    for entry in sys.path:
        root = entry or "."
        if entry.lower().endswith(".egg"):
            return None
        try:
            listing = os.scandir(root)
        except NotADirectoryError:
            return None  # a zip on the path: its distributions are read by importlib.metadata
        except OSError:
            continue  # missing: importlib.metadata finds nothing there either
        first = not own
        with listing:
            for child in listing:
                low = child.name.lower()
                if not low.endswith((".dist-info", ".egg-info")):
                    continue
                mine = low.rpartition(".")[0].partition("-")[0] == OWN_DIST
                if mine and not first:
                    continue  # importlib.metadata takes the first distribution of a name only
                try:
                    with open(os.path.join(child.path, "entry_points.txt"), "rb") as fh:
                        text: bytes | None = fh.read()
                except OSError:
                    text = None
                if mine:
                    own.append(text)
                elif text is not None and _MENTION in text:
                    return None
    own_text = own[0] if len(own) == 1 else None
    if own_text is None:
        return None  # not installed, twice in one folder, or without its entry points: the full scan says
    try:
        return tuple(_parse(own_text.decode("utf-8")))
    except (UnicodeDecodeError, ValueError):
        return None


def _parse(text: str) -> list[OwnEntry]:
    """entry_points.txt as importlib.metadata reads it: stripped lines, `#` comments, `[group]`
    headers, `name = value` pairs split at the first `=`."""
    out: list[OwnEntry] = []
    section: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
            continue
        if section is None:
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ValueError(line)
        out.append(OwnEntry(name.strip(), value.strip(), section))
    return out
