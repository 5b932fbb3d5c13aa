"""The no-op fast path: prove a build would change nothing before importing the engine.

After a successful build whose every step was decided by content alone (no fingerprint or
existence checks, nothing left uncached), the engine writes a manifest: the stat data of every
file the build depended on (inputs, the project file, step sources), the modification times of the
directories its globs scanned (a new or deleted file changes them), digests of the environment
variables it used and of installed packages. The next `buildsys build` with the same arguments
compares those first; when nothing moved, every step is a cache hit by construction, and the
command answers from the manifest in a few stat calls. Anything else falls through to the engine.

Standard library only, imported before click: this module is the reason a no-op is fast.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs a no-op ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any

FORMAT = 6
# The cache layer's names (described in buildsys.caches), here because this module is imported first.
DIRECTORY = ".buildsys"
SUBDIRECTORY = "noop"
STEP_RESULTS = "cache.db"
PARALLEL_FROM = 4096  # files; below this a forked helper costs more than it saves
RACY_NS = 2_000_000_000
NodeRecord = tuple[str, str, "Sequence[str]", "Sequence[str]"]  # label, key, files, directories


def manifest_path(project_file: str, sections: Sequence[str], deployments: Sequence[str]) -> str:
    root = os.path.dirname(os.path.abspath(project_file))
    tag = _sha256_hex("\0".join([os.path.abspath(project_file), ",".join(sections), ",".join(sorted(deployments))]).encode())[:16]
    return os.path.join(root, DIRECTORY, SUBDIRECTORY, tag)


def environment_fingerprint() -> list[tuple[str, int]]:
    """Installed packages move these directories' mtimes. Not the entry Python puts first for
    how it was started: the current directory (`python -m buildsys`, `-c`) or the running
    script's directory (the `buildsys` console script's bin/): it holds no installed package, so
    both ways of starting buildsys share every cache."""
    here = {"", os.getcwd(), _STARTED_FROM}
    out = []
    for entry in sys.path:
        if entry in here:
            continue
        try:
            out.append((entry, os.stat(entry).st_mtime_ns))
        except OSError:
            continue
    return out


# the running script's directory, taken before anything could change the current directory
_STARTED_FROM = os.path.dirname(os.path.abspath(sys.argv[0])) if getattr(sys, "argv", None) and sys.argv[0] else ""


def code_stamp() -> str:
    """buildsys's own code: the size and modification time of every file of the package (its steps
    and schemas included), digested. Editing any of them (a development checkout, an upgrade in
    place) changes it, so every cache keyed on it is rebuilt. ~0.4 ms: stat data, not contents.
    Taken once per process (the code running is the code this process loaded: a command asks
    up to four times)."""
    if not _code_stamp:
        _code_stamp.append(_code_stamp_now())
    return _code_stamp[0]


_code_stamp: list[str] = []


def _code_stamp_now() -> str:
    package = os.path.dirname(os.path.abspath(__file__))
    roots = [package]
    if not os.path.isdir(os.path.join(package, "steps")):  # a source checkout: steps/ and schemas/ beside it
        roots += [os.path.join(os.path.dirname(package), d) for d in ("steps", "schemas")]
    rows = []
    while roots:
        directory = roots.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name != "__pycache__":
                    roots.append(entry.path)
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            rows.append(f"{entry.path}\0{st.st_size}\0{st.st_mtime_ns}")
    rows.sort()
    return _sha256_hex("\n".join(rows).encode("utf-8", "surrogatepass"))[:24]


def env_digest(value: str | None) -> str:
    return _sha256_hex(b"buildsys-noop\0" + (value or "\0unset").encode())[:16]


_sha256: list[Any] = []  # the constructor, found once (a failed import is not remembered by Python)


def _sha256_hex(data: bytes) -> str:
    """SHA-256 from CPython's built-in module when it has one: `import hashlib` loads OpenSSL,
    which alone costs a no-op build ~10 ms."""
    if not _sha256:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]  # CPython 3.12+
        except ImportError:
            try:
                from _sha256 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]  # CPython 3.11
            except ImportError:
                from hashlib import sha256  # type: ignore[assignment,unused-ignore]
        _sha256.append(sha256)
    return str(_sha256[0](data).hexdigest())


def write_manifest(
    path: str,
    *,
    files: Iterable[str],
    directories: Iterable[str],
    env: Mapping[str, str | None],
    labels: Sequence[str],
    cache: str,
    known: Mapping[str, tuple[int, int, int, int]] | Seen | None = None,
    nodes: Sequence[NodeRecord] = (),
    previous: Previous | None = None,
    loose: Iterable[str] = (),
    kept: Iterable[str] = (),
) -> bool:
    """Record what a successful all-cached-or-ran build depended on. False when it cannot prove
    the next build a no-op: a file was modified too recently to trust its stat data (git's "racily
    clean" rule). Such files are recorded as changed, so the next build still reuses the steps
    that do not read them (`previous_build`).

    `known` holds stat data the build saw when it digested files: recording what the decision was
    based on (rather than stat-ing again) can only make the next check fall through needlessly,
    never pass wrongly. `nodes`: each step's label, cache key, input files and scanned directories.
    `loose`: files every step depends on that no step's key covers (the project file, the steps'
    code, the ignore files): one of them moving makes every recorded key untrustworthy.
    `previous`: the manifest this build started from (`previous_build`); `kept`: the steps this
    build settled from it, with its key, files and directories for them (which `files`,
    `directories` and `nodes` need not repeat). When every other step read what it read before,
    the previous manifest's rows are kept and only those of the files and directories that moved
    are written anew: the same bytes as writing every row."""
    _decoded.clear()
    if any("\0" in label for label in labels):
        remove(path)
        return False  # the manifest separates names with NUL (file names cannot hold one)
    now = time.time_ns()
    loose = set(loose)
    kept = set(kept)
    found = None
    if previous is not None and previous.manifest == path:
        found = _kept_fields(previous, files, directories, labels, nodes, loose, kept, known, now)
    if found is None:
        if kept:
            assert previous is not None  # (kept steps are a previous manifest's)
            files, directories, nodes = _with_kept(previous, files, directories, nodes, kept, labels)
        found = _fresh_fields(_root_of(path).rstrip(os.sep) + os.sep, files, directories, known, nodes, loose, now)
    fields, racy = found
    blob = [MAGIC]
    for name, payload in {
        "python": _text([sys.version]),
        "code": _text([code_stamp()]),
        "packages": _text(f"{e}\0{m}" for e, m in environment_fingerprint()),
        **fields,
        "env": _text(f"{k}\0{env_digest(v)}" for k, v in sorted(env.items())),
        "labels": _text(labels),
        "cache": _text([cache]),
        "racy": _text(str(i) for i in racy),
    }.items():
        blob += [f"{name} {len(payload)}\n".encode(), payload, b"\n"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(b"".join(blob))
    os.replace(tmp, path)
    return not racy


def _stat(path: str) -> tuple[int, int, int, int]:
    """(size, mtime_ns, ctime_ns, inode), size -1 for a missing file."""
    try:
        st = os.stat(path)
    except OSError:
        return (-1, 0, 0, 0)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _fresh_fields(
    root: str,
    files: Iterable[str],
    directories: Iterable[str],
    known: Any,
    nodes: Sequence[NodeRecord],
    loose: set[str],
    now: int,
) -> tuple[dict[str, bytes], list[int]]:
    """The file, directory and step fields of a manifest, every row from `known` or stat-ed now,
    and the indices of the racy files."""
    from array import array

    dirs = []
    for d in sorted(set(directories)):
        try:
            dirs.append((d, os.stat(d).st_mtime_ns))
        except OSError:
            dirs.append((d, -1))
    full = sorted(files | loose if isinstance(files, set) else {*files, *loose})  # (a build's 20,000 paths: not copied)
    get = (known or {}).get
    rows = [get(f) or _stat(f) for f in full]
    limit = now - RACY_NS
    file_at = dict(zip(full, map(str, range(len(full))), strict=True))
    cut = len(root)
    return {
        # One string and one packed array load far faster than 20,000 small tuples; paths
        # relative to the project root where they are under it: shorter to load and to look up.
        "paths": _text([f[cut:] if f.startswith(root) else f for f in full]),
        "stats": array("q", [n for row in rows for n in row]).tobytes(),
        "dirs": _text(f"{d}\0{m}" for d, m in dirs),
        "nodes": _text(_node_fields(nodes, file_at, [d for d, _ in dirs])),
        "loose": _text(file_at[f] for f in sorted(loose)),
    }, [i for i, row in enumerate(rows) if row[1] >= limit and row[0] >= 0]


def _node_fields(nodes: Sequence[NodeRecord], file_at: Mapping[str, str], dirs: list[str]) -> list[str]:
    """label, key, file indices, directory indices (comma-separated) per node; nothing at all when
    a node names a file or directory the manifest does not hold."""
    dir_at = {d: str(i) for i, d in enumerate(dirs)}
    out: list[str] = []
    for label, key, node_files, node_dirs in nodes:
        try:
            out += [label, key, ",".join(map(file_at.__getitem__, node_files)), ",".join(map(dir_at.__getitem__, node_dirs))]
        except KeyError:
            return []
    return out


def _with_kept(
    previous: Previous,
    files: Iterable[str],
    directories: Iterable[str],
    nodes: Sequence[NodeRecord],
    kept: set[str],
    labels: Sequence[str],
) -> tuple[set[str], set[str], list[NodeRecord]]:
    """`files`, `directories` and `nodes` with the kept steps' own from `previous`, every node in
    the order of `labels` (none at all when a step is neither kept nor given)."""
    files, directories = {*files}, {*directories}
    given = {node[0]: node for node in nodes}
    out: list[NodeRecord] = []
    for label in labels:
        node = given.get(label)
        if node is None and label in kept:
            node = (label, previous.keys[label], previous.files_of(label) or [], previous.directories_of(label) or [])
            files.update(node[2])
            directories.update(node[3])
        if node is None:
            return files, directories, []
        out.append(node)
    return files, directories, out


def _kept_fields(
    previous: Previous,
    files: Iterable[str],
    directories: Iterable[str],
    labels: Sequence[str],
    nodes: Sequence[NodeRecord],
    loose: set[str],
    kept: set[str],
    known: Any,
    now: int,
) -> tuple[dict[str, bytes], list[int]] | None:
    """The fields of `_fresh_fields` from the previous manifest's, when this build depended on the
    same files and directories: the same steps, each of the steps decided again reading what it
    read then, the same loose files, nothing else. Only the rows of what moved since are new."""
    if previous.labels != list(labels) or len(previous.numbers) != 4 * len(previous.relative):
        return None
    given = {node[0] for node in nodes}
    if len(given) != len(nodes) or given & kept or len(given) + len(kept) != len(labels) or not kept.issubset(previous.keys):
        return None
    if loose != previous.loose_files():
        return None
    reads, listed = set(loose), set(previous.dir_names)
    keys = dict(previous.keys)
    for label, key, node_files, node_dirs in nodes:
        if previous.files_of(label) != list(node_files) or previous.directories_of(label) != list(node_dirs):
            return None
        keys[label] = key
        reads.update(node_files)
        listed.update(node_dirs)
    if not reads.issuperset(files) or not listed.issuperset(directories):
        return None
    from array import array

    numbers = array("q")
    numbers.frombytes(previous.numbers.tobytes())
    get = (known or {}).get
    racy = []
    # Rows kept as they were are not racy now: they were not when recorded, and time moved on.
    for i in sorted(previous.moved):
        f = previous.path_at(i)
        row = get(f) or _stat(f)
        numbers[4 * i : 4 * i + 4] = array("q", row)
        if row[0] >= 0 and row[1] >= now - RACY_NS:
            racy.append(i)
    items = list(previous.items)
    items[1::4] = map(keys.__getitem__, items[0::4])
    raw = previous.raw
    return {
        "paths": raw["paths"],
        "stats": numbers.tobytes(),
        # the directories as the check before this build saw them (those that moved, as they were then)
        "dirs": _text(f"{d}\0{previous.dirs_now.get(i, m)}" for i, (d, m) in enumerate(previous.dirs)),
        "nodes": _text(items),
        "loose": raw["loose"],
    }, racy


# The manifest is plain data read by slicing, never a deserializer: `.buildsys/` is in the project
# folder, which a cloned repository or a recipe can write into. MAGIC, then for each field a line
# "NAME LENGTH" and LENGTH bytes and a newline; lists are NUL-separated UTF-8 text.
MAGIC = f"buildsys-noop {FORMAT}\n".encode()


def _text(items: Iterable[str]) -> bytes:
    return "\0".join(items).encode("utf-8", "surrogatepass")


def _items(payload: bytes) -> list[str]:
    return payload.decode("utf-8", "surrogatepass").split("\0") if payload else []


def _fields(blob: bytes) -> dict[str, bytes] | None:
    if not blob.startswith(MAGIC):
        return None
    out = {}
    pos = len(MAGIC)
    while pos < len(blob):
        end = blob.find(b"\n", pos)
        name, _, size = blob[pos:end].partition(b" ")
        if end < 0 or not size.isdigit():
            return None
        start = end + 1
        stop = start + int(size)
        if blob[stop : stop + 1] != b"\n":
            return None
        out[name.decode("ascii", "replace")] = blob[start:stop]
        pos = stop + 1
    return out


_decoded: dict[str, tuple[tuple[int, int, int, int], dict[str, Any] | None]] = {}  # path -> (file identity, _read)


def _read(path: str) -> dict[str, Any] | None:
    """A manifest's fields decoded, or None when it is missing, foreign, damaged or stale. Kept
    for the process while the file is the same one (the no-op check, then previous_build)."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            identity = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
            kept = _decoded.get(path)
            if kept is not None and kept[0] == identity:
                return kept[1]
            data = _decode(fh.read())
    except OSError:
        return None
    _decoded.clear()  # one manifest at a time
    _decoded[path] = (identity, data)
    return data


