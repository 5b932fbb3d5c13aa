"""The console entry point's exit (buildsys/launcher.py: `leave`): the interpreter's teardown is
skipped, but nothing that teardown would have done that anyone can see is lost: non-daemon threads
finish, atexit callbacks run, output is flushed, the exit status is the interpreter's, and an SQLite
connection or written file still open makes it exit the interpreter's way (closing them)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def _run(tmp_path: Path, body: str, code: str = "SystemExit(0)") -> subprocess.CompletedProcess[str]:
    """A process that runs `body`, then ends through `launcher.leave` with `code`."""
    script = f"import sys\nfrom buildsys.launcher import leave\n{body}\nleave({code})\n"
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_the_status_is_what_the_interpreter_gives(tmp_path: Path) -> None:
    assert _run(tmp_path, "print('out', end='')").returncode == 0
    done = _run(tmp_path, "print('out', end=''); print('err', end='', file=sys.stderr)", "SystemExit(3)")
    assert (done.returncode, done.stdout, done.stderr) == (3, "out", "err")
    assert _run(tmp_path, "pass", "SystemExit(None)").returncode == 0
    done = _run(tmp_path, "pass", "SystemExit('gave up: why')")
    assert (done.returncode, done.stderr) == (1, "gave up: why\n")


def test_buffered_output_is_flushed_through_a_pipe(tmp_path: Path) -> None:
    lines = "".join(f"line {n}\n" for n in range(5000))
    done = _run(tmp_path, "sys.stdout.write(''.join(f'line {n}\\n' for n in range(5000)))")
    assert (done.returncode, done.stdout) == (0, lines)


def test_non_daemon_threads_finish_and_atexit_callbacks_run_in_order(tmp_path: Path) -> None:
    # the thread writes only once the main thread is done (the interpreter's shutdown releases it):
    # without the join that leave does, the process would end first
    body = (
        "import atexit, threading\n"
        "def late():\n"
        "    threading.main_thread().join()\n"
        "    open('thread', 'w').write('thread ran')\n"
        "threading.Thread(target=late).start()\n"
        "atexit.register(lambda: open('order', 'a').write('second '))\n"
        "atexit.register(lambda: open('order', 'a').write('first '))\n"
    )
    assert _run(tmp_path, body).returncode == 0
    assert (tmp_path / "thread").read_text() == "thread ran"
    assert (tmp_path / "order").read_text() == "first second "


def test_an_open_sqlite_connection_is_closed_as_the_interpreter_would(tmp_path: Path) -> None:
    """Closing the last connection checkpoints the WAL into the database file: CI caches keep only
    that file (`.buildsys/cache.db`), so what was written must be in it after the process."""
    body = (
        "import sqlite3\n"
        "db = sqlite3.connect('cache.db', isolation_level=None)\n"
        "db.execute('PRAGMA journal_mode=WAL')\n"
        "db.execute('CREATE TABLE t (x)')\n"
        "db.execute('INSERT INTO t VALUES (42)')\n"
    )
    assert _run(tmp_path, body).returncode == 0
    assert not (tmp_path / "cache.db-wal").exists()
    shutil.copyfile(tmp_path / "cache.db", tmp_path / "kept.db")  # the file alone, as a CI cache keeps it
    kept = sqlite3.connect(tmp_path / "kept.db")
    try:
        assert kept.execute("SELECT x FROM t").fetchall() == [(42,)]
    finally:
        kept.close()


def test_a_written_file_left_open_is_flushed(tmp_path: Path) -> None:
    for mode, data in (("w", "'x' * 100"), ("wb", "b'x' * 100"), ("ab+", "b'x' * 100")):
        (tmp_path / "left").unlink(missing_ok=True)
        assert _run(tmp_path, f"kept = open('left', '{mode}')\nkept.write({data})").returncode == 0
        assert (tmp_path / "left").read_text() == "x" * 100, mode


def test_the_console_command_exits_with_its_status(tmp_path: Path) -> None:
    """`python -m buildsys` ends through `leave`: the command's status and its whole output."""
    version = subprocess.run([sys.executable, "-m", "buildsys", "--version"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    assert (version.returncode, version.stdout.startswith("buildsys, version ")) == (0, True)
    missing = subprocess.run([sys.executable, "-m", "buildsys", "validate"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 1
    assert "prefect.yaml" in missing.stderr


def test_a_command_collects_young_objects_less_often(tmp_path: Path) -> None:
    """The collector's first threshold is raised for a command (not for the no-op answer, which
    makes few objects); the others stay the interpreter's."""
    script = (
        "import atexit, gc, sys\n"
        "from buildsys import launcher\n"
        "before = gc.get_threshold()\n"
        "atexit.register(lambda: print(before, gc.get_threshold()))\n"
        "sys.argv = ['buildsys', '--version']\n"
        "launcher.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    import gc

    from buildsys.launcher import YOUNG_OBJECTS

    default = gc.get_threshold()
    assert done.stdout.splitlines()[-1] == f"{default} {(YOUNG_OBJECTS, *default[1:])}"


def test_dead_weak_proxies_alive_at_the_exit_do_not_break_it(tmp_path: Path) -> None:
    # A dead proxy raises ReferenceError on almost anything asked of it (isinstance included): the
    # check for open files must not (an earlier version of it ended `buildsys push` with a traceback).
    body = (
        "import weakref\nclass Thing: pass\nthing = Thing()\nproxies = [weakref.proxy(thing)]\ndel thing\n"
        "kept = open('out.txt', 'w'); kept.write('kept')"
    )
    done = _run(tmp_path, body)
    assert (done.returncode, done.stderr) == (0, "")
    assert (tmp_path / "out.txt").read_text() == "kept"


def test_an_exit_check_that_fails_leaves_the_interpreters_way(tmp_path: Path) -> None:
    body = (
        "import gc\ndef broken(*args):\n    raise RuntimeError('cannot list objects')\ngc.get_objects = broken\n"
        "kept = open('out.txt', 'w'); kept.write('kept')"
    )
    done = _run(tmp_path, body, "SystemExit(4)")
    assert (done.returncode, done.stderr) == (4, "")
    assert (tmp_path / "out.txt").read_text() == "kept"
