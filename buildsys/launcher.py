"""The console entry point: answer a provable no-op build before importing anything heavy, run a
plain `build`, `push` or `plan` without click (`buildsys.cli.direct`), and end the process without
the interpreter's teardown once a command is done."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: the no-op answer imports nothing it does not need
if TYPE_CHECKING:
    from typing import NoReturn

YOUNG_OBJECTS = 50_000  # allocations between two collections of the youngest generation


def main() -> None:
    from buildsys.cli.direct import parse, try_no_op

    args = sys.argv[1:]
    direct = parse(args, os.environ)
    if direct is not None:  # only an argument list click reads the same way is answered from the manifest
        code = try_no_op(direct)
        if code is not None:
            # Answered from the manifest: nothing was imported that needs shutting down.
            _exit_now(code)
    import gc

    # A command makes tens of thousands of objects that live until it ends (modules, the project's
    # model) and little cyclic garbage; at the default 700 allocations the collector walked them
    # ~50 times in a plan of 50 deployments (15-20 ms of CPU, 800 objects found).
    gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])
    try:
        if direct is not None:
            from buildsys.cli.direct import run

            run(direct, args)
        else:
            from buildsys.cli import main as cli_main

            cli_main()
    except SystemExit as exc:
        leave(exc)
    leave(SystemExit(0))


def leave(exc: SystemExit) -> NoReturn:
    """End the process with `exc`'s status as the interpreter would, but without freeing every
    module and object one by one (~15 ms of CPU for `--version`, ~40 ms for a plan of 50
    deployments). What that teardown does that anyone can see is done first, in its order:
    non-daemon threads joined (thread pools shut down), atexit callbacks run (logging's flush,
    `weakref.finalize`, coverage). When something still open needs its object freed to finish —
    an SQLite connection (closing it checkpoints the WAL into the database file, the one file CI
    caches keep) or a file written through a buffer — the interpreter's own exit does it."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter calls first at exit
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or run_exitfuncs is None:
        raise exc
    shutdown()
    run_exitfuncs()  # and clears them: the interpreter's exit below would not run them twice
    try:
        left_open = _left_open()
    except Exception:  # an object the check could not read: leave the interpreter's way
        left_open = True
    if left_open:
        raise exc
    code = exc.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # sys.exit("message"): said on stderr, status 1
        code = 1
    _exit_now(code or 0)


def _exit_now(code: int) -> NoReturn:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe or stream: the output had nowhere to go, like any failed write
        code = code or 1
    os._exit(code & 0xFF)


def _left_open() -> bool:
    """Whether an object still alive is an open SQLite connection or a file written through a
    buffer (the standard streams are flushed by `_exit_now`). Objects of exactly these classes,
    picked out in C: a Python loop over the tens of thousands of objects a command keeps would
    cost a third of what leaving early saves."""
    import gc
    import io
    from itertools import compress

    sqlite3 = sys.modules.get("sqlite3")
    kinds: set[type] = {io.BufferedWriter, io.BufferedRandom, io.TextIOWrapper}
    if sqlite3 is not None:
        kinds.add(sqlite3.Connection)
    objects = gc.get_objects()
    found = list(compress(objects, map(kinds.__contains__, map(type, objects))))
    del objects
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    std = {id(s) for s in streams} | {id(getattr(s, "buffer", None)) for s in streams}
    for obj in found:
        if id(obj) in std:
            continue
        if isinstance(obj, io.IOBase):
            try:
                if not obj.closed and obj.writable():
                    return True
            except ValueError:  # detached from its buffer
                continue
        elif sqlite3 is not None:
            try:
                obj.total_changes  # noqa: B018 (raises once the connection is closed)
            except sqlite3.ProgrammingError:
                continue
            return True
    return False
