"""`buildsys build` and `buildsys push`: run the build (and push) sections, cached and in parallel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from buildsys.cli.affected import affected_option
from buildsys.cli.app import App, common_options, pass_app
from buildsys.cli.buildrun import open_shared_cache, run_sections, shared_summary
from buildsys.cli.select import deployments_option

__all__ = ["build", "open_shared_cache", "push", "run_sections", "shared_cache_options", "shared_summary"]


def _build_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            deployments_option,
            click.option("-j", "--jobs", type=click.IntRange(min=1), help="Steps to run at once (default: CPU count)."),
            click.option("--no-cache", is_flag=True, help="Run every step, ignoring cached results."),
            click.option("--explain", is_flag=True, help="Say why each step runs or is skipped."),
            click.option("--keep-going", is_flag=True, help="After a failure, keep running independent steps."),
            click.option("--install-requires", is_flag=True, help="pip install a missing step's `requires` (off by default)."),
            click.option("-n", "--dry-run", is_flag=True, help="Say what would run and why, without running anything."),
        ]
    ):
        f = option(f)
    return shared_cache_options(affected_option(f))


def shared_cache_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--cache-from and --cache-write (build, push and deploy)."""
    for option in (
        click.option("--cache-from", "cache_from", metavar="URL", envvar="BUILDSYS_CACHE",
                     help="Shared cache: http(s)://SERVER or s3://BUCKET[/PREFIX] (env BUILDSYS_CACHE); "
                     "read, entries checked with BUILDSYS_CACHE_KEY."),
        click.option("--cache-write", is_flag=True,
                     help="Also store this build's results in the shared cache (trusted branches only)."),
    ):
        f = option(f)
    return f


@click.command()
@_build_options
@common_options
@pass_app
def build(app: App, **opts: Any) -> None:
    """Run the build section for the selected deployments (all by default), cached."""
    run_sections(app, ("build",), **opts)


@click.command()
@_build_options
@common_options
@pass_app
def push(app: App, **opts: Any) -> None:
    """Run the build then the push section for the selected deployments, cached."""
    run_sections(app, ("build", "push"), **opts)
