"""Input files listed and hashed ahead, in a forked helper, while the build decides and runs steps.

When a build computes many keys (a cold build, or after a change to what every key includes), most
of each key's work is expanding the step's `inputs` globs and reading the files they match: work
that needs nothing the build computes. A forked helper process does it on the machine's other core,
in the order the build will most likely decide the steps (`Prefetch.start`), and streams each
step's answer through a pipe: when the engine decides a step the helper has answered for, it takes
the answer instead of doing the work itself, and otherwise does it as always (never waiting).
(Python threads would queue on the interpreter lock.) The steps ready when the build starts are
decided at once, before any answer can arrive, so the helper begins after them; when the build
overtakes it anyway (a loaded machine, steps with few inputs), it leaves that stretch to the build
and answers further ahead, and it comes back at the end for what is still undecided.

An answer is used only when nothing it rests on moved in between (an earlier step may write a later
step's inputs): every directory listed and every file hashed still has the stat data the helper saw
first, and none was modified within RACY_NS of the helper looking at it (the build cache's "racily
clean" rule, so a same-tick change cannot hide). Anything else, or anything unusual (a missing or
non-regular file, a glob with wildcards in its directories), is left to the engine, which then does
exactly what it does without a helper. The answer is the same either way; only who did the work
differs.
"""

from __future__ import annotations

import marshal
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from stat import S_ISREG
from typing import Any

from buildsys.cache import RACY_NS, Cache, FileSet, file_digests, is_absolute
from buildsys.noop import cpus, fork_helper

MIN_STEPS = 32  # fewer steps to look ahead for: a fork costs more than it saves
_HEAD = struct.Struct("<I")
PIPE_READ = 1 << 16
Row = tuple[str, tuple[int, int, int, int, str, int]]


class Prefetched:
    """One step's expansion of its `inputs` and the digests of the files, checked still true."""

    __slots__ = ("digests", "files", "fulls", "hashed", "listed", "seen")

    def __init__(self, files: list[str], fulls: list[str], listed: list[str], digests: dict[str, str],
                 hashed: list[Row], seen: dict[str, tuple[int, int, int, int]]) -> None:
        self.files = files  # root-relative paths, as FileSet.expand gives them (sorted, each once)
        self.fulls = fulls  # the same paths, absolute
        self.listed = listed  # the directories whose listing the expansion depended on
        self.digests = digests  # path -> digest, in `files` order
        self.hashed = hashed  # rows of the files the helper read (the cache records them)
        self.seen = seen  # absolute path -> (size, mtime_ns, ctime_ns, inode), as checked now


class Prefetch:
    """The helper's side is `_serve`; the engine calls `take(node key)` and finally `close()`."""

    patient = False  # (tests) wait for the helper's answer instead of doing the work meanwhile

    def __init__(self, pid: int, pipe: int, observed: dict[str, tuple[int, int, int, int]],
                 index: dict[str, int], progress: mmap.mmap) -> None:
        self._pid = pid
        self._index = index  # node key -> its place in the helper's list
        self._progress = progress  # shared with the helper: a byte per place, 1 once the engine does it
        self._pipe = pipe  # non-blocking: the engine reads what has arrived, never waits
        self._buffer = b""
        self._answers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._done = False
        self._observed = observed
        self.used = 0  # answers taken (tests)

    @classmethod
    def start(cls, cache: Cache, files: FileSet, root: Path, steps: Sequence[tuple[str, Sequence[str]]],
              ready: int = 0) -> Prefetch | None:
        """Fork the helper for `steps` (node key, its input globs relative to `root`), in the order
        the build will most likely want them, the first `ready` of them those it decides at once
        when it starts; None when it would not pay or cannot be started."""
        todo = [(key, list(globs)) for key, globs in steps if globs]
        if len(todo) < MIN_STEPS or not hasattr(os, "fork") or os.sep != "/" or cpus() < 2:
            return None
        first = sum(1 for key, globs in steps[:ready] if globs)  # the same place among `todo`
        stats = cache.file_rows()  # loaded before the fork: the helper never touches the database
        try:
            progress = mmap.mmap(-1, len(todo))  # shared with the forked helper (zeros)
        except OSError:
            return None
        # the helper: no threads, no database, no atexit, no buffered output
        forked = fork_helper(lambda out: _serve(out, files, root, todo, stats, progress, first))
        if forked is None:
            return None
        pid, pipe = forked
        os.set_blocking(pipe, False)
        return cls(pid, pipe, cache.observed, {key: i for i, (key, _) in enumerate(todo)}, progress)

    def take(self, key: str) -> Prefetched | None:
        """The helper's answer for node `key` when it has arrived and still holds, else None
        (the engine does the work)."""
        with self._lock:
            self._read_arrived()
            while self.patient and key in self._index and key not in self._answers and not self._done:
                import select

                select.select([self._pipe], [], [])
                self._read_arrived()
            answer = self._answers.pop(key, None)
            place = self._index.get(key)
            if answer is None and place is not None:  # the engine does this one: the helper skips it
                self._progress[place] = 1
        if answer is None:
            return None
        found = _still_true(answer)
        if found is not None:
            self.used += 1
        return found

    def _read_arrived(self) -> None:
        """Every answer the pipe holds now (a partial one stays buffered)."""
        while not self._done:
            try:
                # a pipe holds 64 KiB: asking for more only makes os.read allocate (and free) a
                # larger buffer at every call, ~15 µs each for 1 MiB, most calls finding nothing
                chunk = os.read(self._pipe, PIPE_READ)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._done = True
                break
            self._buffer += chunk
        data, at = self._buffer, 0
        while len(data) - at >= _HEAD.size:
            end = at + _HEAD.size + _HEAD.unpack_from(data, at)[0]
            if end > len(data):
                break
            try:
                key, answer = marshal.loads(data[at + _HEAD.size : end])
            except (EOFError, ValueError, TypeError):
                self._done = True
                break
            self._answers[key] = answer
            at = end
        self._buffer = data[at:]

    def apply(self, found: Prefetched, cache: Cache) -> None:
        """Record what the engine takes from an answer, as its own work would have."""
        self._observed.update(found.seen)
        cache.add_hashed(found.hashed)

    def close(self) -> None:
        """Stop the helper (done or not) and wait for it."""
        with self._lock:
            self._done = True
            try:  # noqa: SIM105 - the helper may have finished already
                os.kill(self._pid, 9)
            except OSError:
                pass
            os.close(self._pipe)
            try:  # noqa: SIM105
                os.waitpid(self._pid, 0)
            except ChildProcessError:
                pass


