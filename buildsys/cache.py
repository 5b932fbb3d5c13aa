"""The build cache in `.buildsys/cache.db`: step results by content key, file digests by stat data.

A file is hashed only when its (size, mtime_ns, ctime_ns, inode) changed since it was last seen, or
when it was modified so recently that a same-tick change could hide (git's "racily clean" rule).
Every node remembers the components of its last key so a rerun can say exactly why.
SQLite (WAL) makes concurrent builds in one project safe.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from stat import S_ISREG
from typing import Any

import xxhash

from buildsys import noop
from buildsys.errors import BuildsysError
from buildsys.records import Record

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER,
    digest TEXT, recorded_ns INTEGER);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY, step TEXT, outputs TEXT, created REAL);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY, label TEXT, key TEXT, components TEXT, updated REAL, duration REAL);
"""
RACY_NS = 2_000_000_000  # files modified within 2 s of being recorded are re-read next time
FLUSH_EVERY = 1.0  # seconds: recorded results wait at most this long for their transaction
MAX_VARIABLES = 999  # parameters in one statement: SQLite's lowest limit (before 3.32; 32,766 since)
IGNORE_FILES = (".buildsysignore", ".gitignore")
ALWAYS_IGNORED = (".git", ".buildsys", "__pycache__", ".venv")


def is_absolute(path: str) -> bool:
    """os.path.isabs for the per-file loops: on POSIX a plain prefix test (isabs costs ~1 µs)."""
    return path.startswith("/") if os.sep == "/" else os.path.isabs(path)


class Entry(Record):
    """One step's cached result as its row holds it (a Record: no dataclass generated at import)."""

    __slots__ = __match_args__ = ("node", "label", "key", "components", "updated", "duration")
    node: str
    label: str
    key: str
    components: Mapping[str, Any]
    updated: float
    duration: float

    def __init__(self, node: str, label: str, key: str, components: Mapping[str, Any], updated: float,
                 duration: float) -> None:
        _set = object.__setattr__
        _set(self, "node", node)
        _set(self, "label", label)
        _set(self, "key", key)
        _set(self, "components", components)
        _set(self, "updated", updated)
        _set(self, "duration", duration)


