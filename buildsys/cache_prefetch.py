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

Who checks that an answer still holds: the helper when it can, else the build. A step's thread
tells the helper (a second pipe) when the step has finished, its writes done; once every step an
answered step waits for has finished, the helper stats what the answer rests on again and says
whether it still holds. The build decides a step only after those same steps have finished, so a
check made then sees everything the build's own check would order before it (a write by a step it
does not wait for is a race either way; what the manifest records is the stat data checked, so a
later write is seen by the next build). An answer with that word is taken without a stat; without
it (not arrived yet, a step finished in the build's own thread), the build checks it as before.
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

from buildsys.cache import RACY_NS, Cache, FileSet, file_digests
from buildsys.noop import cpus, fork_helper

MIN_STEPS = 32  # fewer steps to look ahead for: a fork costs more than it saves
LEAD = 16  # answers the helper keeps ahead of the build before it spends time on checks
_HEAD = struct.Struct("<I")
PIPE_READ = 1 << 16
Row = tuple[str, tuple[int, int, int, int, str, int]]


CHECKED, CHANGED = True, False  # the helper's word on an answer, once the steps before it are done


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
                 index: dict[str, int], progress: mmap.mmap, finished: int = -1,
                 numbers: dict[str, int] | None = None, waits: dict[str, Sequence[str]] | None = None) -> None:
        self._pid = pid
        self._index = index  # node key -> its place in the helper's list
        self._progress = progress  # shared with the helper: a byte per place, 1 once the engine does it
        self._pipe = pipe  # non-blocking: the engine reads what has arrived, never waits
        self._finished = finished  # to the helper: the number of each step finished (non-blocking)
        self._numbers = numbers or {}  # node key -> its number there
        self._waits = waits or {}  # node key -> the keys of the steps it waits for
        self._said: set[str] = set()  # the keys told finished
        self._finishing = threading.Lock()  # (the pipe is closed under it: never written once closed)
        self._buffer = b""
        self._answers: dict[str, Any] = {}
        self._checked: dict[str, bool] = {}  # the helper's word on answers, by node key
        self._lock = threading.Lock()
        self._done = False
        self._observed = observed
        self.used = 0  # answers taken (tests)
        self.checked = 0  # of them, taken on the helper's word, without a stat here (tests)

    @classmethod
    def start(cls, cache: Cache, files: FileSet, root: Path,
              steps: Sequence[tuple[str, Sequence[str], Sequence[str]]], ready: int = 0) -> Prefetch | None:
        """Fork the helper for `steps` (node key, its input globs relative to `root`, the keys of
        the steps it waits for), in the order the build will most likely want them, the first
        `ready` of them those it decides at once when it starts; None when it would not pay or
        cannot be started."""
        todo = [(key, list(globs)) for key, globs, _ in steps if globs]
        if len(todo) < MIN_STEPS or not hasattr(os, "fork") or os.sep != "/" or cpus() < 2:
            return None
        first = sum(1 for _, globs, _ in steps[:ready] if globs)  # the same place among `todo`
        numbers = {key: i for i, (key, _, _) in enumerate(steps)}
        # (a step not among them is never heard of: the answers waiting for it are checked by the build)
        waits = [[numbers.get(d, len(steps)) for d in deps] for _, globs, deps in steps if globs]
        stats = cache.file_rows()  # loaded before the fork: the helper never touches the database
        try:
            progress = mmap.mmap(-1, len(todo))  # shared with the forked helper (zeros)
            hear, finished = os.pipe()
        except OSError:
            return None

        def serve(out: int) -> None:
            os.close(finished)
            _serve(out, files, root, todo, stats, progress, first, hear, waits)

        # the helper: no threads, no database, no atexit, no buffered output
        forked = fork_helper(serve)
        os.close(hear)
        if forked is None:
            os.close(finished)
            return None
        pid, pipe = forked
        os.set_blocking(pipe, False)
        os.set_blocking(finished, False)  # a full pipe (a helper that stopped reading) never blocks a step
        return cls(pid, pipe, cache.observed, {key: i for i, (key, _) in enumerate(todo)}, progress, finished, numbers,
                   {key: deps for key, globs, deps in steps if globs})

    def finished(self, key: str) -> None:
        """Node `key` has finished (called in its step's thread once its writes are done, before
        the build hears of it): the helper may check the answers of the steps waiting for it."""
        number = self._numbers.get(key)
        if number is None:
            return
        with self._finishing:
            if self._finished < 0:
                return
            try:
                os.write(self._finished, _HEAD.pack(number))
            except OSError:  # a full pipe or a helper gone: its answers are checked here instead
                return
            self._said.add(key)

    def take(self, key: str) -> Prefetched | None:
        """The helper's answer for node `key` when it has arrived and still holds, else None
        (the engine does the work)."""
        with self._lock:
            self._read_arrived()
            while self.patient and not self._done and key in self._index and (key not in self._answers or (
                    self._answers[key] is not None and key not in self._checked  # its word is due:
                    and all(d in self._said for d in self._waits.get(key, ())))):  # (all before it told)
                import select

                select.select([self._pipe], [], [])
                self._read_arrived()
            answer = self._answers.pop(key, None)
            checked = self._checked.pop(key, CHANGED)
            place = self._index.get(key)
            if place is not None:  # decided now: the helper neither answers nor checks it any more
                self._progress[place] = 1
        if answer is None:
            return None
        found = _still_true(answer, checked)
        if found is not None:
            self.used += 1
            self.checked += checked
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
            if isinstance(answer, bool):  # its word on an answer sent before
                self._checked[key] = answer
            else:
                self._answers[key] = answer
            at = end
        self._buffer = data[at:]

    def apply(self, found: Prefetched, cache: Cache) -> None:
        """Record what the engine takes from an answer, as its own work would have."""
        self._observed.update(found.seen)
        cache.add_hashed(found.hashed)

    def close(self) -> None:
        """Stop the helper (done or not) and wait for it."""
        with self._finishing:
            if self._finished >= 0:
                os.close(self._finished)
                self._finished = -1
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
           stats: Mapping[str, tuple[int, int, int, int, str, int]], progress: mmap.mmap, first: int = 0,
           finished: int = -1, waits: Sequence[Sequence[int]] = ()) -> None:
    """The helper: for each step (`_places`), its expansion and digests (or None: leave it to
    the engine); with `finished` (the numbers of the steps finished, as the build's threads
    write them; `waits`: each step's, of the steps it waits for), its word on each answer too
    (`_Checks`)."""
    prefix = os.path.join(str(root), "")
    out = os.fdopen(pipe, "wb")
    checks = _Checks(out, steps, progress, finished, waits) if finished >= 0 else None
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
            fulls = [p if p.startswith("/") else prefix + p for p in found]  # (POSIX only)
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
        if checks is not None:
            checks.answered(place, None if answer is None else (fulls, listed, dirs, flat))
            checks.hear(block=False)
            checks.check_due()
    if checks is not None:
        checks.lead = 0
        checks.check_due()
        while checks.held and checks.hear(block=True):
            checks.check_due()