def _places(progress: mmap.mmap, count: int, first: int) -> Iterator[int]:
    """The places the helper answers, in order: from `first` (the build decides the places before
    it as it starts) forwards. Where the build has already decided a stretch itself, it is ahead:
    the helper leaves as many places again to it and answers beyond them, coming back to those
    (farthest first), then to the first places, at the end. A place the build did is skipped."""
    left: list[int] = []
    place = first
    while place < count:
        if progress[place]:
            ahead = place
            while ahead < count and progress[ahead]:
                ahead += 1
            gap = min(ahead - place, count - ahead)
            left.extend(range(ahead, ahead + gap))
            place = ahead + gap
            continue
        yield place
        place += 1
    for place in (*reversed(left), *range(first - 1, -1, -1)):
        if not progress[place]:
            yield place


def _serve(pipe: int, files: FileSet, root: Path, steps: Sequence[tuple[str, list[str]]],
           stats: Mapping[str, tuple[int, int, int, int, str, int]], progress: mmap.mmap, first: int = 0) -> None:
    """The helper: for each step (`_places`), its expansion and digests (or None: leave it to
    the engine)."""
    prefix = os.path.join(str(root), "")
    out = os.fdopen(pipe, "wb")
    stat = os.stat
    for place in _places(progress, len(steps), first):
        key, globs = steps[place]
        now = time.time_ns()
        limit = now - RACY_NS
        answer: Any = None
        files.opaque = False
        listed: list[str] = []
        try:
            found = files.expand(globs, root, listed)
            dirs = [stat(d).st_mtime_ns for d in listed]
        except OSError:
            found, dirs = [], [limit]
        if not files.opaque and all(m < limit for m in dirs):
            fulls = [p if is_absolute(p) else prefix + p for p in found]
            seen: dict[str, tuple[int, int, int, int]] = {}
            digests, hashed = file_digests(found, fulls, stats, seen)
            if len(seen) == len(found) and all(d is not None for d in digests.values()):
                # Compact (each path once): the stat data flat in `found`'s order, and which of
                # the files were read (their rows are the stat data, the digest and when).
                flat = [n for full in fulls for n in seen[full]]
                at = {path: i for i, path in enumerate(found)}
                read = [at[path] for path, _ in hashed]
                when = hashed[0][1][5] if hashed else 0
                answer = (found, listed, dirs, flat, list(digests.values()), read, when, limit, prefix)
        body = marshal.dumps((key, answer))
        out.write(_HEAD.pack(len(body)) + body)
        out.flush()


def _still_true(answer: Any) -> Prefetched | None:
    """The answer when every directory and file it rests on is as the helper saw it, and none was
    modified within RACY_NS before it looked; else None."""
    found, listed, dirs, flat, digests, read, when, limit, prefix = answer
    if flat and max(flat[1::4]) >= limit:  # a file modified too recently to trust its stat data
        return None
    fulls = [p if p.startswith("/") else prefix + p for p in found]  # (the helper runs on POSIX only)
    numbers = iter(flat)
    rows: list[tuple[int, int, int, int]] = list(zip(numbers, numbers, numbers, numbers, strict=True))
    stat = os.stat
    try:
        # (stat through map and comprehensions: no Python frame per file; this runs for every
        # input file of every step the helper answers for)
        if [stat(d).st_mtime_ns for d in listed] != dirs:
            return None
        now = list(map(stat, fulls))
    except OSError:
        return None
    if [(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for st in now] != rows \
            or not all([S_ISREG(st.st_mode) for st in now]):
        return None
    hashed = [(found[i], (*rows[i], digests[i], when)) for i in read]
    return Prefetched(found, fulls, listed, dict(zip(found, digests, strict=True)), hashed,
                      dict(zip(fulls, rows, strict=True)))
