"""`buildsys server`: the state store over HTTP (a Starlette app served by uvicorn).

from buildsys.server import create_app, serve
"""

from __future__ import annotations

from buildsys.server.app import Settings, create_app
from buildsys.server.serve import ServeOptions, serve

__all__ = ["ServeOptions", "Settings", "create_app", "serve"]
