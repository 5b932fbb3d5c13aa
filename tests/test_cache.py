"""Input globs: what a step's declared inputs expand to (the files its cache key covers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.cache import FileSet

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`


def tree(root: Path, files: list[str]) -> None:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(f)


def test_globs_honour_ignore_files_hidden_files_and_tool_folders(tmp_path: Path) -> None:
    tree(
        tmp_path,
        [
            "src/a.py", "src/b.py", "src/notes.log", "src/.hidden.py", "src/pkg/c.py", "src/pkg/d.log",
            "src/__pycache__/a.cpython-311.pyc", "src/build/out.py", ".venv/lib/x.py", "other/e.py",
        ],
    )
    (tmp_path / ".gitignore").write_text("*.log\nsrc/build/\n")
    files = FileSet(tmp_path)
    assert files.expand(["src/*"], tmp_path) == ["src/a.py", "src/b.py", "src/pkg/c.py"]
    assert files.expand(["src/*.py", "src/.*"], tmp_path) == ["src/.hidden.py", "src/a.py", "src/b.py"]
    assert files.expand([".venv/lib/*"], tmp_path) == []  # never inputs, whatever the glob says
    assert files.expand(["src/missing.py"], tmp_path) == ["src/missing.py"]  # absence is in the key
    # the folders whose listings a new file would change (not __pycache__: Python rewrites it)
    assert files.scanned == {str(tmp_path / p) for p in ("src", "src/pkg", "src/build")}


def test_recorded_results_are_seen_at_once_and_written_together(tmp_path: Path) -> None:
    """A build's records wait for one transaction (at the latest when the cache closes), but its
    own lookups see them at once; forgetting one written or not yet written removes it."""
    from buildsys.cache import Cache, _hash_file

    cache = Cache(tmp_path)
    cache.record("a", "a", "k1", {"step": "s"}, {"out": 1}, 0.1, "s")
    cache.record("b", "b", "k2", {"step": "s"}, {"out": 2}, 0.1, "s")
    assert cache.result("k1") == {"out": 1}
    assert cache.results(["k1", "k2", "k3"]) == {"k1": '{"out": 1}', "k2": '{"out": 2}'}
    reader = Cache(tmp_path)
    assert reader.result("k1") is None  # another build: not written yet
    reader.close()
    cache.forget("k2")
    assert cache.result("k2") is None
    cache.close()
    other = Cache(tmp_path)
    assert other.result("k1") == {"out": 1} and other.result("k2") is None
    entry = other.entry("a")
    assert entry is not None and entry.key == "k1"
    other.close()
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * ((1 << 20) + 3))
    assert _hash_file(str(big), 5) == _hash_file(str(big)) == _hash_file(str(big), (1 << 20) + 3)  # a stale size reads on


def test_a_file_hashes_to_its_content_whatever_size_the_stat_before_said(tmp_path: Path) -> None:
    """`_hash_file` reads a small file in one call and hashes it in one; a file of another size
    than the stat said (it grew or shrank since) or larger than a read is hashed as a stream: the
    digest is the content's either way."""
    import xxhash

    from buildsys.cache import _hash_file

    chunk = 1 << 20
    for length in (0, 1, 15, chunk - 1, chunk, chunk + 3, 2 * chunk + 1):
        data = bytes(i % 251 for i in range(length))
        path = tmp_path / f"f{length}"
        path.write_bytes(data)
        want = xxhash.xxh3_128(data).hexdigest()
        for said in {length, -1, 0, 5, max(0, length - 1), length + 1, chunk, chunk - 1}:
            assert _hash_file(str(path), said) == want, (length, said)


def test_lookups_from_the_stored_keys_find_what_a_query_finds(tmp_path: Path) -> None:
    """A build deciding every step looks a key up in the database only when a stored result has
    it (the keys read once): the same answers as a query per key (`sparse`), for results written
    before, recorded by this build and not written yet, and written by this build's flushes."""
    from buildsys.cache import Cache

    first = Cache(tmp_path)
    first.record("a", "a", "k1", {"step": "s"}, {"out": 1}, 0.1, "s")
    first.close()
    full, sparse = Cache(tmp_path), Cache(tmp_path)
    sparse.sparse = True
    for c in (full, sparse):
        assert c.result("k1") == {"out": 1} and c.result("k2") is None  # (the keys are read here)
    for c in (full, sparse):
        c.record("b", "b", "k2", {"step": "s"}, {"out": 2}, 0.1, "s")
        assert c.result("k2") == {"out": 2}  # not written yet
        c.flush()
        assert c.result("k2") == {"out": 2} and c.result("k3") is None  # written since the keys were read
    assert full._keys == {"k1", "k2"}  # the lookups above came from here
    full.close()
    sparse.close()


def test_a_sparse_cache_reads_one_node_entry_as_the_full_read_does(tmp_path: Path) -> None:
    """`sparse` (a build reusing most recorded keys) asks for one node's entry at a time: the same
    entries as reading them all, this build's unwritten records included."""
    from buildsys.cache import Cache

    cache = Cache(tmp_path)
    cache.record("a", "a", "k1", {"step": "s"}, {"out": 1}, 0.1, "s")
    cache.record("b", "b", "k2", {"step": "s"}, {"out": 2}, 0.1, "s")
    cache.close()
    full, sparse = Cache(tmp_path), Cache(tmp_path)
    sparse.sparse = True
    for c in (full, sparse):
        c.record("b", "b", "k3", {"step": "t"}, {"out": 3}, 0.2, "s")  # not written yet
        c.touch("c", "c", "k4", {"step": "u"})
    def seen(c: Cache) -> list[object]:
        return [e and (e.node, e.label, e.key, e.components, e.duration) for e in map(c.entry, "abcd")]

    assert seen(sparse) == seen(full)
    assert [e and e.key for e in map(sparse.entry, "abcd")] == ["k1", "k3", "k4", None]
    full.close()
    sparse.close()


def test_an_input_that_is_a_fifo_or_a_device_is_never_read(tmp_path: Path) -> None:
    """A FIFO or a symlink to /dev/zero among a step's inputs hung `build` (and any cache key)."""
    import os

    from buildsys.cache import Cache

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "f").write_text("x")
    cache = Cache(tmp_path)
    try:
        digests = cache.digests(["fifo", "zero", "f"])
    finally:
        cache.close()
    assert digests["fifo"] == "not a regular file: a FIFO (named pipe)"
    assert digests["zero"] == "not a regular file: a character device"
    assert digests["f"] is not None and digests["f"].isalnum()


def test_rows_are_written_many_a_statement_as_one_statement_each_would(tmp_path: Path) -> None:
    import sqlite3

    from buildsys.cache import MAX_VARIABLES, SCHEMA, _insert

    # more rows than one statement holds, and keys written twice (within a statement and across
    # two): each later row replaces the earlier one
    per = MAX_VARIABLES // 6
    rows = [(f"n{i % (per + 7)}", "label", f"k{i}", "{}", float(i), 0.5) for i in range(3 * per + 5)]
    found = []
    for name, write in (("many", lambda db: _insert(db, "nodes", rows)),
                        ("each", lambda db: db.executemany("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, ?)", rows))):
        db = sqlite3.connect(tmp_path / f"{name}.db")
        db.executescript(SCHEMA)
        write(db)
        found.append(db.execute("SELECT * FROM nodes ORDER BY node").fetchall())
        db.close()
    assert found[0] == found[1]
    assert len(found[0]) == per + 7