def _decode(blob: bytes) -> dict[str, Any] | None:
    try:
        fields = _fields(blob)
        if fields is None or _items(fields["python"]) != [sys.version]:
            return None
        pairs = [_items(fields[k]) for k in ("packages", "dirs", "env")]
        packages, dirs, env = ([(p[i], p[i + 1]) for i in range(0, len(p), 2)] for p in pairs)
        return {
            "code": _items(fields["code"]),
            "packages": [(e, int(m)) for e, m in packages],
            "paths": _items(fields["paths"]),
            "stats": memoryview(fields["stats"]).cast("q"),  # not `array`: it imports collections.abc
            "dirs": [(d, int(m)) for d, m in dirs],
            "env": env,
            "labels": _items(fields["labels"]),
            "cache": _items(fields["cache"]),
            "racy": [int(i) for i in _items(fields.get("racy", b""))],
            "nodes": _items(fields["nodes"]),
            "loose": [int(i) for i in _items(fields["loose"])],
            "raw": fields,
        }
    except (KeyError, IndexError, ValueError, TypeError, UnicodeDecodeError):
        return None


def _root_of(manifest: str) -> str:
    """The project root of a manifest at ROOT/.buildsys/noop/TAG."""
    return os.path.dirname(os.path.dirname(os.path.dirname(manifest)))


