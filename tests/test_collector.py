"""collector.gc_paused: the collector paused, restored, and what the pause built aged at once."""

from __future__ import annotations

import gc
import weakref

from buildsys.collector import gc_paused


class _Node:
    me: object


def test_what_a_pause_built_is_in_the_oldest_generation_not_frozen() -> None:
    """The first young collections after a pause would each walk everything it built (a plan of
    10,000 deployments: ~0.25 s); it is moved to the oldest generation instead, nothing left frozen."""
    assert gc.isenabled()
    with gc_paused():
        built = [[i] for i in range(1000)]
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    young = {id(o) for generation in (0, 1) for o in gc.get_objects(generation=generation)}
    assert not any(id(item) in young for item in built)
    assert any(o is built[0] for o in gc.get_objects(generation=2))


def test_cyclic_garbage_made_during_a_pause_is_still_collected() -> None:
    with gc_paused():
        node = _Node()
        node.me = node
        gone = weakref.ref(node)
        del node
    gc.collect()
    assert gone() is None


def test_objects_someone_else_froze_stay_frozen() -> None:
    """The engine freezes what exists for the length of a build: a pause inside it leaves that be.

    Asked of one object, not of the frozen count: other threads of the test process may free frozen
    objects meanwhile (the count fell by one under xdist in CI), while an unfreeze would move them all."""
    held = [[]]
    gc.freeze()
    try:
        with gc_paused():
            pass
        assert gc.get_freeze_count() > 0
        assert not any(o is held for generation in (0, 1, 2) for o in gc.get_objects(generation=generation))
    finally:
        gc.unfreeze()
    assert any(o is held for o in gc.get_objects(generation=2))


def test_a_pause_inside_a_pause_leaves_the_collector_to_the_outer_one() -> None:
    with gc_paused():
        with gc_paused():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
