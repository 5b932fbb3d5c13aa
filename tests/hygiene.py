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

import _signal
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


_DOTTED_PREFIXES = tuple(f"{prefix}." for prefix in _WATCHED_PREFIXES)


_names_seen: set[str] = set()
_watched: dict[str, ModuleType] = {}


def _watched_modules() -> dict[str, ModuleType]:
    """The watched modules now in sys.modules (only names new since the last call are matched)."""
    global _names_seen
    modules = sys.modules
    for name in modules.keys() - _names_seen:
        if name.startswith(_DOTTED_PREFIXES) or name in _WATCHED_PREFIXES or name in _WATCHED_STDLIB:
            _watched[name] = modules[name]
    _names_seen = set(modules)
    for name, mod in list(_watched.items()):
        if modules.get(name) is not mod:
            current = modules.get(name)
            if current is None:
                del _watched[name]
            else:
                _watched[name] = current
    return {name: mod for name, mod in _watched.items() if isinstance(mod, ModuleType)}


def _namespace(mod: ModuleType) -> dict[str, object]:
    """A copy of the module's namespace (a C-speed copy: most tests change nothing in it)."""
    try:
        return dict(vars(mod))
    except TypeError:
        return {}


def _callables(namespace: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in namespace.items() if isinstance(v, (FunctionType, type))}


def _unchanged(before: dict[str, object], now: dict[str, object]) -> bool:
    try:
        return before == now  # identity first for every value: functions compare by identity
    except Exception:  # a value whose == refuses to answer
        return False


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
    """Descendants of this process that are still running (zombies are finished: not a leak) in
    its own process group. A process in a group of its own is left out, with what it started: the
    worker's flow runs and warm standby runtimes start so (start_new_session), and a module- or
    session-scoped worker fixture starts them during whichever test first needs them."""
    out: dict[int, str] = {}
    group = os.getpgrp()
    todo = list(_children(os.getpid()))
    while todo:
        pid = todo.pop()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[0] in ("Z", "X") or int(fields[2]) != group:
            continue
        out[pid] = cmd.strip()[:200]
        todo.extend(_children(pid))
    return out


def _shown(handler: object) -> str:
    """A disposition as `signal.getsignal` words it (the C function gives SIG_IGN/SIG_DFL as ints)."""
    return repr(signal.Handlers(handler)) if isinstance(handler, int) else repr(handler)


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
    modules: dict[str, tuple[ModuleType, dict[str, object]]]  # each module and a copy of its namespace
    processes: dict[int, str]
    path: list[str]
    imported: set[str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            environ=dict(os.environ),
            cwd=os.getcwd(),
            handlers={s: _signal.getsignal(s) for s in _SIGNALS},
            mask=set(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            umask=_umask(),
            modules={name: (mod, _namespace(mod)) for name, mod in _watched_modules().items()},
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
            after = _signal.getsignal(signum)
            if after != before:
                found.append(f"signal {signal.Signals(signum).name} disposition: {_shown(before)} -> {_shown(after)}")
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
        for name, mod in _watched_modules().items():
            now = _namespace(mod)
            known = self.modules.get(name)
            if known is not None and known[0] is mod and _unchanged(known[1], now):
                continue
            after_attrs = _callables(now)
            if known is not None and known[0] is mod:  # a module imported anew is not a patch
                for attr, value in _callables(known[1]).items():
                    if after_attrs.get(attr) is not value:
                        found.append(f"{name}.{attr} replaced and not put back")
                        setattr(known[0], attr, value)
                        after_attrs[attr] = value
            if name.split(".", 1)[0] not in _WATCHED_PREFIXES:
                continue
            for attr, value in after_attrs.items():
                owner = getattr(value, "__module__", None) or ""
                if owner.split(".", 1)[0] == "tests" or owner == "unittest.mock":
                    found.append(f"{name}.{attr} is {owner}.{getattr(value, '__qualname__', attr)} from a test")
        for pid, cmd in sorted(_running_descendants().items()):
            if pid not in self.processes and not any(helper in cmd for helper in _PROCESS_WIDE_HELPERS):
                found.append(f"process {pid} still running: {cmd}")
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return found
