"""`buildsys affected`: the steps and deployments a change affects, with the reasons; and the
`--affected[=REF]` option that build, push, plan, apply and deploy share (what it selects:
`buildsys.cli.affectedrun`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from buildsys.cli.app import App, common_options, pass_app

if TYPE_CHECKING:
    from buildsys.affected import Affected

MERGE_BASE = ""  # --affected without a value: the merge base with the default branch


def affected_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--affected[=REF]`: only the deployments a change since REF affects (`buildsys help affected`)."""
    return click.option(
        "--affected",
        "affected_base",
        is_flag=False,
        flag_value=MERGE_BASE,
        default=None,
        metavar="[=REF]",
        help="Only the deployments changed since REF (default: the merge base with the default branch).",
    )(f)


@click.command("affected")
@click.option("--base", metavar="REF", help="Compare with this commit, branch or tag (default: the merge base with the default branch).")
@common_options
@pass_app
def affected(app: App, base: str | None) -> None:
    """List the steps and deployments whose cache keys or specs differ from REF, and why."""
    from buildsys.cli.affectedrun import analyse

    result = analyse(app, base)
    if app.json:
        app.emit_json(result.to_dict())
        return
    app.echo(render(result))


def render(result: Affected) -> str:
    lines = [f"Compared with {result.said} ({result.commit[:12]})."]
    lines += [f"note: {n}" for n in result.notes]
    lines.append(f"Steps affected: {len(result.steps)} of {result.total_steps}")
    lines += [f"  ▶ {s.label}  {s.reason}" for s in result.steps]
    lines.append(f"Deployments affected: {len(result.deployments)} of {result.total_deployments}")
    for d in result.deployments:
        lines.append(f"  ~ {d.name}  {d.reasons[0]}")
        lines += [f"      {r}" for r in d.reasons[1:]]
    if result.removed:
        lines.append(f"Deployments removed since then: {', '.join(result.removed)} (`plan --prune` deletes them)")
    return "\n".join(lines)
