"""`buildsys affected`: the steps and deployments a change affects, with the reasons; and the
`--affected[=REF]` option that build, push, plan, apply and deploy share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from buildsys.cli.app import App, common_options, pass_app

if TYPE_CHECKING:
    from buildsys.affected import Affected
    from buildsys.entrypoints import FlowInfo
    from buildsys.model import Project

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
    result = analyse(app, base)
    if app.json:
        app.emit_json(result.to_dict())
        return
    app.echo(render(result))


def analyse(
    app: App, base: str | None, *, flows: dict[str, FlowInfo] | None = None, loaded: Project | None = None
) -> Affected:
    """`flows`: filled with the working tree's entrypoints read; `loaded`: the project as
    `app.load_project` gave it (`buildsys.affected.affected`)."""
    from buildsys.affected import affected as compute

    return compute(app.project_file, base or None, flows=flows, loaded=loaded)


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


def select_affected(
    app: App, project: Project, base: str, patterns: Sequence[str], *, flows: dict[str, FlowInfo] | None = None
) -> tuple[Affected, list[str] | None]:
    """The names of the deployments `--affected` selects (within -d's patterns, when given), in file
    order. None: the project has no deployments (its top-level build is one whole). `flows`: as
    `analyse` fills it, for a plan of the same working tree."""
    from buildsys.selector import select_deployments

    result = analyse(app, base, flows=flows, loaded=project)
    if not result.project_has_deployments:
        return result, None
    chosen = set(result.names)
    if patterns:
        chosen &= {d.name for d in select_deployments(project, patterns)}
    names = [d.name for d in project.deployments if d.name in chosen]
    said = ", ".join(names) if names else "none"
    if app.verbosity >= 0:
        app.echo(f"Affected since {result.said} ({result.commit[:12]}): {len(names)} of {len(project.deployments)} "
                 f"deployment(s): {said}", err=True)
    return result, names


def as_patterns(names: Sequence[str]) -> tuple[str, ...]:
    """Exact names as -d patterns (a name with `*`, `?` or `[` matches only itself)."""
    import glob

    return tuple(glob.escape(n) for n in names)