class Cache:
    """One project's cache. Thread-safe; file-digest updates are flushed in one transaction."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / noop.DIRECTORY
        self.path = self.dir / noop.STEP_RESULTS
        self._lock = threading.Lock()  # the buffers below
        # The connection (shared by the build's threads): a transaction holds only this lock, so
        # steps keep recording and digesting into the buffers while a flush writes.
        self._db_lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time, written in the order swapped
        self._opening = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._stats: dict[str, tuple[int, int, int, int, str, int]] | None = None
        self._pending: dict[str, tuple[int, int, int, int, str, int]] = {}
        self._touched: list[tuple[str, str, str, str, float, float]] = []
        # Results and node rows recorded since the last flush: a build's records are written
        # together (one transaction, not one per step), at most FLUSH_EVERY seconds late.
        self._results: dict[str, tuple[str, str, str, float]] = {}
        self._nodes: list[tuple[str, str, str, str, float, float]] = []
        # what a flush in progress is writing (pending, touched, results, nodes): still seen by lookups
        self._writing: tuple[dict[str, Any], list[Any], dict[str, Any], list[Any]] = ({}, [], {}, [])
        self._flushed = time.monotonic()
        self._entries: dict[str, Sequence[Any]] | None = None
        self._keys: set[str] | None = None  # keys of the stored results (`_stored_keys`)
        self.reads = 0  # files actually read and hashed (tests count these)
        self.sparse = False  # read file rows per step (few steps decided), not all at once
        # (size, mtime_ns, ctime_ns, inode) of every file digested, by absolute path: the no-op
        # manifest records these instead of asking the file system again
        self.observed: dict[str, tuple[int, int, int, int]] = {}

    # --- connection ---------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            with self._opening:  # steps decided in several threads at once open it once, not racing
                if self._db is None:
                    self._db = self._open()
        return self._db

    def _open(self) -> sqlite3.Connection:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise BuildsysError(
                f"the build cache {self.path} is unreadable: {exc}",
                hint="run `buildsys cache clear` (it only deletes cached results)",
            ) from None
        return db

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- file digests -------------------------------------------------------------------------
    def _load_stats(self) -> dict[str, tuple[int, int, int, int, str, int]]:
        if self._stats is None:
            db = self.db
            with self._db_lock:
                if self._stats is None:
                    rows = db.execute("SELECT path, size, mtime_ns, ctime_ns, inode, digest, recorded_ns FROM files")
                    self._stats = {r[0]: (r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows}
        return self._stats

    def file_rows(self) -> dict[str, tuple[int, int, int, int, str, int]]:
        """Every recorded file row (path -> size, mtime_ns, ctime_ns, inode, digest, recorded_ns)."""
        return dict(self._load_stats())

    def digest(self, path: str) -> str | None:
        """Digest of a file relative to the root (None when it does not exist)."""
        return self.digests([path])[path]

    def _stats_for(self, paths: Sequence[str]) -> dict[str, tuple[int, int, int, int, str, int]]:
        """The recorded rows of `paths`: every row at once (one query) unless `sparse`, when a
        build decides few steps and reads only their rows."""
        if not self.sparse or self._stats is not None:
            return self._load_stats()
        db = self.db
        with self._lock:  # hashed and not yet written (read first: a flush may end meanwhile)
            unwritten = {p: row for buffer in (self._writing[0], self._pending) for p in paths if (row := buffer.get(p))}
        rows: dict[str, tuple[int, int, int, int, str, int]] = {}
        with self._db_lock:
            for at in range(0, len(paths), 500):
                chunk = list(paths[at : at + 500])
                query = f"SELECT path, size, mtime_ns, ctime_ns, inode, digest, recorded_ns FROM files WHERE path IN ({','.join('?' * len(chunk))})"
                rows.update((r[0], (r[1], r[2], r[3], r[4], r[5], r[6])) for r in db.execute(query, chunk))
        rows.update(unwritten)
        return rows

    def digests(self, paths: Sequence[str]) -> dict[str, str | None]:
        """Digests of files relative to the root (None for a missing one). A file whose stat data
        matches what was recorded when it was last hashed is not read again."""
        stats = self._stats_for(paths)
        prefix = os.path.join(str(self.root), "")
        if os.sep == "/":
            fulls = [p if p.startswith("/") else prefix + p for p in paths]
        else:
            fulls = [p if is_absolute(p) else prefix + p for p in paths]
        out, hashed = file_digests(paths, fulls, stats, self.observed)
        self.add_hashed(hashed, stats)
        return out

    def add_hashed(self, hashed: Sequence[tuple[str, tuple[int, int, int, int, str, int]]],
                   stats: dict[str, tuple[int, int, int, int, str, int]] | None = None) -> None:
        """Rows of files just hashed (`file_digests`): kept for this build's lookups and written
        at the next flush."""
        if not hashed:
            return
        with self._lock:
            if stats is None:
                stats = self._stats if self._stats is not None else {}
            self.reads += len(hashed)
            stats.update(hashed)
            self._pending.update(hashed)

    def flush(self) -> None:
        """Write buffered file digests, results and node history in one transaction. Lookups see
        the records being written until they are (`_writing`); recording goes on meanwhile."""
        with self._flushing:
            with self._lock:
                pending, self._pending = self._pending, {}
                touched, self._touched = self._touched, []
                results, self._results = self._results, {}
                nodes, self._nodes = self._nodes, []
                self._writing = (pending, touched, results, nodes)
                self._flushed = time.monotonic()
            try:
                if pending or touched or results or nodes:
                    # in key order: SQLite inserts into its B-trees in order (~30% less work
                    # for a cold build's 20,000 file rows than in the order they were hashed)
                    files = sorted([(p, *row) for p, row in pending.items()])
                    stored = sorted(results.values())
                    with self._transaction() as db:
                        _insert(db, "files", files)
                        _insert(db, "results", stored)
                        # in the order they happened: a node's later record replaces its earlier one
                        _insert(db, "nodes", [*nodes, *touched])
            finally:
                with self._lock:
                    self._writing = ({}, [], {}, [])

    def _transaction(self) -> _Txn:
        return _Txn(self.db, self._db_lock)

    # --- results and node history -------------------------------------------------------------
    def result(self, key: str) -> dict[str, Any] | None:
        db = self.db
        with self._lock:
            recorded = self._results.get(key) or self._writing[2].get(key)
        if recorded:
            row = (recorded[2],)
        elif not self.sparse and key not in self._stored_keys():
            row = None  # few steps decided (`sparse`): each lookup asks the database instead
        else:
            with self._db_lock:
                row = db.execute("SELECT outputs FROM results WHERE key = ?", (key,)).fetchone()
        outputs: dict[str, Any] | None = json.loads(row[0]) if row else None
        return outputs

    def _stored_keys(self) -> set[str]:
        """The key of every stored result, read once (one query), and of every result recorded
        since, so that a build deciding every step (most of them misses in a cold build) asks the
        database only for a key it holds. A result another build stores meanwhile is not seen, as
        if this build had looked just before: the step runs here as well."""
        keys = self._keys
        if keys is None:
            db = self.db
            with self._db_lock:
                keys = self._keys
                if keys is None:
                    keys = {r[0] for r in db.execute("SELECT key FROM results")}
                    with self._lock:  # recorded meanwhile, not yet written: `record` adds from now on
                        keys.update(self._results, self._writing[2])
                        self._keys = keys
        return keys

    def results(self, keys: Iterable[str]) -> dict[str, str]:
        """The outputs (JSON text, as `result` reads it) stored under each of `keys` that has a
        result: one query per 500 keys instead of one per key."""
        wanted = sorted(set(keys))
        out: dict[str, str] = {}
        db = self.db
        with self._lock:  # recorded and not yet written (read first: a flush may end meanwhile)
            unwritten = {k: row[2] for buffer in (self._writing[2], self._results) for k in wanted if (row := buffer.get(k))}
        with self._db_lock:
            for at in range(0, len(wanted), 500):
                chunk = wanted[at : at + 500]
                query = f"SELECT key, outputs FROM results WHERE key IN ({','.join('?' * len(chunk))})"
                out.update(db.execute(query, chunk).fetchall())
        out.update(unwritten)
        return out

    def entry(self, node: str) -> Entry | None:
        """The node's last recorded key and components (all nodes are read in one query, or with
        `sparse`, when a build decides few steps, only the node asked for)."""
        if self.sparse and self._entries is None:
            db = self.db
            with self._lock:  # what this build recorded and not yet written first (flush's order)
                _, touched, _, nodes = self._writing
                unwritten = [*nodes, *touched, *self._nodes, *self._touched]
                found = next((r for r in reversed(unwritten) if r[0] == node), None)
            if found is None:
                with self._db_lock:
                    found = db.execute(
                        "SELECT node, label, key, components, updated, duration FROM nodes WHERE node = ?", (node,)
                    ).fetchone()
            return _entry(found) if found else None
        if self._entries is None:
            self.flush()  # the snapshot includes what this build recorded so far
            db = self.db
            with self._db_lock:
                rows = db.execute("SELECT node, label, key, components, updated, duration FROM nodes").fetchall()
                self._entries = {r[0]: r for r in rows}
        row = self._entries.get(node)
        return _entry(row) if row else None

    def entries(self) -> list[Entry]:
        self.flush()
        db = self.db
        with self._db_lock:
            rows = db.execute(
                "SELECT node, label, key, components, updated, duration FROM nodes ORDER BY label"
            ).fetchall()
        return [_entry(r) for r in rows]

    def record(
        self,
        node: str,
        label: str,
        key: str,
        components: Mapping[str, Any],
        outputs: Mapping[str, Any] | None,
        duration: float,
        step: str,
        encoded: str | None = None,
        *,
        outputs_text: str | None = None,
    ) -> None:
        """Store a step's result and its node's key (buffered: `flush`, at the latest FLUSH_EVERY
        seconds later or when the build closes the cache; `result` sees it at once)."""
        now = time.time()
        # `encoded`: the components' JSON text when the caller has it (`key_and_text`);
        # `outputs_text`: the outputs' (json.dumps(outputs, default=str)), likewise
        row = (node, label, key, encoded or json.dumps(components, default=str, sort_keys=True), now, duration)
        if outputs is None:
            stored = None
        else:
            stored = (key, step, outputs_text if outputs_text is not None else json.dumps(outputs, default=str), now)
        with self._lock:
            if stored is not None:
                self._results[key] = stored
                if self._keys is not None:
                    self._keys.add(key)
            self._nodes.append(row)
            due = time.monotonic() - self._flushed >= FLUSH_EVERY
        if due:
            self.flush()

    def touch(self, node: str, label: str, key: str, components: Mapping[str, Any], encoded: str | None = None) -> None:
        """Remember a cache hit's key (buffered; written by flush)."""
        row = (node, label, key, encoded or json.dumps(components, default=str, sort_keys=True), time.time(), 0.0)
        with self._lock:
            self._touched.append(row)

    def forget(self, key: str) -> None:
        self.flush()  # a result recorded before is forgotten too
        with self._transaction() as db:
            db.execute("DELETE FROM results WHERE key = ?", (key,))

    def gc(self, keep_keys: Iterable[str]) -> int:
        """Delete results no current node points at; returns how many were removed."""
        keep = set(keep_keys)
        self.flush()
        db = self.db
        with self._db_lock:
            keys = [r[0] for r in db.execute("SELECT key FROM results")]
        drop = [k for k in keys if k not in keep]
        with self._transaction() as db:
            db.executemany("DELETE FROM results WHERE key = ?", [(k,) for k in drop])
            db.execute("DELETE FROM nodes WHERE key NOT IN (SELECT key FROM results)")
            gone = [
                r[0] for r in db.execute("SELECT path FROM files") if not os.path.exists(os.path.join(self.root, r[0]))
            ]
            db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in gone])
        return len(drop)

    def clear(self) -> None:
        self.flush()
        with self._transaction() as db:
            db.execute("DELETE FROM results")
            db.execute("DELETE FROM nodes")
            db.execute("DELETE FROM files")
        self._stats = None
        self._keys = None


