"""The installed entry points, read once per process: step types (`buildsys.steps`) and pool types
(`buildsys.pool_types`) register through them, built-in and third-party alike."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoints, entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.metadata import SelectableGroups  # what Python 3.11 returns; 3.12: EntryPoints


@lru_cache(maxsize=1)
def _installed() -> SelectableGroups | EntryPoints:
    # one pass over every distribution's metadata (tens of ms with Prefect's ~200 installed) serves all groups
    return entry_points()


def group(name: str) -> EntryPoints:
    """The entry points of one group."""
    return _installed().select(group=name)


def refresh() -> None:
    """Read the installed entry points again (after a plugin was installed in this process)."""
    _installed.cache_clear()
