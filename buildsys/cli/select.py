"""The `-d/--deployment` option that build, push, graph, plan, apply and deploy share: one
declaration, one help text, one completion; what it selects is `buildsys.selector`'s rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from buildsys.cli import completion


def deployments_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """`-d/--deployment NAME` (repeatable): only these deployments, by name or glob."""
    return click.option(
        "-d",
        "--deployment",
        "deployments",
        multiple=True,
        metavar="NAME",
        help="Only these deployments (names or globs; repeatable).",
        shell_complete=completion.deployments,
    )(f)
