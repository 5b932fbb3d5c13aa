"""Inputs listed and hashed ahead by a forked helper (buildsys.cache_prefetch): the build decides,
keys and records exactly what it does without the helper, and an answer that no longer holds is
never used."""

from __future__ import annotations

import json
import marshal
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from buildsys import cache_prefetch
from buildsys.cache import Cache, FileSet
from buildsys.compiled import compile_project
from buildsys.engine import Engine
from buildsys.project import load_project
from buildsys.reporter import Event

STEPS_PY = '''
from pathlib import Path


def put(*, name, text="", write=None):
    if write:
        Path(write).write_text(text)
    return {"value": name + ":" + text}
'''

# b reads the file a writes (an answer computed before a ran must not be used for b); c has a
# named input that does not exist; d a directory; the rest a glob each.
PROJECT = """
build:
  - mysteps.py:put: {id: a, name: a, text: "new content", write: src/b/x.txt, inputs: ["src/a/*"]}
  - mysteps.py:put: {id: b, name: b, text: "{{ a.value }}", inputs: ["src/b/*.txt"], needs: [a]}
  - mysteps.py:put: {id: c, name: c, inputs: ["src/c/missing.txt", "src/c/*"], needs: []}
  - mysteps.py:put: {id: d, name: d, inputs: ["src/d"], needs: []}
""" + "".join(
    f'  - mysteps.py:put: {{id: e{i}, name: e{i}, inputs: ["src/e{i}/*"], needs: []}}\n' for i in range(6)
)


def age(path: Path) -> None:
    old = time.time() - 3600
    os.utime(path, (old, old))


def make_project(root: Path) -> Path:
    root.mkdir(exist_ok=True)
    (root / "mysteps.py").write_text(STEPS_PY)
    (root / "prefect.yaml").write_text(PROJECT)
    for name in ["a", "b", "c", "d", "d/sub", *(f"e{i}" for i in range(6))]:
        folder = root / "src" / name
        folder.mkdir(parents=True)
        for i in range(3):
            (folder / f"f{i}.txt").write_text(f"{name} {i}\n")
            age(folder / f"f{i}.txt")
    (root / "src" / "b" / "x.txt").write_text("old content\n")
    age(root / "src" / "b" / "x.txt")
    for folder in sorted((root / "src").rglob("*"), reverse=True):
        if folder.is_dir():
            age(folder)
    return root


class Collect:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def event(self, event: Event) -> None:
        if event.kind != "log":
            self.events.append((event.kind, event.label, event.reason))

    def close(self) -> None:
        pass


def build(root: Path) -> tuple[dict[str, Any], int]:
    compiled = compile_project(load_project(root / "prefect.yaml"))
    rep = Collect()
    engine = Engine(compiled.project, compiled.graph, compiled.steps, jobs=1, reporter=rep)
    here = os.getcwd()
    os.chdir(root)  # the step writes a path relative to the project
    try:
        result = engine.run()
    finally:
        os.chdir(here)
    assert result.ok, [r.error for r in result.results.values() if r.error]
    used = engine._prefetch.used if engine._prefetch is not None else -1
    checked = engine._prefetch.checked if engine._prefetch is not None else -1
    cache = Cache(root)
    rows = cache.db.execute("SELECT path, size, digest FROM files ORDER BY path").fetchall()
    nodes = cache.db.execute("SELECT node, key, components FROM nodes ORDER BY node").fetchall()
    cache.close()
    deps = result.dependencies
    prefix = str(root)
    seen = {
        "events": rep.events,
        "keys": {r.label: r.cache_key for r in result.results.values()},
        "outputs": {r.label: r.outputs for r in result.results.values()},
        "files": sorted(f.replace(prefix, "") for f in deps.files),
        "directories": sorted(d.replace(prefix, "") for d in deps.directories),
        "nodes": {k: ([f.replace(prefix, "") for f in v[0]], [d.replace(prefix, "") for d in v[1]]) for k, v in deps.nodes.items()},
        "stats": sorted(f.replace(prefix, "") for f in deps.stats),
        "rows": rows,
        "records": nodes,
        "provable": deps.provable,
    }
    return seen, used, checked


