"""httpx, without its command-line tool: import httpx from here.

httpx's `__init__` imports `httpx._main` (the `httpx` command: click, rich and pygments, ~0.3 s of
CPU) whenever those are installed, and rich is a dependency of buildsys. buildsys only uses the
client, so the first import here makes that one import fail as if they were missing (httpx then
defines a stub `main`), and lets `httpx._main` be imported normally afterwards.
"""

from __future__ import annotations

import sys

if "httpx" not in sys.modules:
    sys.modules["httpx._main"] = None  # type: ignore[assignment]  # `from ._main import main` raises ImportError
    try:
        import httpx
    finally:
        if "httpx._main" in sys.modules and sys.modules["httpx._main"] is None:
            del sys.modules["httpx._main"]

import httpx as httpx  # re-exported

__all__ = ["httpx"]
