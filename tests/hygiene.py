"""What one test may not leave behind for the next: the suite must pass in any order.

`tests/conftest.py` takes a `Snapshot` before each test (after the session and module fixtures it
uses are up) and compares it after the test's own fixtures are torn down. A difference fails that
test, names what changed, and is undone, so one leak is reported once and harms nothing later:

- the process environment (``PREFECT_*``, ``BUILDSYS_*``, anything) and the working directory;
- signal dispositions and the blocked-signal mask (a child inherits SIG_IGN and the mask: a
  ``buildsys watch`` started later would then ignore Ctrl-C) and the umask;
- module attributes replaced without being put back (``buildsys.x.f = fake`` instead of
  ``monkeypatch.setattr``), and a test's function left bound in a buildsys module (a module first
  imported while a test had patched the name it imports keeps the fake for the rest of the run);
- child processes still running (a server or worker the test started and did not stop).

Put back without failing, as they are what running a project in-process does (a process runs one
project in real use): entries added to ``sys.path`` and modules imported from a temporary directory
(a project's `mysteps:act` step or flow module), so a later test's module of the same name is its
own and not the cached one of an earlier test.

It costs well under a millisecond per test: dictionaries and identities, and /proc/self's
children files (Linux) for processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FunctionType, ModuleType

# Modules whose functions a test might patch; buildsys's and steps' own, plus the standard ones the
# code under test calls through.
_WATCHED_PREFIXES = ("buildsys", "steps")
_WATCHED_STDLIB = ("os", "subprocess", "signal", "time", "socket", "shutil", "threading")
# SIGALRM is pytest-timeout's, set and cleared around each test by the plugin itself.
# Started once for the whole process by the standard library, on first use, and meant to stay.
_PROCESS_WIDE_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
_SIGNALS = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGALRM))


def _watched_modules() -> dict[str, ModuleType]:
    return {
        name: mod
        for name, mod in list(sys.modules.items())
        if isinstance(mod, ModuleType)
        and (name in _WATCHED_STDLIB or name.split(".", 1)[0] in _WATCHED_PREFIXES)
    }


def _callables(mod: ModuleType) -> dict[str, object]:
    try:
        items = list(vars(mod).items())
    except TypeError:
        return {}
    return {k: v for k, v in items if isinstance(v, FunctionType | type)}


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found.update(int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except (OSError, ValueError):
            continue
    return found


def _running_descendants() -> dict[int, str]:
    """Descendants of this process that are still running (zombies are finished: not a leak)."""
    out: dict[int, str] = {}
    todo = list(_children(os.getpid()))
    while todo:
        pid = todo.pop()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            continue
        out[pid] = cmd.strip()[:200]
        todo.extend(_children(pid))
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass
class Snapshot:
    environ: dict[str, str]
    cwd: str
    handlers: dict[int, object]
    mask: set[int]
    umask: int
    modules: dict[str, tuple[ModuleType, dict[str, object]]]
    processes: dict[int, str]
    path: list[str]
    imported: set[str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            environ=dict(os.environ),
            cwd=os.getcwd(),
            handlers={s: signal.getsignal(s) for s in _SIGNALS},
            mask=set(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            umask=_umask(),
            modules={name: (mod, _callables(mod)) for name, mod in _watched_modules().items()},
            processes=_running_descendants(),
            path=list(sys.path),
            imported=set(sys.modules),
        )

    def put_back_imports(self) -> None:
        """sys.path as it was; modules first imported from a temporary directory forgotten."""
        if sys.path != self.path:
            sys.path[:] = self.path
        temp = os.path.realpath(tempfile.gettempdir()) + os.sep
        for name in set(sys.modules) - self.imported:
            file = getattr(sys.modules.get(name), "__file__", None)
            if isinstance(file, str) and os.path.realpath(file).startswith(temp):
                del sys.modules[name]

    def leaks(self) -> list[str]:
        """What differs now, each as one line; everything that can be is put back as it was."""
        found: list[str] = []
        now = dict(os.environ)
        for key in sorted(set(now) | set(self.environ)):
            if key != "PYTEST_CURRENT_TEST" and now.get(key) != self.environ.get(key):
                found.append(f"environment variable {key}: {self.environ.get(key)!r} -> {now.get(key)!r}")
        if found:
            for key in set(now) - set(self.environ):
                del os.environ[key]
            os.environ.update(self.environ)
        try:
            cwd = os.getcwd()
        except FileNotFoundError:
            cwd = "<deleted directory>"
        if cwd != self.cwd:
            found.append(f"working directory: {self.cwd} -> {cwd}")
            os.chdir(self.cwd)
        for signum, before in self.handlers.items():
            after = signal.getsignal(signum)
            if after != before:
                found.append(f"signal {signal.Signals(signum).name} disposition: {before!r} -> {after!r}")
                if before is not None:
                    signal.signal(signum, before)  # type: ignore[arg-type]
        mask = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        if mask != self.mask:
            found.append(f"blocked signals: {sorted(self.mask)} -> {sorted(mask)}")
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
        umask = _umask()
        if umask != self.umask:
            found.append(f"umask: {self.umask:o} -> {umask:o}")
            os.umask(self.umask)
        for name, (mod, before_attrs) in self.modules.items():
            after_attrs = _callables(mod)
            for attr, value in before_attrs.items():
                if after_attrs.get(attr) is not value:
                    found.append(f"{name}.{attr} replaced and not put back")
                    setattr(mod, attr, value)
        for name, mod in _watched_modules().items():
            if name.split(".", 1)[0] not in _WATCHED_PREFIXES:
                continue
            for attr, value in _callables(mod).items():
                owner = getattr(value, "__module__", None) or ""
                if owner.split(".", 1)[0] == "tests" or owner == "unittest.mock":
                    found.append(f"{name}.{attr} is {owner}.{getattr(value, '__qualname__', attr)} from a test")
        for pid, cmd in sorted(_running_descendants().items()):
            if pid not in self.processes and not any(helper in cmd for helper in _PROCESS_WIDE_HELPERS):
                found.append(f"process {pid} still running: {cmd}")
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return found
