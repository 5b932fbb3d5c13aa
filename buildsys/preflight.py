"""Checks a plan makes of the desired state: job variables against their pool's template,
parameters against the flow's schema, pools that nobody declares. Plans warn; apply refuses
(`reconcile.validate` adds what only a finished plan can show).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from buildsys.desired import DesiredState, known_later
from buildsys.errors import Diagnostic, ProjectError
from buildsys.store.base import Resource


def job_variable_problems(desired: DesiredState, actual: Sequence[Resource]) -> list[Diagnostic]:
    """Deployment job variables checked against their pool's template (Prefect checks them on the
    server at deploy time): unknown variables are returned as warnings, wrong types raise."""
    from buildsys.pools import check_job_variables, expand_dotted

    templates = {r.name: r.spec.get("base_job_template") for r in actual if r.kind == "pool"}
    templates |= {r.name: r.spec.get("base_job_template") for r in desired.resources if r.kind == "pool"}
    memo: dict[tuple[str, str], list[Diagnostic]] = {}
    found: list[Diagnostic] = []
    for r in desired.resources:
        pool = r.spec.get("work_pool_name")
        variables = r.spec.get("job_variables") if r.kind == "deployment" else None
        template = templates.get(pool) if isinstance(pool, str) else None
        if not variables or not isinstance(template, Mapping) or not isinstance(variables, Mapping):
            continue
        concrete = {k: v for k, v in expand_dotted(variables).items() if not known_later(v)}
        key = (str(pool), json.dumps(concrete, sort_keys=True, default=str))
        if key not in memo:  # thousands of deployments usually share a handful of variable sets
            memo[key] = check_job_variables(template, concrete, where="work_pool.job_variables")
        found += [
            Diagnostic(
                p.severity, f"deployment {r.name}: {p.message}", r.location, f"{r.path}.{p.path}", p.hint
            )
            for p in memo[key]
        ]
    errors = [p for p in found if p.is_error]
    if errors:
        raise ProjectError(errors)
    return found


def parameter_problems(desired: DesiredState) -> list[Diagnostic]:
    """Deployment parameters against the flow's parameter schema (Prefect's server refuses them on
    deploy unless `enforce_parameter_schema: false`): wrong types raise, names the flow does not
    take warn (a run with them is refused). Same checker as `buildsys run`."""
    from buildsys.parameters import check, schema_key

    found: list[Diagnostic] = []
    # The deployments of one flow share one schema object (desired.canonical keeps it): its key,
    # the JSON text of the whole schema, is made once per object, not once per deployment.
    keys: dict[int, tuple[Mapping[str, Any], str]] = {}  # id → (the schema, held so the id stays its)
    for r in desired.resources:
        schema = r.spec.get("parameter_schema") if r.kind == "deployment" else None
        params = r.spec.get("parameters")
        if not isinstance(schema, Mapping) or not isinstance(params, Mapping) or not params:
            continue
        if r.spec.get("enforce_parameter_schema") is False:
            continue
        where = f"{r.path}.parameters"
        known = keys.get(id(schema))
        if known is None:
            known = keys[id(schema)] = (schema, schema_key(schema))
        for p in check(schema, params, partial=True, key=known[1]):
            found.append(
                Diagnostic(
                    "warning" if p.unknown_name else "error",
                    f"deployment {r.name}: {p.message}",
                    r.location,
                    f"{where}.{p.field}" if p.field else where,
                    p.hint
                    if p.unknown_name
                    else "fix the value, or set `enforce_parameter_schema: false` on the deployment",
                )
            )
    errors = [p for p in found if p.is_error]
    if errors:
        raise ProjectError(errors)
    return found


def pool_warnings(desired: DesiredState, actual: Sequence[Resource]) -> list[str]:
    """Deployments whose pool nobody declares: allowed (another project may create it later), but said."""
    pools = {r.name for r in actual if r.kind == "pool"} | {
        r.name for r in desired.resources if r.kind == "pool"
    }
    out = []
    missing: dict[str, list[str]] = {}  # one warning per missing pool, naming its deployments
    for r in desired.resources:
        if r.kind != "deployment":
            continue
        pool = r.spec.get("work_pool_name")
        if not pool:
            out.append(f"deployment {r.name} has no work pool (work_pool.name); no worker will run it")
        elif pool not in pools:
            missing.setdefault(pool, []).append(r.name)
    for pool, users in missing.items():
        if len(users) == 1:
            who = f"deployment {users[0]} uses work pool {pool!r}"
        else:
            shown = ", ".join(users[:5]) + (", …" if len(users) > 5 else "")
            who = f"{len(users)} deployments use work pool {pool!r} ({shown})"
        out.append(f"{who}, which is neither in the store nor declared here; runs wait until the pool exists")
    return out