class _Txn:
    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self.db = db
        self.lock = lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()


def _insert(db: sqlite3.Connection, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """INSERT OR REPLACE `rows` into `table`, many rows a statement: `executemany` runs one statement
    per row, and each hands the interpreter lock over and back (a cold build's flush of 20,000 file
    rows: 20,000 hand-offs with the thread deciding steps, and ~45% more CPU). Rows go in in order,
    so a later row replaces an earlier one with the same key, as one statement each would."""
    if not rows:
        return
    width = len(rows[0])
    per = MAX_VARIABLES // width
    for at in range(0, len(rows), per):
        chunk = rows[at : at + per]
        values = ",".join(["(" + ",".join("?" * width) + ")"] * len(chunk))
        db.execute(f"INSERT OR REPLACE INTO {table} VALUES {values}", [v for row in chunk for v in row])


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])


def _not_a_file(mode: int) -> str:
    """The digest of an input that is not a regular file: what it is, never its contents."""
    from buildsys.sourcefiles import kind_of

    return "not a regular file: " + kind_of(mode)


def file_digests(
    paths: Sequence[str],
    fulls: Sequence[str],
    stats: Mapping[str, tuple[int, int, int, int, str, int]],
    observed: dict[str, tuple[int, int, int, int]],
) -> tuple[dict[str, str | None], list[tuple[str, tuple[int, int, int, int, str, int]]]]:
    """The digest of each of `paths` (`fulls`: the same, absolute), hashing only a file whose stat
    data differs from its row in `stats` or is racily recent there; the stat data of every regular
    file goes into `observed`. Returns the digests and the rows of the files hashed (to record).
    This loop runs for every input file of every step, so it is kept tight."""
    stat = os.stat
    out: dict[str, str | None] = {}
    hashed: list[tuple[str, tuple[int, int, int, int, str, int]]] = []
    # Taken before any file is read: a file's row says it was hashed no later than this,
    # which can only make the racy rule re-read it sooner, never trust it longer.
    now = time.time_ns()
    for path, full in zip(paths, fulls, strict=True):
        try:
            st = stat(full)
        except OSError:
            out[path] = None
            continue
        if not S_ISREG(st.st_mode):  # a FIFO or a link to /dev/zero is never read (it would hang)
            out[path] = _not_a_file(st.st_mode)
            continue
        size, mtime, ctime, inode = seen = st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
        observed[full] = seen
        known = stats.get(path)
        if (
            known is not None
            and known[0] == size
            and known[1] == mtime
            and known[2] == ctime
            and known[3] == inode
            and mtime < known[5] - RACY_NS
        ):
            out[path] = known[4]
            continue
        digest = _hash_file(full, size)
        hashed.append((path, (size, mtime, ctime, inode, digest, now)))
        out[path] = digest
    return out, hashed


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_CHUNK = 1 << 20


