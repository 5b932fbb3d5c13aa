"""`buildsys cache ls / explain STEP / gc / clear`: look into and clean the build cache."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from buildsys.cli import completion
from buildsys.cli.app import App, common_options, pass_app

if TYPE_CHECKING:
    from buildsys.cache import Cache


@click.group()
def cache() -> None:
    """Inspect and clean the build cache (.buildsys/: see `buildsys help caches`)."""


@cache.command("ls")
@common_options
@pass_app
def ls(app: App) -> None:
    """Every step the cache knows: its last key, when it ran and how long it took."""
    with _opened(app) as (_, c):
        entries = c.entries()
    if app.json:
        app.emit_json([{"step": e.label, "key": e.key, "updated": e.updated, "duration": e.duration} for e in entries])
        return
    if not entries:
        app.echo("the cache is empty")
        return
    width = max(len(e.label) for e in entries)
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.updated))
        app.echo(f"{e.label:<{width}}  {e.key[:12]}  {when}  {e.duration:.2f}s")


@cache.command("explain")
@click.argument("step", shell_complete=completion.step_ids)
@common_options
@pass_app
def explain(app: App, step: str) -> None:
    """Would STEP run now, and why? (Computes its key without running anything.)"""
    from buildsys.engine import explain_step

    reason = explain_step(app.load_project(), step)
    if app.json:
        app.emit_json({"step": step, "explanation": reason})
    else:
        app.echo(f"{step}: {reason}")


@cache.command("gc")
@common_options
@pass_app
def gc(app: App) -> None:
    """Delete results that no current step points at, and stat entries of deleted files."""
    with _opened(app) as (_, c):
        removed = c.gc(e.key for e in c.entries())
    app.echo(f"removed {removed} unused result(s)")


@cache.command("clear")
@common_options
@pass_app
def clear(app: App) -> None:
    """Forget every cached result (the next build runs every step)."""
    from buildsys import caches

    with _opened(app) as (root, c):
        c.clear()
    caches.clear(root)  # compiled models and no-op proofs go too: every cache of the layer
    app.echo("cache cleared")


@contextmanager
def _opened(app: App) -> Iterator[tuple[Path, Cache]]:
    """The project's root and its build cache, closed after use."""
    from buildsys.cache import Cache

    root = app.load_project().root
    c = Cache(root)
    try:
        yield root, c
    finally:
        c.close()