def remove(path: str) -> None:
    try:  # noqa: SIM105 - contextlib is one more import on the no-op path
        os.unlink(path)
    except OSError:
        pass


def still_valid(path: str) -> list[str] | None:
    """The step labels when nothing the build depended on moved, else None.

    When the manifest records its steps (what `previous_build` needs), a changed file does not
    stop the check: every file is checked (in two processes on a multi-core machine) and the
    moved ones kept for `previous_build`, so the build that follows stats nothing again. Once
    this process's part has shown the answer is no, the helper's part is collected there too,
    having run meanwhile beside the build's start (imports, the compiled build)."""
    _forget_verified(path)
    data = _read(path)
    if data is None:
        return None
    paths: list[str] = data["paths"]
    numbers: memoryview = data["stats"]
    whole = bool(data["nodes"])  # previous_build can use what is found: check every file
    if len(numbers) != 4 * len(paths) or (data["racy"] and not whole):
        return None
    if os.stat not in os.supports_dir_fd:
        return None  # (Windows) the engine decides
    if not whole and _changed_dirs(data, first_only=True):
        return None
    if not _surroundings_unchanged(data):
        return None  # (previous_build cannot help either: something besides input files moved)
    try:
        root = os.open(_root_of(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None
    try:
        # One stat per input file is nearly all of the cost, so on a multi-core machine a forked
        # helper checks the second part of the files while this process checks everything else
        # (git preloads its index the same way, with threads; Python threads would queue on the
        # GIL). This process also stats the directories, once the helper is started: the helper
        # takes that many more files.
        split = (len(paths) - len(data["dirs"])) // 2 if len(paths) >= PARALLEL_FROM and cpus() > 1 else len(paths)
        helper = _start_helper(paths, numbers, split, root, whole) if 0 < split < len(paths) else None
        if helper is None:
            split = len(paths)
        moved_dirs = _changed_dirs(data) if whole else []  # all of them, for previous_build
        moved = _moved_files(paths, numbers, 0, split, root, whole)
        covered = [(0, split)]
        if helper is not None and whole and (moved or moved_dirs or data["racy"]):
            _verified[path] = (data, set(moved), covered, (helper, split), moved_dirs)  # collected by previous_build
            return None
        if helper is not None and whole and _helper_found_one(helper):  # its part moved: no wait for the rest
            _verified[path] = (data, set(moved), covered, (helper, split), moved_dirs)
            return None
        if helper is not None:
            theirs = _join_helper(helper, stop=bool(moved) and not whole)
            if theirs is not None:
                moved += theirs
                covered.append((split, len(paths)))
    finally:
        os.close(root)
    if moved or moved_dirs or data["racy"] or len(covered) != (1 if helper is None else 2):
        if whole:  # for the build that follows (the answer is no): its previous_build
            _verified[path] = (data, set(moved), covered, None, moved_dirs)
        return None
    labels: list[str] = data["labels"]
    return labels  # (a yes ends the command: nothing is kept for a later, staler look)


def _changed_dirs(data: dict[str, Any], *, first_only: bool = False) -> list[tuple[int, int]]:
    """The recorded directories whose listing may have changed (mtime moved): (index, mtime now,
    or -1 when gone)."""
    stat = os.stat
    out = []
    for i, (d, mtime) in enumerate(data["dirs"]):
        try:
            now = stat(d).st_mtime_ns
        except OSError:
            now = -1
        if now != mtime:
            out.append((i, now))
            if first_only:
                break
    return out


def _surroundings_unchanged(data: dict[str, Any]) -> bool:
    """The cache, the environment variables, buildsys's code and the installed packages."""
    if len(data["cache"]) != 1 or not os.path.exists(data["cache"][0]):
        return False  # the cache was deleted: the steps' results are gone
    environ = os.environ
    for name, digest in data["env"]:
        if env_digest(environ.get(name)) != digest:
            return False
    if data["code"] != [code_stamp()]:
        return False  # buildsys itself changed: labels, decisions and outputs may differ
    return bool(environment_fingerprint() == data["packages"])


# manifest -> what still_valid found, for the previous_build that follows in this process: (the
# decoded manifest checked, indices of the files that moved, the index ranges checked, a helper
# still checking the files from an index on, or None, the directories that moved: index, mtime now)
_verified: dict[
    str, tuple[dict[str, Any], set[int], list[tuple[int, int]], tuple[tuple[int, int], int] | None, list[tuple[int, int]]]
] = {}


def _forget_verified(path: str) -> None:
    """Drop what still_valid found for `path`, stopping and waiting for a helper left running."""
    found = _verified.pop(path, None)
    if found is not None and found[3] is not None:
        _join_helper(found[3][0], stop=True)


def _moved_files(
    paths: list[str], numbers: memoryview, start: int, end: int, root: int, whole: bool, found: Callable[[], object] | None = None
) -> list[int]:
    """Indices of paths[start:end] (relative to the directory `root`, or absolute) whose stat data
    moved; only the first unless `whole`. `found` is called when the first is found."""
    stat = os.stat
    recorded = iter(numbers[4 * start : 4 * end])
    out: list[int] = []
    for i, p, size, mtime, ctime, ino in zip(range(start, end), paths[start:end], recorded, recorded, recorded, recorded, strict=True):
        try:
            st = stat(p, dir_fd=root)
        except OSError:
            if size == -1:
                continue
        else:
            if st.st_mtime_ns == mtime and st.st_size == size and st.st_ino == ino and st.st_ctime_ns == ctime:
                continue
        out.append(i)
        if not whole:
            break
        if found is not None and len(out) == 1:
            found()
    return out


def _start_helper(paths: list[str], numbers: memoryview, start: int, root: int, whole: bool) -> tuple[int, int] | None:
    """Fork a process that checks paths[start:] and says through a pipe which moved (the first
    only unless `whole`): (its pid, the pipe's end). Checking every file, it says FOUND at the
    first that moved, then goes on: the no-op check's answer is no, and the build can start."""

    def work(out: int) -> None:
        moved = _moved_files(paths, numbers, start, len(paths), root, whole, lambda: os.write(out, FOUND))
        said = (",".join(map(str, moved)) + ";").encode()
        while said:
            said = said[os.write(out, said) :]

    return fork_helper(work)


def fork_helper(work: Callable[[int], object]) -> tuple[int, int] | None:
    """Fork a helper process that runs `work(the pipe's write end)` and exits without running
    anything of the parent's (no atexit, no buffered output): (its pid, the pipe's read end), or
    None when no process can be forked. Shared by this check and cache_prefetch."""
    if not hasattr(os, "fork"):
        return None
    try:
        fds = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(fds[0])
        os.close(fds[1])
        return None
    if pid == 0:
        try:
            os.close(fds[0])
            work(fds[1])
        finally:
            os._exit(0)
    os.close(fds[1])
    return pid, fds[0]


FOUND = b"!"  # a helper's first word when a file of its part moved (`_helper_found_one`)
_heard: dict[int, bytes] = {}  # pipe -> what `_helper_found_one` read that was not FOUND


def _helper_found_one(helper: tuple[int, int]) -> bool:
    """Wait for the helper's first word: whether a file of its part moved, said as soon as it is
    seen (else the helper's whole answer begins, and is kept for `_join_helper`)."""
    try:
        first = os.read(helper[1], 1)
    except OSError:
        first = b""
    if first != FOUND:
        _heard[helper[1]] = first
    return first == FOUND


def _join_helper(helper: tuple[int, int], *, stop: bool) -> list[int] | None:
    """The indices the helper found moved; None when it did not finish (`stop`: the answer is
    already no and nothing more is wanted, so it is stopped) or failed."""
    pid, pipe = helper
    if stop:
        try:  # noqa: SIM105 - contextlib is one more import on the no-op path
            os.kill(pid, 9)
        except OSError:
            pass
    said = _heard.pop(pipe, b"")
    try:
        while chunk := os.read(pipe, 65536):  # all of it before waiting: a long answer fills the pipe
            said += chunk
    except OSError:
        said = b""
    finally:
        os.close(pipe)
        os.waitpid(pid, 0)
    if not said.endswith(b";"):
        return None
    said = said.removeprefix(FOUND)
    try:
        return [int(i) for i in said[:-1].split(b",")] if len(said) > 1 else []
    except ValueError:
        return None


def cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --- the changed-input path: which steps' own inputs moved since the last build -------------------


class Previous:
    """The last successful build as its manifest recorded it, checked against the file system now:
    every step's cache key, input files and scanned directories, and which steps' own inputs
    moved. Everything else the build depended on (the project file, step sources, environment
    variables, buildsys, installed packages, the cache) is unchanged, or there is no Previous.
    A step's files and directories are read from the manifest when asked for (`files_of`): a
    build after a small change needs those of the few steps it decides again, not of all."""

    __slots__ = (
        "_at", "_lists", "changed", "dirs", "dirs_now", "env", "items", "keys", "labels", "manifest", "moved",
        "numbers", "prefix", "raw", "relative",
    )

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}  # label -> cache key
        self.changed: set[str] = set()  # labels whose files or directories moved
        self.env: list[str] = []  # environment variables the build used (all unchanged)
        self.labels: list[str] = []  # every step's label, in graph order
        self.items: list[str] = []  # label, key, file indices, directory indices, per step, as recorded
        self.relative: list[str] = []  # the manifest's files as recorded (relative to `prefix` when under it)
        self.prefix = ""  # the project root, with a trailing separator
        self.numbers: memoryview = memoryview(b"")  # their recorded (size, mtime, ctime, inode), flat
        self.moved: set[int] = set()  # indices of files that moved (or were racy when recorded)
        self.dirs: list[tuple[str, int]] = []  # the scanned directories and their recorded mtimes
        self.dirs_now: dict[int, int] = {}  # index -> mtime now, of the directories that moved (-1: gone)
        self.raw: dict[str, bytes] = {}  # the manifest's fields as stored
        self.manifest = ""  # its path
        self._lists: dict[str, tuple[str, str]] | None = None  # label -> its file and directory indices
        self._at: dict[str, int] | None = None

    def path_at(self, i: int) -> str:
        p = self.relative[i]
        return p if p.startswith(os.sep) else self.prefix + p

    @property
    def paths(self) -> list[str]:
        """The manifest's files (absolute), in its order."""
        return [self.path_at(i) for i in range(len(self.relative))]

    @property
    def dir_names(self) -> list[str]:
        return [d for d, _ in self.dirs]

    def _texts(self, label: str) -> tuple[str, str] | None:
        if self._lists is None:
            items = self.items
            self._lists = dict(zip(items[0::4], zip(items[2::4], items[3::4], strict=True), strict=True))
        return self._lists.get(label)

    def files_of(self, label: str) -> list[str] | None:
        """The absolute paths of the step's input files, as recorded; None for a step not recorded."""
        texts = self._texts(label)
        if texts is None:
            return None
        return [self.path_at(int(i)) for i in texts[0].split(",")] if texts[0] else []

    def directories_of(self, label: str) -> list[str] | None:
        """The directories the step's globs listed, as recorded; None for a step not recorded."""
        texts = self._texts(label)
        if texts is None:
            return None
        return [self.dirs[int(i)][0] for i in texts[1].split(",")] if texts[1] else []

    @property
    def files(self) -> dict[str, list[str]]:
        """label -> `files_of` for every step."""
        return {label: self.files_of(label) or [] for label in self.keys}

    @property
    def directories(self) -> dict[str, list[str]]:
        """label -> `directories_of` for every step."""
        return {label: self.directories_of(label) or [] for label in self.keys}

    def loose_files(self) -> set[str]:
        """The files recorded as depended on by every step (`write_manifest`'s `loose`)."""
        return {self.path_at(int(i)) for i in _items(self.raw.get("loose", b""))}

    def recorded(self, path: str) -> tuple[int, int, int, int] | None:
        """The stat data of `path` as recorded and found unchanged now; None when it moved, is
        missing or is not in the manifest."""
        if self._at is None:
            self._at = dict(zip(self.paths, range(len(self.relative)), strict=True))
        i = self._at.get(path)
        if i is None or i in self.moved:
            return None
        size, mtime, ctime, ino = self.numbers[4 * i : 4 * i + 4]
        return None if size == -1 else (size, mtime, ctime, ino)


class Seen:
    """The stat data a build's decisions rest on, by absolute path, as `write_manifest`'s `known`:
    what the build saw while digesting files, else what the last manifest recorded and was found
    unchanged at the start of this build (the steps reused with their recorded keys)."""

    __slots__ = ("observed", "previous")

    def __init__(self, observed: Mapping[str, tuple[int, int, int, int]], previous: Previous | None) -> None:
        self.observed = observed
        self.previous = previous

    def get(self, path: str) -> tuple[int, int, int, int] | None:
        seen = self.observed.get(path)
        if seen is None and self.previous is not None:
            return self.previous.recorded(path)
        return seen


def _owners(
    labels: Sequence[str], file_texts: Sequence[str], dir_texts: Sequence[str], moved: set[int], moved_dirs: Mapping[int, int]
) -> tuple[set[str], set[int]]:
    """The steps whose files or directories include one that moved, and the moved files some step
    reads. A few moved (the usual case): each is looked for in the steps' index lists as text,
    which parses none of the 20,000 indices a large build records."""
    changed: set[str] = set()
    owned: set[int] = set()
    if not moved and not moved_dirs:
        return changed, owned
    if len(moved) + len(moved_dirs) > 32:
        for label, file_text, dir_text in zip(labels, file_texts, dir_texts, strict=True):
            hit = moved.intersection(map(int, file_text.split(","))) if file_text else set()
            owned |= hit
            if hit or (dir_text and not moved_dirs.keys().isdisjoint(map(int, dir_text.split(",")))):
                changed.add(label)
        return changed, owned
    files = [(i, f",{i},") for i in moved]
    dirs = [f",{i}," for i in moved_dirs]
    for label, file_text, dir_text in zip(labels, file_texts, dir_texts, strict=True):
        listed = f",{file_text},"
        for i, text in files:
            if text in listed:
                owned.add(i)
                changed.add(label)
        if dirs and label not in changed:
            listed = f",{dir_text},"
            if any(text in listed for text in dirs):
                changed.add(label)
    return changed, owned


def _previous(path: str) -> Previous | None:
    data = _read(path)
    if data is None or not data["nodes"] or not _surroundings_unchanged(data):
        return None
    paths: list[str] = data["paths"]
    numbers: memoryview = data["stats"]
    items: list[str] = data["nodes"]
    if len(numbers) != 4 * len(paths) or len(items) % 4:
        return None
    prefix = _root_of(path).rstrip(os.sep) + os.sep
    moved = set(data["racy"])
    checked = _verified.get(path)  # the no-op check, moments ago in this process
    moved_dirs: dict[int, int] | None = None
    if checked is not None and checked[0] is data:
        _verified.pop(path)
        moved |= checked[1]
        moved_dirs = dict(checked[4])
        covered = list(checked[2])
        if checked[3] is not None:  # its helper, done by now (or its part is checked here)
            (helper, start) = checked[3]
            theirs = _join_helper(helper, stop=False)
            if theirs is not None:
                moved.update(theirs)
                covered.append((start, len(paths)))
        todo = [(0, len(paths))]
        for start, end in covered:
            todo = [part for a, b in todo for part in ((a, min(b, start)), (max(a, end), b)) if part[0] < part[1]]
    else:
        _forget_verified(path)
        todo = [(0, len(paths))]
    stat = os.stat
    for start, end in todo:
        full = [p if p.startswith(os.sep) else prefix + p for p in paths[start:end]]
        recorded = iter(numbers[4 * start : 4 * end])
        for i, p, size, mtime, ctime, ino in zip(range(start, end), full, recorded, recorded, recorded, recorded, strict=True):
            try:
                st = stat(p)
            except OSError:
                if size != -1:
                    moved.add(i)
                continue
            if st.st_mtime_ns != mtime or st.st_size != size or st.st_ino != ino or st.st_ctime_ns != ctime:
                moved.add(i)
    if not moved.isdisjoint(data["loose"]):
        return None  # the project file, a step's code or an ignore file: every key may have changed
    if moved_dirs is None:
        moved_dirs = dict(_changed_dirs(data))
    labels = items[0::4]
    changed, owned = _owners(labels, items[2::4], items[3::4], moved, moved_dirs)
    if not moved <= owned:
        return None  # a file no step reads moved
    out = Previous()
    out.keys = dict(zip(labels, items[1::4], strict=True))
    out.changed, out.moved, out.dirs_now = changed, moved, moved_dirs
    out.labels, out.items, out.dirs = data["labels"], items, data["dirs"]
    out.relative, out.prefix, out.numbers = paths, prefix, numbers
    out.raw, out.manifest = data["raw"], path
    out.env = [name for name, _ in data["env"]]
    return out


def previous_build(path: str) -> Previous | None:
    """The manifest at `path` as a Previous; None when it is missing, foreign, damaged, or when
    something besides steps' own input files and directories changed since it was written."""
    from buildsys.collector import gc_paused

    try:
        with gc_paused():  # thousands of lists and no cycle among them: no collection pass while they are made
            return _previous(path)
    except (ValueError, IndexError):
        return None
    finally:
        _forget_verified(path)  # what the no-op check found and this did not use (a helper stopped)


# --- the answer to a provable no-op, before anything heavy is imported --------------------------------

def answer_no_op(
    file: str, sections: Sequence[str], deployments: Sequence[str], *, as_json: bool, explain: bool
) -> int | None:
    """Exit code when the build of `sections` and `deployments` of project `file` is provably a
    no-op, its outcome written as the build's reporter writes it (`explain`: each step's line too);
    None to run the build. The arguments are `buildsys.cli.direct`'s reading of the command line."""
    labels = still_valid(manifest_path(file, sections, deployments))
    if labels is None:
        return None
    _report(labels, as_json=as_json, explain=explain)
    return 0


def _report(labels: Sequence[str], *, as_json: bool, explain: bool) -> None:
    n = len(labels)
    summary = f"build ok: 0 ran, {n} cached, 0 failed, 0 not run"
    if as_json:
        import json

        now = round(time.time(), 3)
        out = [json.dumps({"event": "cached", "time": now, "step": label, "reason": "unchanged"}) for label in labels]
        counts = {"ran": 0, "cached": n, "failed": 0, "skipped": 0}
        out.append(json.dumps({"event": "summary", "time": now, "message": summary, "ok": True, **counts}))
        sys.stdout.write("\n".join(out) + "\n")
        return
    lines = []
    if explain:
        lines = [f"= {label}  cached (unchanged)" for label in labels]
    lines.append(summary)
    from buildsys.printable import printable

    sys.stderr.write(printable("\n".join(lines)) + "\n")