def _hash_file(path: str, size: int = -1) -> str:
    """xxh3-128 of the file's content. `size`, from a stat just before: a small file is read in
    one call and its short read at that size ends it (three system calls through `os`, not the
    ~six of `open()`), hashed in one call; read on to the end when the file is not that size any
    more."""
    fd = os.open(path, _READ_FLAGS)
    try:
        want = size + 1 if 0 <= size < _CHUNK else _CHUNK
        chunk = os.read(fd, want)
        if len(chunk) == size < want:  # the whole file (the common case: a small source file)
            return xxhash.xxh3_128_hexdigest(chunk)
        h = xxhash.xxh3_128(chunk)
        total = len(chunk)
        while chunk:
            chunk = os.read(fd, _CHUNK)
            h.update(chunk)
            total += len(chunk)
            if len(chunk) < _CHUNK and total == size:
                break
    finally:
        os.close(fd)
    return h.hexdigest()


def key_of(components: Mapping[str, Any]) -> str:
    return key_and_text(components)[0]


def key_and_text(components: Mapping[str, Any]) -> tuple[str, str]:
    """The cache key of a step's key components, and their JSON text (what the cache stores as
    the node's last components: encoded once for both)."""
    text = json.dumps(components, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32], text


def secret_digest(value: str) -> str:
    """A one-way digest for cache keys: the value itself is never stored."""
    return hashlib.sha256(b"buildsys-env\0" + value.encode()).hexdigest()[:16]