def test_a_build_with_the_helper_equals_one_without(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_prefetch, "cpus", lambda: 2)
    monkeypatch.setattr(cache_prefetch, "MIN_STEPS", 1)
    monkeypatch.setattr(cache_prefetch.Prefetch, "patient", True)  # every answer waited for and taken
    with_helper, used, checked = build(make_project(isolated / "one"))
    # The helper answers b first (every other step is ready at the start, so the build decides them
    # at once), before a writes b's input: that answer is refused, by the helper's check once a has
    # finished and by the build's own. c's missing file is left to the engine; a, d and e0-e5 are
    # taken, each on the helper's word (they wait for no step: it checks them right away).
    assert (used, checked) == (8, 8)
    monkeypatch.setattr(cache_prefetch, "MIN_STEPS", 10**9)
    without, unused, _ = build(make_project(isolated / "two"))
    assert unused == -1
    assert with_helper == without
    # b was keyed on what a wrote, whoever listed and hashed src/b first
    assert "new content" in dict((n, c) for n, _, c in with_helper["records"])["b"].replace("\\n", "")


def answers(root: Path, steps: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """The helper's answers, computed in this process (what the forked helper sends)."""
    import mmap

    read, write = os.pipe()
    cache = Cache(root)
    try:
        cache_prefetch._serve(write, FileSet(root), root, steps, cache.file_rows(), mmap.mmap(-1, len(steps)))
    finally:
        cache.close()
    out = {}
    with os.fdopen(read, "rb") as fh:
        while head := fh.read(4):
            key, answer = marshal.loads(fh.read(int.from_bytes(head, "little")))
            out[key] = answer
    return out


def test_an_answer_is_used_only_while_what_it_rests_on_holds(isolated: Path) -> None:
    root = make_project(isolated)
    got = answers(root, [("b", ["src/b/*.txt"]), ("c", ["src/c/missing.txt", "src/c/*"]), ("d", ["src/d"]),
                         ("e0", ["src/e0/*"])])
    assert got["c"] is None  # a missing file: left to the engine
    found = cache_prefetch._still_true(got["d"])
    assert found is not None
    assert found.files == FileSet(root).expand(["src/d"], root)
    cache = Cache(root)
    assert found.digests == cache.digests(found.files)
    cache.close()
    assert sorted(found.listed) == [str(root / "src" / "d"), str(root / "src" / "d" / "sub")]
    # a file rewritten, a file added, a file too recent to trust: each answer is refused
    (root / "src" / "b" / "x.txt").write_text("changed\n")
    age(root / "src" / "b" / "x.txt")
    assert cache_prefetch._still_true(got["b"]) is None
    (root / "src" / "d" / "sub" / "new.txt").write_text("new\n")
    assert cache_prefetch._still_true(got["d"]) is None
    assert cache_prefetch._still_true(got["e0"]) is not None
    (root / "src" / "e0" / "f0.txt").write_text("e0 0\n")  # same content, but modified just now
    assert cache_prefetch._still_true(answers(root, [("e0", ["src/e0/*"])])["e0"]) is None


def test_the_helper_vouches_for_an_answer_only_once_the_steps_before_it_finished(
        isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmap
    import select
    import threading

    monkeypatch.setattr(cache_prefetch, "LEAD", 0)  # checks as soon as due (not only while far ahead)
    root = make_project(isolated)
    steps = [("b", ["src/b/*.txt"]), ("e0", ["src/e0/*"]), ("e1", ["src/e1/*"])]
    out_read, out_write = os.pipe()
    hear, finished = os.pipe()
    cache = Cache(root)
    rows = cache.file_rows()
    cache.close()
    # b waits for steps 7 and 8 (numbered as the build numbers them), e0 for none, e1 for step 9
    helper = threading.Thread(target=cache_prefetch._serve, args=(
        out_write, FileSet(root), root, steps, rows, mmap.mmap(-1, len(steps)), 0, hear, [[7, 8], [], [9]]))
    helper.start()
    said: list[tuple[str, Any]] = []
    deadline = time.monotonic() + 30

    def read(size: int) -> bytes:
        data = b""
        while len(data) < size:
            assert select.select([out_read], [], [], max(0.0, deadline - time.monotonic()))[0], said
            data += os.read(out_read, size - len(data))
        return data

    def until(count: int) -> list[tuple[str, Any]]:
        while len(said) < count:
            key, answer = marshal.loads(read(int.from_bytes(read(4), "little")))
            said.append((key, answer if isinstance(answer, bool) else "answer"))
        return said

    # e0 waits for nothing: checked at once; b and e1 not before the steps they wait for finish
    assert until(4) == [("b", "answer"), ("e0", "answer"), ("e0", True), ("e1", "answer")]
    os.write(finished, (7).to_bytes(4, "little") * 2)  # step 7, said twice, is still one of b's two
    os.write(finished, (9).to_bytes(4, "little"))  # e1's, its files as they were: checked
    assert until(5)[4] == ("e1", True)
    (root / "src" / "b" / "x.txt").write_text("written by step 8\n")  # what a step before b wrote
    age(root / "src" / "b" / "x.txt")
    os.write(finished, (8).to_bytes(4, "little"))
    assert until(6)[5] == ("b", False)
    os.close(finished)
    helper.join(30)
    assert not helper.is_alive()
    assert os.read(out_read, 1) == b""  # nothing more said
    os.close(out_read)


def test_the_helper_answers_ahead_of_the_build_and_leaves_it_what_it_overtook() -> None:
    import mmap

    def order(count: int, first: int, build_does: dict[int, list[int]]) -> list[int]:
        """The places the helper answers, the build deciding `build_does[n]` before the nth answer."""
        progress = mmap.mmap(-1, count)
        for done in build_does.get(0, []):
            progress[done] = 1
        out: list[int] = []
        for place in cache_prefetch._places(progress, count, first):
            out.append(place)
            for done in build_does.get(len(out), []):
                progress[done] = 1
        return out

    # ready at the start: 0-2 (the build decides them at once); then forwards; the first ones last
    assert order(8, 3, {}) == [3, 4, 5, 6, 7, 2, 1, 0]
    assert order(8, 3, {0: [0, 1, 2]}) == [3, 4, 5, 6, 7]
    # the build overtook the helper at 4-5: it leaves 6-7 to the build too, answers 8 on, and
    # comes back (farthest first) to what the build has not reached by then
    assert order(12, 3, {1: [4, 5]}) == [3, 8, 9, 10, 11, 7, 6, 2, 1, 0]
    assert order(12, 3, {1: [4, 5], 4: [6]}) == [3, 8, 9, 10, 11, 7, 2, 1, 0]
    # every place at most once, never one the build has decided, and every one it has not
    progress = mmap.mmap(-1, 50)
    seen: list[int] = []
    for place in cache_prefetch._places(progress, 50, 5):
        assert not progress[place]
        seen.append(place)
        for done in (len(seen) * 3, len(seen) * 3 + 1):
            if done < 50:
                progress[done] = 1
    assert len(seen) == len(set(seen))
    assert set(seen) | {i for i in range(50) if progress[i]} == set(range(50))


HOOKED = '''
from buildsys.step import step


@step("hooked")
def hooked(ctx, name: str):
    return {"name": name}


@hooked.files
def _files(inputs, ctx):
    return ["src/h/extra.txt", "src/e0/f0.txt"]  # one of its own, one another step's glob lists
'''


def test_a_step_with_a_files_hook_keys_the_same_with_the_helper(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = isolated / "plugins"
    plugins.mkdir()
    (plugins / "prefetchhook.py").write_text(HOOKED)
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setattr(cache_prefetch, "cpus", lambda: 2)
    monkeypatch.setattr(cache_prefetch.Prefetch, "patient", True)
    seen = []
    for name, least in (("one", 1), ("two", 10**9)):
        monkeypatch.delitem(sys.modules, "prefetchhook", raising=False)
        monkeypatch.setattr(cache_prefetch, "MIN_STEPS", least)
        root = make_project(isolated / name)
        (root / "src" / "h").mkdir()
        for f in ("x.txt", "extra.txt"):
            (root / "src" / "h" / f).write_text(f"h {f}\n")
            age(root / "src" / "h" / f)
        age(root / "src" / "h")
        with (root / "prefect.yaml").open("a") as fh:
            fh.write('  - prefetchhook.hooked: {id: h, name: h, inputs: ["src/h/x.txt"], needs: []}\n')
        seen.append(build(root)[:2])
    (with_helper, used), (without, unused) = seen
    assert used == 9 and unused == -1  # the hooked step's answer was taken too
    assert with_helper == without
    components = json.loads(dict((n, c) for n, _, c in with_helper["records"])["h"])
    assert sorted(components["files"]) == ["src/e0/f0.txt", "src/h/extra.txt", "src/h/x.txt"]