class _Checks:
    """The helper's second job: its word on each answer it sent (CHECKED: every directory and file
    the answer rests on still has the stat data it had, looked at once every step it waits for has
    finished; CHANGED otherwise), as soon as those steps have finished."""

    def __init__(self, out: Any, steps: Sequence[tuple[str, list[str]]], progress: mmap.mmap, finished: int,
                 waits: Sequence[Sequence[int]]) -> None:
        self.out = out
        self.steps = steps
        self.progress = progress
        self.finished = finished
        self.waiting = [len(set(w)) for w in waits]  # per place: the steps it still waits for
        self.after: dict[int, list[int]] = {}  # a step's number -> the places waiting for it
        for place, numbers in enumerate(waits):
            for number in set(numbers):
                self.after.setdefault(number, []).append(place)
        self.heard: set[int] = set()  # (a number heard twice must not count twice)
        self.held: dict[int, tuple[list[str], list[str], list[int], list[int]]] = {}  # answered, not yet checked
        self.buffer = b""
        self.blocking = True
        self.places: list[int] = []  # the places answered, in order
        self.due: list[int] = []  # answered, and every step before them finished: to check
        self.lead = LEAD

    def answered(self, place: int, held: tuple[list[str], list[str], list[int], list[int]] | None) -> None:
        self.places.append(place)
        if held is not None:
            self.held[place] = held
            if not self.waiting[place]:
                self.due.append(place)

    def check_due(self) -> None:
        """Check the answers whose steps before them have all finished, while the helper is ahead
        of the build (the place it answered `lead` answers ago still undecided): an answer
        the build overtakes costs it the whole listing and hashing, a check only the stats."""
        places, lead = self.places, self.lead
        if not self.due or (lead and (len(places) <= lead or self.progress[places[-lead]])):
            return
        for due in self.due:
            self.check(due)
        self.due.clear()

    def hear(self, *, block: bool) -> bool:
        """Take the numbers of the steps finished since (waiting for one when `block`) and check
        the answers that waited for them; False once the build has closed the pipe."""
        if block != self.blocking:
            os.set_blocking(self.finished, block)
            self.blocking = block
        try:
            chunk = os.read(self.finished, PIPE_READ)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        if not chunk:
            return False
        data = self.buffer + chunk
        whole = len(data) - len(data) % _HEAD.size
        self.buffer = data[whole:]
        for (number,) in _HEAD.iter_unpack(data[:whole]):
            if number in self.heard:
                continue
            self.heard.add(number)
            for place in self.after.get(number, ()):
                self.waiting[place] -= 1
                if not self.waiting[place] and place in self.held:
                    self.due.append(place)
        return True

    def check(self, place: int) -> None:
        held = self.held.pop(place, None)
        if held is None or self.progress[place]:  # (the build has decided it already)
            return
        fulls, listed, dirs, flat = held
        stat = os.stat
        try:
            holds = [stat(d).st_mtime_ns for d in listed] == dirs
            now = list(map(stat, fulls)) if holds else []
        except OSError:
            holds, now = False, []
        holds = holds and [n for st in now for n in (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)] == flat \
            and all([S_ISREG(st.st_mode) for st in now])
        body = marshal.dumps((self.steps[place][0], CHECKED if holds else CHANGED))
        self.out.write(_HEAD.pack(len(body)) + body)
        self.out.flush()


def _still_true(answer: Any, checked: bool = False) -> Prefetched | None:
    """The answer when every directory and file it rests on is as the helper saw it (`checked`:
    the helper found them so once the steps before it had finished), and none was modified within
    RACY_NS before it looked; else None."""
    found, listed, dirs, flat, _, _, _, limit, prefix = answer
    if flat and max(flat[1::4]) >= limit:  # a file modified too recently to trust its stat data
        return None
    fulls = [p if p.startswith("/") else prefix + p for p in found]  # (the helper runs on POSIX only)
    numbers = iter(flat)
    rows: list[tuple[int, int, int, int]] = list(zip(numbers, numbers, numbers, numbers, strict=True))
    if checked:
        return _taken(answer, fulls, rows)
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
    return _taken(answer, fulls, rows)


def _taken(answer: Any, fulls: list[str], rows: list[tuple[int, int, int, int]]) -> Prefetched:
    found, listed, _, _, digests, read, when, _, _ = answer
    hashed = [(found[i], (*rows[i], digests[i], when)) for i in read]
    return Prefetched(found, fulls, listed, dict(zip(found, digests, strict=True)), hashed,
                      dict(zip(fulls, rows, strict=True)))
