"""Which deployments a `-d/--deployment` selector picks: one rule for build, push, graph, plan,
apply, pull and run.

A pattern is a glob matched against a deployment's name or against `FLOW/NAME`. In a project file
FLOW is the entrypoint function's name with `_` as `-` (Prefect's default flow name, known without
importing the flow); in the state store it is the flow name the deployment was applied under.
Every pattern must match something: a typo is an error with a did-you-mean, never an empty build.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from buildsys.errors import BuildsysError, NotFoundError

if TYPE_CHECKING:
    from buildsys.model import Deployment, Project
    from buildsys.store.base import Resource, StateStore


class SelectionError(BuildsysError):
    """A selector matched no deployment."""


GLOB = frozenset("*?[")  # what makes a pattern more than the one name it spells (fnmatch)


def matches(pattern: str, name: str, flow: str) -> bool:
    if GLOB.isdisjoint(pattern):  # fnmatch's answer without compiling the pattern: equality
        return pattern in (name, f"{flow}/{name}")
    return fnmatchcase(name, pattern) or fnmatchcase(f"{flow}/{name}", pattern)


def flow_of(deployment: Deployment) -> str:
    """The flow part of a project deployment's selector name (the entrypoint's function)."""
    return (deployment.entrypoint or "").rsplit(":", 1)[-1].rsplit(".", 1)[-1].replace("_", "-")


def select_deployments(project: Project, patterns: Sequence[str] | None) -> tuple[Deployment, ...]:
    """The project's deployments some pattern matches, in file order (all when none is given)."""
    if not patterns:
        return project.deployments
    chosen: set[int] = set()
    spelled: dict[str, list[int]] | None = None  # NAME and FLOW/NAME -> the deployments so named
    for pattern in patterns:
        if GLOB.isdisjoint(pattern):  # a name (plan and --affected pass every one): looked up, not matched
            if spelled is None:
                spelled = {}
                for d in project.deployments:
                    for key in {d.name, f"{flow_of(d)}/{d.name}"}:
                        spelled.setdefault(key, []).append(id(d))
            matched = spelled.get(pattern, [])
        else:
            matched = [id(d) for d in project.deployments if matches(pattern, d.name, flow_of(d))]
        if not matched:
            from buildsys.suggest import did_you_mean

            names = [d.name for d in project.deployments]
            known = f"deployments in {project.file}: {', '.join(names) or 'none'}"
            raise SelectionError(f"no deployment matches {pattern!r}", hint=did_you_mean(pattern.rsplit("/", 1)[-1], names) or known)
        chosen.update(matched)
    return tuple(d for d in project.deployments if id(d) in chosen)


def find_deployment(store: StateStore, pattern: str) -> Resource:
    """The one deployment of the state store the pattern selects (its full name FLOW/NAME always
    does); several matches are an error naming them."""
    exact = store.get_resource("deployment", pattern)
    if exact is not None:
        return exact
    every = store.list_resources("deployment")
    found = [d for d in every if matches(pattern, str(d.spec.get("name") or d.name.split("/", 1)[-1]), d.name.split("/", 1)[0])]
    if len(found) == 1:
        return found[0]
    if found:
        raise NotFoundError(
            f"deployment name {pattern!r} is ambiguous: {', '.join(d.name for d in found)}",
            hint="use the full name FLOW/DEPLOYMENT",
        )
    from buildsys.suggest import did_you_mean

    names = [d.name for d in every]
    guess = did_you_mean(pattern, names + [n.split("/", 1)[-1] for n in names])
    known = ", ".join(names) or "none (run `buildsys apply` first)"
    raise NotFoundError(f"no deployment {pattern!r} in the state store", hint=(guess + "; " if guess else "") + f"deployments: {known}")
