"""The cyclic garbage collector paused around work that allocates many objects with no cycle among
them (a project loaded and planned, a compiled build unpickled, a manifest read): its repeated full
passes over what is already built cost ~20-25% of such work (a fresh plan of 10,000 deployments:
~1.5-2 s of ~8 s). A module of its own, with nothing but the standard library, so the no-op check can
use it without importing the loader."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the collector, then restore it as it was (nested pauses leave it to the outermost).

    What the pause built outlives it (a project, a plan): it is handed to the oldest generation at
    once, as it would reach it after surviving two collections. Otherwise the first young
    collections after the pause each walk all of it (a fresh plan of 10,000 deployments: two
    passes, ~0.25 s). `freeze` then `unfreeze` moves every tracked object there without a pass;
    skipped while something else holds objects frozen (the engine during a build)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()
