"""`buildsys ui`: the server app (API and pages) over a local store, bound to 127.0.0.1 only,
without tokens (loopback, one user), opening the browser once it listens."""

from __future__ import annotations

import contextlib
import socket
import threading
import webbrowser
from collections.abc import Callable
from pathlib import Path


def serve_local(
    state: str,
    *,
    root: Path,
    port: int = 0,
    open_browser: bool = True,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until interrupted (Ctrl-C stops uvicorn cleanly)."""
    import uvicorn

    from buildsys.server.app import create_app
    from buildsys.store import open_store

    store = open_store(state, root=root)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        app = create_app(store, project_root=root)
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        announce(url)
        if open_browser:
            threading.Thread(target=_open_when_ready, args=(server, url), daemon=True).start()
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops cleanly, then re-raises Ctrl-C
            server.run(sockets=[sock])
    finally:
        sock.close()
        store.close()


def _open_when_ready(server: object, url: str) -> None:
    import time

    for _ in range(200):
        if getattr(server, "started", False):
            with contextlib.suppress(webbrowser.Error):
                webbrowser.get().open(url)  # no browser on this machine: the printed address is enough
            return
        time.sleep(0.05)
