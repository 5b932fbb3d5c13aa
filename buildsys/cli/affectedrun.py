"""What `--affected[=REF]` selects for build, push, plan, apply and deploy, and the analysis of
`buildsys affected`, without click (the option and the command are `buildsys.cli.affected`; a
plain `plan --affected` runs without click: `buildsys.cli.direct`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from buildsys.cli.app import App

if TYPE_CHECKING:
    from buildsys.affected import Affected
    from buildsys.entrypoints import FlowInfo
    from buildsys.model import Project


def analyse(
    app: App, base: str | None, *, flows: dict[str, FlowInfo] | None = None, loaded: Project | None = None
) -> Affected:
    """`flows`: filled with the working tree's entrypoints read; `loaded`: the project as
    `app.load_project` gave it (`buildsys.affected.affected`)."""
    from buildsys.affected import affected as compute

    return compute(app.project_file, base or None, flows=flows, loaded=loaded)


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
