"""httpx, without its command-line tool and without trio: import httpx from here.

httpx's `__init__` imports `httpx._main` (the `httpx` command: click, rich and pygments, ~0.3 s of
CPU) whenever those are installed, and rich is a dependency of buildsys. buildsys only uses the
client, so the first import here makes that one import fail as if they were missing (httpx then
defines a stub `main`), and lets `httpx._main` be imported normally afterwards.

httpcore (which httpx's transports import on first use) imports trio whenever it is installed
(selenium and other tools bring it), only to know which async library it runs under: ~0.15 s of
CPU. buildsys's clients are synchronous (or asyncio's), so httpcore is imported here with trio
looking absent, unless trio is already loaded (then it costs nothing and is left to httpcore).
Its package also imports its HTTP/2 connection classes (h2 and hpack, ~0.03 s) for their public
names only: a connection imports them itself when HTTP/2 is negotiated, which still works, so they
are left out of httpcore's first import too (`httpcore.HTTP2Connection` is then httpcore's stub).
"""

from __future__ import annotations

import sys


def _import_without(names: tuple[str, ...], module: str) -> None:
    """Import `module` while `names` (not yet imported) import as if they were not installed."""
    hidden = [n for n in names if n not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        __import__(module)
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


if "httpx" not in sys.modules:
    _import_without(("httpx._main",), "httpx")
if "httpcore" not in sys.modules:
    _import_without(("trio", "httpcore._sync.http2", "httpcore._async.http2"), "httpcore")

import httpx as httpx  # noqa: E402  # re-exported, after the guarded imports above

__all__ = ["ONE_ORIGIN", "httpx"]

# A client of one origin keeps alive every connection it makes. httpcore 1.0's synchronous pool
# closes an idle connection whenever it holds more connections than it may keep alive, and it
# counts every connection there, not only the idle ones: one it has just handed to a waiting
# thread (still idle until that thread sends) can be closed under it, and that request fails with
# EBADF or waits out its read timeout (encode/httpcore#1110; seen with 32 threads on one client of
# a buildsys server). With as many kept alive as it may open, the pool never closes one to make
# room, and an origin's idle connection is reused, never replaced. Idle ones still expire (5 s).
ONE_ORIGIN = httpx.Limits(max_connections=100, max_keepalive_connections=100)
