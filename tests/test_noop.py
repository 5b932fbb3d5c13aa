"""The no-op fast path answers only when nothing the build depended on moved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from buildsys import noop
from buildsys.cache import Cache

PROJECT = """\
build:
  - run_shell_script:
      id: one
      script: echo one {{ $FLAVOUR }}
      inputs: ["src/*.py"]
  - run_shell_script:
      id: two
      script: echo two
      needs: []
"""


def build(root: Path, *extra: str, env: dict[str, str] | None = None) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, "-m", "buildsys", "build", "--json", *extra],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "FLAVOUR": "plain", **(env or {})},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    summary = events[-1]
    assert summary["event"] == "summary"
    return summary


def valid(root: Path) -> bool:
    """Asked the way the CLI asks (a child process: the same sys.path as `python -m buildsys`)."""
    code = f"from buildsys import noop; print(noop.still_valid({str(manifest(root))!r}) is not None)"
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, env={**os.environ, "FLAVOUR": "plain"})
    return r.stdout.strip() == "True"


def age(path: Path) -> None:
    old = time.time() - 3600
    os.utime(path, (old, old))


@pytest.fixture
def proj(isolated: Path) -> Path:
    (isolated / "prefect.yaml").write_text(PROJECT)
    age(isolated / "prefect.yaml")
    (isolated / "src").mkdir()
    (isolated / "src" / "a.py").write_text("a = 1\n")
    age(isolated / "src" / "a.py")
    age(isolated / "src")
    return isolated


def manifest(root: Path) -> Path:
    return Path(noop.manifest_path(str(root / "prefect.yaml"), ("build",), []))


def test_manifest_written_after_a_provable_build_and_used(proj: Path) -> None:
    assert build(proj)["ran"] == 2
    assert manifest(proj).is_file()
    assert valid(proj)
    summary = build(proj)
    summary.pop("time")
    assert summary == {"event": "summary", "message": "build ok: 0 ran, 2 cached, 0 failed, 0 not run", "ok": True, "ran": 0, "cached": 2, "failed": 0, "skipped": 0}


def test_every_kind_of_change_falls_through_to_the_engine(proj: Path) -> None:
    build(proj)
    # an input file changes
    (proj / "src" / "a.py").write_text("a = 2\n")
    assert not valid(proj)
    assert build(proj)["ran"] == 1
    age(proj / "src" / "a.py")
    build(proj)
    # a new file matches the glob (its directory listing changed)
    (proj / "src" / "b.py").write_text("b = 1\n")
    assert not valid(proj)
    assert build(proj)["ran"] == 1
    for p in (proj / "src" / "b.py", proj / "src"):
        age(p)
    build(proj)
    # an environment variable the build used
    assert build(proj, env={"FLAVOUR": "spicy"})["ran"] == 1
    # the project file
    (proj / "prefect.yaml").write_text(PROJECT.replace("echo two", "echo deux"))
    age(proj / "prefect.yaml")
    assert build(proj, env={"FLAVOUR": "spicy"})["ran"] == 1


def test_cache_clear_and_deleted_cache_invalidate_the_proof(proj: Path) -> None:
    build(proj)
    subprocess.run([sys.executable, "-m", "buildsys", "cache", "clear"], cwd=proj, check=True, capture_output=True)
    assert not manifest(proj).exists()
    assert build(proj)["ran"] == 2
    (proj / ".buildsys" / "cache.db").unlink()
    assert not valid(proj)
    assert build(proj)["ran"] == 2


def test_recently_modified_files_are_not_trusted(proj: Path) -> None:
    (proj / "src" / "a.py").write_text("a = 3\n")
    # Inside the racy window however long the build takes on a loaded machine: its mtime is ahead.
    ahead = time.time() + 600
    os.utime(proj / "src" / "a.py", (ahead, ahead))
    build(proj)
    assert not valid(proj)  # recorded as changed: the next build decides, no no-op answer
    assert build(proj)["ran"] == 0  # and it finds nothing to run (the content is what was built)


def test_unprovable_builds_leave_no_manifest(proj: Path) -> None:
    build(proj)
    assert manifest(proj).exists()
    build(proj, "--no-cache")
    assert not manifest(proj).exists()


# (a change the main process sees, with steps: it checks its part and leaves the helper's answer
# to previous_build; one the helper sees, with steps: it says so at once and goes on for
# previous_build; without steps: it stops there; no change)
@pytest.mark.parametrize(("which", "steps"), [("first", True), ("last", True), ("last", False), ("none", True)])
def test_many_files_are_checked_in_two_processes_and_any_change_is_seen(
    isolated: Path, which: str, steps: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above PARALLEL_FROM files a forked helper checks the second half: a change in either half
    (or a file gone) must still make the manifest invalid, and nothing is left running. When the
    manifest records its steps, every file is checked and previous_build uses what was found: the
    same answer as checking again on its own."""
    files = []
    for d in range(10):
        folder = isolated / f"d{d}"
        folder.mkdir()
        for i in range(noop.PARALLEL_FROM // 10 + 50):
            f = folder / f"f{i:04d}"
            f.write_text(f"{d}/{i}\n")
            age(f)
            files.append(str(f))
    files.sort()
    helpers: list[int] = []
    fork = os.fork

    def recorded_fork() -> int:
        pid = fork()
        if pid:
            helpers.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", recorded_fork)
    cache = isolated / "cache.db"
    cache.write_text("")
    path = str(isolated / ".buildsys" / "noop" / "manifest")
    half = len(files) // 2
    dirs = [str(isolated / f"d{d}") for d in range(10)]  # each step lists the folders of its files
    nodes = [("a", "k1", files[:half], dirs[:5]), ("b", "k2", files[half:], dirs[5:])] if steps else []
    assert noop.write_manifest(path, files=files, directories=dirs if steps else [], env={}, labels=["a", "b"],
                               cache=str(cache), nodes=nodes)
    assert noop.still_valid(path) == ["a", "b"]
    changed = {"first": 0, "last": len(files) - 1}.get(which)
    if changed is not None:
        f = Path(files[changed])
        before = f.stat()
        f.write_text("changed\n")
        os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))  # only size and ctime differ
        if steps and which == "first":  # and a folder step a lists gains a file: previous_build takes the check's folders too
            (isolated / "d0" / "new").write_text("new\n")
        assert noop.still_valid(path) is None
        if steps:
            found = noop._verified[path]
            assert found[1] == ({changed} if which == "first" else set())  # (this process's part)
            # The helper's part, collected below: still being checked when this process's part
            # moved, or when the helper said its part did (not waited for to the end).
            assert (found[3] is not None) == (noop.cpus() > 1)
            fast = noop.previous_build(path)
            assert path not in noop._verified
            noop._decoded.clear()  # and again with nothing found beforehand: every file stat-ed here
            slow = noop.previous_build(path)
            assert fast is not None and slow is not None
            assert (fast.moved, fast.changed, fast.keys) == (slow.moved, slow.changed, slow.keys) == (
                {changed}, {"a"} if which == "first" else {"b"}, {"a": "k1", "b": "k2"})
        else:
            assert path not in noop._verified
        f.unlink()
        assert noop.still_valid(path) is None
        noop.previous_build(path)  # (what the build does next: it collects a helper left checking)
    else:
        assert noop.still_valid(path) == ["a", "b"]
    if noop.cpus() > 1:
        assert len(helpers) == (3 if changed is not None else 2)  # one per still_valid call
    for pid in helpers:  # every helper was waited for
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_stat_data_seen_by_the_build_is_recorded_and_a_file_changed_since_is_not_trusted(isolated: Path) -> None:
    """The manifest records the stat data the build decided on (no second stat per file); a file
    that moved after that (a step rewrote it) makes the next check fall through to the engine."""
    a, b = isolated / "a.txt", isolated / "b.txt"
    for f in (a, b):
        f.write_text("1\n")
        age(f)
    cache = isolated / "cache.db"
    cache.write_text("")
    seen = {str(p): (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for p in (a, b) for st in [p.stat()]}
    path = str(isolated / ".buildsys" / "noop" / "m")
    assert noop.write_manifest(path, files=[str(a), str(b)], directories=[], env={}, labels=["s"], cache=str(cache), known=seen)
    assert noop.still_valid(path) == ["s"]
    b.write_text("2\n")
    age(b)
    stale = {**seen}  # what the build saw of b before a step rewrote it
    assert noop.write_manifest(path, files=[str(a), str(b)], directories=[], env={}, labels=["s"], cache=str(cache), known=stale)
    assert noop.still_valid(path) is None


CHAIN = """\
build:
  - run_shell_script:
      id: a
      script: echo a
      inputs: ["src/a/*"]
  - run_shell_script:
      id: b
      script: echo b {{ a.stdout }}
      inputs: ["src/b/*"]
  - run_shell_script:
      id: c
      script: echo c
      inputs: ["src/c/*"]
      needs: []
"""


@pytest.fixture
def chain(isolated: Path) -> Path:
    (isolated / "prefect.yaml").write_text(CHAIN)
    age(isolated / "prefect.yaml")
    for name in "abc":
        folder = isolated / "src" / name
        folder.mkdir(parents=True)
        (folder / "x.txt").write_text(f"{name}\n")
        age(folder / "x.txt")
        age(folder)
    age(isolated / "src")
    return isolated


def decisions(root: Path, *extra: str) -> dict[str, str]:
    """step -> "ran" or the reason it was cached, from `build --json`."""
    r = subprocess.run(
        [sys.executable, "-m", "buildsys", "build", "--json", *extra],
        cwd=root, capture_output=True, text=True, env={**os.environ, "FLAVOUR": "plain"}, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = {}
    for event in map(json.loads, r.stdout.splitlines()):
        if event["event"] == "done":
            out[event["step"]] = "ran"
        elif event["event"] == "cached":
            out[event["step"]] = event["reason"]
    return out


def previous(root: Path) -> dict[str, object] | None:
    """noop.previous_build, asked the way the CLI asks (a child process: its sys.path)."""
    code = (
        "import json; from buildsys import noop\n"
        f"p = noop.previous_build({str(manifest(root))!r})\n"
        "print(json.dumps(p and {'changed': sorted(p.changed), 'keys': p.keys, 'files': p.files, 'dirs': p.directories}))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, env={**os.environ, "FLAVOUR": "plain"})
    assert r.returncode == 0, r.stderr
    out: dict[str, object] | None = json.loads(r.stdout)
    return out


def edit(path: Path, text: str) -> None:
    path.write_text(text)
    age(path)  # outside the racy window, as a file edited a while ago
    age(path.parent)


def test_previous_build_names_the_steps_whose_own_inputs_moved(chain: Path) -> None:
    assert decisions(chain) == {"a": "ran", "b": "ran", "c": "ran"}
    keys = {e.label: e.key for e in Cache(chain).entries()}
    edit(chain / "src" / "c" / "x.txt", "c changed\n")
    prev = previous(chain)
    assert prev is not None
    assert prev["changed"] == ["c"]
    assert prev["keys"] == keys
    assert prev["files"] == {s: [str(chain / "src" / s / "x.txt")] for s in "abc"}
    assert prev["dirs"] == {s: [str(chain / "src" / s)] for s in "abc"}
    (chain / "src" / "b" / "new.txt").write_text("new\n")  # a new file: the listing moved
    prev = previous(chain)
    assert prev is not None and prev["changed"] == ["b", "c"]
    edit(chain / "prefect.yaml", CHAIN + "\n")  # anything no single step owns: no shortcut at all
    assert previous(chain) is None


def test_a_build_after_a_change_decides_exactly_as_a_full_one(chain: Path) -> None:
    decisions(chain)
    edit(chain / "src" / "c" / "x.txt", "c changed\n")
    assert decisions(chain) == {"a": "unchanged", "b": "unchanged", "c": "ran"}
    edit(chain / "src" / "a" / "x.txt", "a changed\n")
    assert decisions(chain) == {"a": "ran", "b": "ran", "c": "unchanged"}  # b reads a's output
    (chain / "src" / "b" / "new.txt").write_text("new\n")
    age(chain / "src" / "b" / "new.txt")
    assert decisions(chain) == {"a": "unchanged", "b": "ran", "c": "unchanged"}
    # Every recorded key is the one a build computing all keys finds: it reruns nothing.
    for stale in manifest(chain).parent.iterdir():
        stale.unlink()
    assert decisions(chain) == {"a": "unchanged", "b": "unchanged", "c": "unchanged"}


def test_a_racy_file_is_decided_again_and_the_rest_reused(chain: Path) -> None:
    decisions(chain)
    (chain / "src" / "a" / "x.txt").write_text("a changed\n")
    ahead = time.time() + 600  # inside the racy window however slow the machine
    os.utime(chain / "src" / "a" / "x.txt", (ahead, ahead))
    assert decisions(chain) == {"a": "ran", "b": "ran", "c": "unchanged"}
    assert not valid(chain)
    prev = previous(chain)
    assert prev is not None and prev["changed"] == ["a"]
    assert decisions(chain) == {"a": "unchanged", "b": "unchanged", "c": "unchanged"}


def test_a_manifest_written_from_the_previous_one_is_the_one_written_in_full(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a change, the manifest keeps the previous one's rows and rewrites only those of the
    files that moved, and the steps the build settled from it (`kept`) are taken from it as they
    were: byte for byte what writing every row of every step gives (in-process, no build)."""
    folders = {name: isolated / "src" / name for name in ("a", "b")}
    files: dict[str, list[str]] = {}
    for name, folder in folders.items():
        folder.mkdir(parents=True)
        files[name] = []
        for i in range(3):
            f = folder / f"{i}.txt"
            f.write_text(f"{name}{i}\n")
            age(f)
            files[name].append(str(f))
        age(folder)
    outside = isolated / "prefect.yaml"
    outside.write_text("build: []\n")
    age(outside)
    cache = isolated / ".buildsys" / "cache.db"
    cache.parent.mkdir()
    cache.write_text("")
    path = noop.manifest_path(str(outside), ("build",), [])

    def write(keys: dict[str, str], previous: noop.Previous | None, extra: tuple[str, ...] = (), kept: str = "") -> bytes:
        nodes = [(n, keys[n], files[n] + list(extra) * (n == "b"), [str(folders[n])]) for n in ("a", "b") if n not in kept]
        read = [f for n in ("a", "b") if n not in kept for f in files[n]]
        seen = noop.Seen({f: _stat(f) for f in files["a"] + list(extra)}, previous)  # what a build digested
        noop.write_manifest(path, files={*read, *extra}, directories=[str(folders[n]) for n in ("a", "b") if n not in kept],
                            env={}, labels=["a", "b"], cache=str(cache), known=seen, nodes=nodes, previous=previous,
                            loose=[str(outside)], kept=kept)
        return Path(path).read_bytes()

    write({"a": "k1", "b": "k2"}, None)
    Path(files["a"][1]).write_text("changed\n")  # a's own file moved; b's did not
    age(Path(files["a"][1]))
    prev = noop.previous_build(path)
    assert prev is not None and prev.changed == {"a"}
    with monkeypatch.context() as patched:  # the previous manifest's rows, not a full write
        patched.setattr(noop, "_fresh_fields", None)
        kept = write({"a": "k3", "b": "k2"}, prev, kept="b")
    assert kept == write({"a": "k3", "b": "k2"}, None)
    assert noop.still_valid(path) == ["a", "b"]
    # a file added to b's inputs: the rows cannot be kept, and the result is still the full write
    new = folders["b"] / "new.txt"
    new.write_text("new\n")
    age(new)
    age(folders["b"])
    prev = noop.previous_build(path)
    assert prev is not None and prev.changed == {"b"}
    grown = write({"a": "k3", "b": "k4"}, prev, (str(new),), kept="a")
    assert grown == write({"a": "k3", "b": "k4"}, None, (str(new),))
    # the project file moved: no step's recorded key is trusted, though a step reads it too
    files["b"].append(str(outside))
    write({"a": "k3", "b": "k4"}, None)
    assert noop.previous_build(path) is not None
    outside.write_text("build: [] # edited\n")
    age(outside)
    assert noop.previous_build(path) is None


def _stat(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


REACH = """\
build:
  - mysteps.py:emit:
      id: a
      word: "{{ $FLAVOUR }}"
      inputs: ["src/a/*"]
  - mysteps.py:emit:
      id: b
      word: "{{ a.word }}"
      inputs: ["src/b/*"]
  - mysteps.py:emit:
      id: c
      word: c
      inputs: ["src/c/*"]
      needs: []
  - mysteps.py:emit:
      id: d
      word: "{{ c.word }}"
      inputs: ["src/d/*"]
  - mysteps.py:emit:
      id: e
      word: e
      inputs: ["*.yaml", "*.py"]
      needs: []
"""
STEPS = "def emit(word: str) -> dict[str, str]:\n    return {'word': word}\n"


def test_a_build_after_each_kind_of_change_decides_as_a_build_from_nothing(isolated: Path) -> None:
    """Every way a step's key can change without one of its own input files changing reaches the
    step: each change is made in the project and in a copy whose no-op manifest is gone (that
    build computes every key), and both builds must decide every step alike, and as expected.
    Step e reads the project file and the steps' code as its own inputs: a change to either is
    still a change to every step (c and d, settled before e, kept their keys once when it was
    taken for e's change alone)."""
    import shutil

    root = isolated / "p"
    root.mkdir()
    (root / "prefect.yaml").write_text(REACH)
    (root / "mysteps.py").write_text(STEPS)
    for name in "abcd":
        (root / "src" / name).mkdir(parents=True)
        for f in ("x.txt", "y.txt"):
            (root / "src" / name / f).write_text(f"{name}/{f}\n")
    (root / "src" / "a" / "x.log").write_text("a log\n")

    def settle(top: Path) -> None:
        """What just changed taken out of the racy window, as after a pause (nothing else is
        touched: aging a file moves its ctime, which the checks see as a change)."""
        recent = time.time() - 600
        for p in [top, *top.rglob("*")]:
            if ".buildsys" not in p.parts and p.lstat().st_mtime > recent:
                age(p)

    settle(root)
    env = {"FLAVOUR": "plain"}
    assert set(decisions_with(root, env).values()) == {"ran"}
    changes: list[tuple[str, Callable[[Path], None], dict[str, str], set[str]]] = [
        ("an environment variable a renders", lambda p: None, {"FLAVOUR": "spicy"}, {"a", "b"}),
        ("an input file of c", lambda p: (p / "src" / "c" / "x.txt").write_text("c changed\n"), {}, {"c", "d"}),
        ("a file added to b's folder", lambda p: (p / "src" / "b" / "z.txt").write_text("new\n"), {}, {"b"}),
        ("a file of d deleted", lambda p: (p / "src" / "d" / "y.txt").unlink(), {}, {"d"}),
        ("an ignore file created", lambda p: (p / ".gitignore").write_text("*.log\n"), {}, {"a", "b"}),
        ("an ignore file edited", lambda p: (p / ".gitignore").write_text("y.txt\n"), {}, {"a", "b", "c", "d"}),
        ("the other ignore file", lambda p: (p / ".buildsysignore").write_text("z.txt\n"), {}, {"b"}),
        ("the step's code", lambda p: (p / "mysteps.py").write_text(STEPS.replace("word}", "word, 'v': '2'}")), {},
         {"a", "b", "c", "d", "e"}),
        ("a templated value in the project file", lambda p: (p / "prefect.yaml").write_text(
            REACH.replace("word: c\n", "word: see\n")), {}, {"c", "d", "e"}),
        ("nothing but an mtime", lambda p: os.utime(p / "src" / "a" / "x.txt"), {}, set()),
    ]
    for what, change, extra, expected in changes:
        env = {**env, **extra}
        twin = isolated / "twin"
        shutil.rmtree(twin, ignore_errors=True)
        shutil.copytree(root, twin, symlinks=True)
        shutil.rmtree(twin / ".buildsys" / "noop")  # the twin decides every step from its key
        for p in (root, twin):
            change(p)
            settle(p)
        narrowed, full = decisions_with(root, env), decisions_with(twin, env)
        assert narrowed == full, what
        assert {s for s, d in narrowed.items() if d == "ran"} == expected, what


def decisions_with(root: Path, env: dict[str, str]) -> dict[str, str]:
    """step -> "ran" or the reason it was cached, from `build --json` with these variables."""
    r = subprocess.run([sys.executable, "-m", "buildsys", "build", "--json"], cwd=root, capture_output=True,
                       text=True, env={**os.environ, **env}, timeout=120)
    assert r.returncode == 0, r.stderr
    out = {}
    for event in map(json.loads, r.stdout.splitlines()):
        if event["event"] in ("done", "cached"):
            out[event["step"]] = "ran" if event["event"] == "done" else event["reason"]
    return out


def test_what_lasts_the_build_is_out_of_the_young_generation_after_previous_build(isolated: Path) -> None:
    """The compiled build (unpickled with the collector paused) and the manifest live until the
    build ends: after previous_build they are out of the young generation (collector.gc_paused),
    so the first young collection does not walk them all (20-30 ms of a loaded 1,000-step
    rebuild, nothing found)."""
    import gc

    folder = isolated / "src"
    folder.mkdir()
    f = folder / "x.txt"
    f.write_text("x\n")
    age(f)
    age(folder)
    cache = isolated / "cache.db"
    cache.write_text("")
    path = str(isolated / ".buildsys" / "noop" / "m")
    assert noop.write_manifest(path, files=[str(f)], directories=[str(folder)], env={}, labels=["a"],
                               cache=str(cache), nodes=[("a", "k1", [str(f)], [str(folder)])])
    f.write_text("changed\n")
    age(f)
    from buildsys.launcher import YOUNG_OBJECTS

    threshold = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, *threshold[1:])  # as a command runs (buildsys.launcher)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    lasting = [(i, [i]) for i in range(12_000)]  # as a compiled build arrives: young objects, no cycles
    if enabled:
        gc.enable()
    try:
        prev = noop.previous_build(path)
        assert prev is not None and prev.changed == {"a"}
        young = {id(o) for o in gc.get_objects(generation=0)}
        assert not any(id(o) in young for o in (lasting, lasting[0], lasting[-1][1]))
        assert len(young) < 5_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