# --- input file expansion ---------------------------------------------------------------------------


class FileSet:
    """Expands a step's globs (relative to a base directory) into files, honouring ignore files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_prefix = os.path.normpath(str(root)) + os.sep
        self._spec: Any = None
        self.scanned: set[str] = set()  # directories whose listing the expansion depended on
        self.opaque = False  # a pattern with wildcards in its directories: listings not tracked
        self._spec_loaded = False

    def _ignore_spec(self) -> Any:
        if not self._spec_loaded:
            self._spec_loaded = True
            lines: list[str] = []
            for name in IGNORE_FILES:
                p = self.root / name
                if p.is_file():
                    lines.extend(p.read_text(errors="replace").splitlines())
            if lines:
                import pathspec

                self._spec = pathspec.GitIgnoreSpec.from_lines(lines)  # git's own matching rules
        return self._spec

    def expand(self, patterns: Iterable[str], base: Path, listed: list[str] | None = None) -> list[str]:
        """Root-relative paths of the files matched (directories expand to their files).
        `listed` receives the directories whose listing the result depends on."""
        found: set[str] = set()
        trail = [] if listed is None else listed
        for pattern in patterns:
            for rel in self._expand_one(pattern, base, trail):
                found.add(rel)
        return sorted(found)

    def _expand_one(self, pattern: str, base: Path, listed: list[str]) -> list[str]:
        absolute = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        if not globlib.has_magic(pattern):
            if os.path.isdir(absolute):
                return self._walk(Path(absolute), listed)
            return [self._rel_str(os.path.normpath(absolute))]  # a missing file counts: absence is in the key
        directory, name = os.path.split(absolute)
        if not globlib.has_magic(directory) and name != "**":
            return self._scan(directory, name, listed)
        self.opaque = True
        out: list[str] = []
        for m in globlib.glob(absolute, recursive=True):
            if os.path.isdir(m):
                out.extend(self._walk(Path(m), listed))
            elif not self._ignored(self._rel_str(m)):
                out.append(self._rel_str(m))
        return out

    def _scan(self, directory: str, name: str, listed: list[str]) -> list[str]:
        """The common `dir/*.py` case: one scandir, no stat per file (DirEntry knows its type)."""
        import fnmatch

        out: list[str] = []
        prefix = self._rel_str(os.path.normpath(directory))
        if any(part in ALWAYS_IGNORED for part in prefix.split(os.sep)):
            return out
        self.scanned.add(os.path.normpath(directory))
        listed.append(os.path.normpath(directory))
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return out
        prefix = "" if prefix == "." else prefix + os.sep
        hidden_ok = name.startswith(".")
        spec = self._ignore_spec()
        wanted = set(fnmatch.filter([e.name for e in entries], name))  # one call, not one per entry
        for entry in entries:
            n = entry.name
            if n not in wanted or (n.startswith(".") and not hidden_ok) or n in ALWAYS_IGNORED:
                continue
            if entry.is_dir():
                out.extend(self._walk(Path(entry.path), listed))
                continue
            rel = prefix + n
            if spec is None or not spec.match_file(rel):
                out.append(rel)
        return out

    def _rel_str(self, path: str) -> str:
        root = self._root_prefix
        if path.startswith(root):
            return path[len(root) :]
        return self._rel(Path(path))

    def _walk(self, directory: Path, listed: list[str]) -> list[str]:
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(directory):
            self.scanned.add(os.path.normpath(dirpath))
            listed.append(os.path.normpath(dirpath))
            dirnames[:] = [d for d in dirnames if d not in ALWAYS_IGNORED]
            for f in filenames:
                rel = self._rel(Path(dirpath) / f)
                if not self._ignored(rel):
                    out.append(rel)
        return out

    def _rel(self, p: Path) -> str:
        try:
            return os.path.relpath(p, self.root)
        except ValueError:
            return str(p)

    def _ignored(self, rel: str) -> bool:
        parts = rel.split(os.sep)
        if any(part in ALWAYS_IGNORED for part in parts):
            return True
        spec = self._ignore_spec()
        return bool(spec is not None and spec.match_file(rel))
