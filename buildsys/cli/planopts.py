"""The options that plan, apply, deploy and show share about a plan: one declaration and help text
each (`-d/--deployment` is in `select`, `--affected` in `affected`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def prune_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--prune`: the plan also deletes what this project owns but no longer declares."""
    return click.option(
        "--prune", is_flag=True, help="Also delete resources this project owns but no longer declares."
    )(f)


def full_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--full`: values shown whole (`plan_view.MAX_WIDTH` cuts them otherwise)."""
    return click.option(
        "--full", is_flag=True, help="Show every value whole (long ones are cut at 160 characters otherwise)."
    )(f)
